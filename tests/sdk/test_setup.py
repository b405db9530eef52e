"""``init()`` from arguments or the environment, twice, switched off; ``flush``/``shutdown``."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from openai.resources.chat.completions.completions import Completions
from opentelemetry import trace

import observatory_sdk
from observatory_sdk.instrumentation._base import ORIGINAL_ATTR
from tests.conftest import Server
from tests.sdk import fake_provider as fp
from tests.sdk.conftest import (
    SERVICE,
    expected_cost,
    fetch_trace,
    flatten,
    get_json,
    ingest_key,
    init_sdk,
    only_llm_span,
)
from tests.sdk.fake_provider import FakeProvider


def chat(provider: FakeProvider) -> Any:
    client = openai.OpenAI(api_key="sk-test", base_url=provider.openai_url, max_retries=0)
    return client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )


def test_configuration_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, provider: FakeProvider, obs_server: Server
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(ingest_key(obs_server) + "\n")
    monkeypatch.setenv("OBSERVATORY_ENDPOINT", obs_server.base_url + "/")
    monkeypatch.setenv("OBSERVATORY_API_KEY_FILE", str(key_file))
    monkeypatch.setenv("OBSERVATORY_SERVICE_NAME", SERVICE)
    monkeypatch.setenv("OBSERVATORY_ENVIRONMENT", "staging")
    monkeypatch.setenv("OBSERVATORY_CAPTURE_CONTENT", "false")
    monkeypatch.setenv("OBSERVATORY_INSTRUMENT", "openai")
    settings = observatory_sdk.init()
    assert settings is not None
    assert settings.traces_url == obs_server.base_url + "/v1/traces"
    assert settings.capture_content is False
    assert observatory_sdk.instrumented() == ["openai"]

    @observatory_sdk.observe(capture_input=True, capture_output=True)
    def step(secret: str) -> str:
        return secret.upper()

    with observatory_sdk.span("env-root", input="private") as root:
        assert chat(provider).choices[0].message.content == fp.ANSWER
        assert step("private") == "PRIVATE"
    detail = fetch_trace(obs_server, root.trace_id, min_spans=3)
    spans = flatten(detail["spans"])
    assert {s["environment"] for s in spans} == {"staging"}
    assert {s["service_name"] for s in spans} == {SERVICE}
    # Content capture off: no prompts, completions or recorded inputs/outputs anywhere...
    for span in spans:
        assert span["prompt"] is None and span["completion"] is None
        assert not any(k in span["attributes"] for k in ("input.value", "output.value"))
        assert not any(k.startswith("gen_ai.input") for k in span["attributes"])
    # ...but model, tokens and cost are still there.
    llm = only_llm_span(detail)
    u = fp.OPENAI_USAGE
    assert llm["input_tokens"] == u["prompt_tokens"]
    assert llm["total_cost_usd"] is not None


def test_init_twice_exports_each_span_once(provider: FakeProvider, obs_server: Server) -> None:
    init_sdk(obs_server)
    init_sdk(obs_server)  # another key, same server: the exporter is replaced, not added
    init_sdk(obs_server, capture_content=True)
    assert getattr(Completions.create, ORIGINAL_ATTR).__name__ == "create"
    assert not hasattr(getattr(Completions.create, ORIGINAL_ATTR), ORIGINAL_ATTR)
    with observatory_sdk.span("twice-root") as root:
        chat(provider)
    detail = fetch_trace(obs_server, root.trace_id, min_spans=2)
    assert detail["trace"]["span_count"] == 2 and detail["trace"]["llm_call_count"] == 1
    spans = get_json(obs_server, "/api/v1/spans", name="twice-root", range="1h")["data"]
    assert len(spans) == 1


def test_shutdown_uninstruments_and_init_can_follow(
    provider: FakeProvider, obs_server: Server
) -> None:
    init_sdk(obs_server)
    assert hasattr(Completions.create, ORIGINAL_ATTR)
    observatory_sdk.shutdown()
    assert not hasattr(Completions.create, ORIGINAL_ATTR)
    assert observatory_sdk.instrumented() == []
    assert observatory_sdk.is_initialized() is False
    assert observatory_sdk.flush() is True  # nothing to do, nothing fails
    init_sdk(obs_server)
    with observatory_sdk.span("after-restart") as root:
        chat(provider)
    assert (
        only_llm_span(fetch_trace(obs_server, root.trace_id, min_spans=2))["provider"] == "openai"
    )


def test_disabled_sdk_does_nothing(
    monkeypatch: pytest.MonkeyPatch, provider: FakeProvider, obs_server: Server
) -> None:
    monkeypatch.setenv("OBSERVATORY_SDK_DISABLED", "true")
    assert observatory_sdk.init(endpoint=obs_server.base_url, service_name=SERVICE) is None
    assert observatory_sdk.instrumented() == []
    assert observatory_sdk.is_initialized() is False

    @observatory_sdk.observe
    def still_works(x: int) -> int:
        return x * 3

    assert still_works(3) == 9
    assert chat(provider).choices[0].message.content == fp.ANSWER


@pytest.mark.parametrize(
    ("kwargs", "env", "message"),
    [
        ({"endpoint": "127.0.0.1:8000"}, {}, "http:// or https://"),
        ({}, {"OBSERVATORY_CAPTURE_CONTENT": "maybe"}, "true or false"),
        ({"instrument": ["langchain"]}, {}, "unknown instrumentation"),
        ({}, {"OBSERVATORY_EXPORT_TIMEOUT": "soon"}, "number of seconds"),
        ({}, {"OBSERVATORY_API_KEY_FILE": "/nonexistent/key"}, "cannot be read"),
    ],
)
def test_invalid_configuration_fails_at_init(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(observatory_sdk.ConfigurationError, match=message):
        observatory_sdk.init(service_name=SERVICE, **kwargs)


def test_beside_other_instrumentations(provider: FakeProvider, obs_server: Server) -> None:
    """Spans of other instrumentations on the same provider get session/user and reach the
    server: an OpenLLMetry-style span, and the anthropic client's own tracing when the SDK's
    anthropic instrumentation is switched off."""
    init_sdk(obs_server, instrument=["openai"])
    foreign = trace.get_tracer("opentelemetry.instrumentation.openai.v1")
    client = anthropic.Anthropic(api_key="sk-ant", base_url=provider.anthropic_url, max_retries=0)
    with observatory_sdk.session("mixed"), observatory_sdk.span("mixed-root") as root:
        with foreign.start_as_current_span(
            "openai.chat",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "gen_ai.system": "openai",
                "llm.request.type": "chat",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.usage.prompt_tokens": 100,
                "gen_ai.usage.completion_tokens": 20,
                "gen_ai.prompt.0.role": "user",
                "gen_ai.prompt.0.content": "hi",
            },
        ):
            pass
        client.messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
        )
    detail = fetch_trace(obs_server, root.trace_id, min_spans=3)
    spans = {s["scope_name"]: s for s in flatten(detail["spans"])}
    openllmetry = spans["opentelemetry.instrumentation.openai.v1"]
    assert openllmetry["session_id"] == "mixed"
    assert openllmetry["provider"] == "openai" and openllmetry["input_tokens"] == 100
    assert Decimal(openllmetry["total_cost_usd"]) == expected_cost(
        "openai", "gpt-4o-2024-08-06", 100, 20
    )
    native = spans["com.anthropic.sdk.python"]
    assert native["session_id"] == "mixed"
    assert native["provider"] == "anthropic"
    assert native["response_model"] == fp.response_model("claude-3-5-haiku-latest")
    assert "observatory_sdk" not in {s["scope_name"] for s in flatten(detail["spans"])[1:]}


def test_environment_and_service_from_init_arguments(
    provider: FakeProvider, obs_server: Server
) -> None:
    init_sdk(obs_server, environment="canary")
    with observatory_sdk.span("args-root") as root:
        chat(provider)
    detail = fetch_trace(obs_server, root.trace_id, min_spans=2)
    assert {s["environment"] for s in flatten(detail["spans"])} == {"canary"}
    assert detail["trace"]["service_name"] == SERVICE
    resource = detail["spans"][0]["resource_attributes"]
    assert resource["service.name"] == SERVICE
    assert resource["telemetry.distro.name"] == "observatory-sdk"


def test_explicit_tracer_provider(provider: FakeProvider, obs_server: Server) -> None:
    """``init(tracer_provider=...)`` puts the export on the application's own provider, next to
    the application's other processors."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from observatory_sdk._setup import STATE

    saved = (STATE.provider, STATE.owns_provider, STATE.processor)
    own = TracerProvider()
    memory = InMemorySpanExporter()
    own.add_span_processor(SimpleSpanProcessor(memory))
    try:
        init_sdk(obs_server, tracer_provider=own)
        with observatory_sdk.session("own-provider"), observatory_sdk.span("own-root") as root:
            chat(provider)
        detail = fetch_trace(obs_server, root.trace_id, min_spans=2)
        assert only_llm_span(detail)["session_id"] == "own-provider"
        local = {s.name: s for s in memory.get_finished_spans()}
        assert set(local) == {"own-root", "chat gpt-4o-mini"}
        assert local["chat gpt-4o-mini"].attributes["gen_ai.conversation.id"] == "own-provider"
    finally:
        observatory_sdk.shutdown()
        own.shutdown()
        STATE.provider, STATE.owns_provider, STATE.processor = saved
