"""The official OpenTelemetry OpenAI instrumentation, unchanged, against a real server.

``opentelemetry-instrumentation-openai-v2`` drives the real ``openai`` client against a fake
provider on 127.0.0.1. With content capture on, it sends the prompt and the completion as
log-record events, token usage and duration as metrics, and a span without any content:

* default conventions, ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``: one event
  per message (``gen_ai.system.message``, ``gen_ai.user.message``, ``gen_ai.choice``);
* ``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`` with ``EVENT_ONLY``: one
  ``gen_ai.client.inference.operation.details`` event with the message lists as attributes.

The trace view must show the prompt and completion from the events, and the analytics the
metrics — over OTLP/HTTP and OTLP/gRPC.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from openai import OpenAI
from opentelemetry.instrumentation._semconv import _OpenTelemetrySemanticConventionStability
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

from tests.conftest import Server
from tests.integration.otlp_clients import (
    CHAT_COMPLETION,
    fake_openai,
    get_json,
    module_server,
    telemetry,
)

QUESTION = "What is the capital of France?"
SYSTEM = "You answer in one sentence."


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Iterator[Server]:
    with module_server(tmp_path_factory, request.param) as srv:
        yield srv


@pytest.fixture(params=["message-events", "operation-details"])
def conventions(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "message-events":
        monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
        monkeypatch.delenv("OTEL_SEMCONV_STABILITY_OPT_IN", raising=False)
    else:
        monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "EVENT_ONLY")
        monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    # The SDK reads OTEL_SEMCONV_STABILITY_OPT_IN once per process; read it again for this test.
    monkeypatch.setattr(_OpenTelemetrySemanticConventionStability, "_initialized", False)
    monkeypatch.setattr(
        _OpenTelemetrySemanticConventionStability, "_OTEL_SEMCONV_STABILITY_SIGNAL_MAPPING", {}
    )
    return str(request.param)


def _text(message: dict[str, Any]) -> str:
    """A message's text in either shape: ``content`` or GenAI ``parts``."""
    if "content" in message:
        return str(message["content"])
    return "".join(str(p.get("content", "")) for p in message.get("parts", []))


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_prompt_completion_and_metrics_from_openai_v2(
    server: Server, transport: str, conventions: str
) -> None:
    service = f"openai-app-{transport}-{conventions}"
    tel = telemetry(server, transport, service=service)
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(
        tracer_provider=tel.tracer_provider,
        logger_provider=tel.logger_provider,
        meter_provider=tel.meter_provider,
    )
    try:
        with fake_openai() as (base_url, provider_requests):
            client = OpenAI(api_key="sk-test", base_url=base_url, max_retries=0)
            tracer = tel.tracer_provider.get_tracer("app")
            with tracer.start_as_current_span("answer question") as root:
                reply = client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": QUESTION},
                    ],
                )
            trace_id = format(root.get_span_context().trace_id, "032x")
        tel.flush()
    finally:
        instrumentor.uninstrument()
        tel.shutdown()
    assert reply.choices[0].message.content == "Paris is the capital of France."
    assert provider_requests and provider_requests[0]["path"] == "/v1/chat/completions"

    detail = get_json(server, f"/api/v1/traces/{trace_id}")
    root_node = detail["spans"][0]
    assert root_node["name"] == "answer question"
    (llm,) = root_node["children"]
    assert llm["name"] == "chat gpt-4o-mini"
    assert llm["provider"] == "openai"
    assert llm["response_model"] == "gpt-4o-mini-2024-07-18"
    assert llm["input_tokens"] == 24 and llm["output_tokens"] == 8
    # The span itself carries no content; the prompt and completion came as log events.
    assert not any("content" in key or "messages" in key for key in llm["attributes"])
    prompt, completion = llm["prompt"], llm["completion"]
    assert prompt is not None and completion is not None, detail["logs"]
    assert [(m["role"], _text(m)) for m in prompt if m["role"] != "system"] == [("user", QUESTION)]
    assert len(completion) == 1
    assert completion[0]["role"] == "assistant"
    assert _text(completion[0]) == CHAT_COMPLETION["choices"][0]["message"]["content"]
    assert completion[0]["finish_reason"] == "stop"
    assert llm["finish_reason"] == "stop"
    # The trace view lists the event records beside their span.
    events = [(log["event_name"], log["span_id"]) for log in detail["logs"]]
    if conventions == "message-events":
        assert [(m["role"], _text(m)) for m in prompt] == [("system", SYSTEM), ("user", QUESTION)]
        assert events == [
            ("gen_ai.system.message", llm["span_id"]),
            ("gen_ai.user.message", llm["span_id"]),
            ("gen_ai.choice", llm["span_id"]),
        ]
    else:
        assert events == [("gen_ai.client.inference.operation.details", llm["span_id"])]
    # The same records through the log search.
    found = get_json(server, "/api/v1/logs", trace_id=trace_id, span_id=llm["span_id"])
    assert len(found["data"]) == len(events)

    # The metrics alone give the usage dashboards: tokens and duration per model.
    metrics = get_json(
        server, "/api/v1/analytics/genai-metrics", range="1h", bucket="none", service=service
    )
    (usage,) = metrics["token_usage"]
    assert usage["provider"] == "openai"
    assert usage["model"] == "gpt-4o-mini-2024-07-18"
    assert (usage["input_tokens"], usage["output_tokens"], usage["requests"]) == (24, 8, 1)
    (duration,) = metrics["operation_duration"]
    assert duration["model"] == "gpt-4o-mini-2024-07-18" and duration["count"] == 1
    assert duration["avg_duration_ms"] is not None and duration["avg_duration_ms"] > 0
    names = {s["metric"] for s in metrics["series"]}
    assert {"gen_ai.client.token.usage", "gen_ai.client.operation.duration"} <= names
