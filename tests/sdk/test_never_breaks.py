"""The SDK never changes what the application gets: same results, same exceptions.

A fixed workload (openai and anthropic, sync and async, streamed and not, provider errors, an
observed function that raises) runs once without the SDK and then with it in a broken setting:
the exporter's endpoint is a closed port, the endpoint answers 500, or the instrumentation's own
hooks raise. Every result and every exception must be identical to the run without the SDK.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import openai
import pytest

import observatory_sdk
from observatory_sdk.instrumentation import _anthropic, _base, _openai
from tests.conftest import Server, free_port
from tests.sdk.conftest import SERVICE, fetch_trace, init_sdk
from tests.sdk.fake_provider import FailingCollector, FakeProvider


def _exception(exc: BaseException) -> dict[str, Any]:
    return {
        "type": type(exc),
        "str": str(exc),
        "status_code": getattr(exc, "status_code", None),
        "body": getattr(exc, "body", None),
    }


def _capture(action: Callable[[], Any]) -> Any:
    try:
        return ("ok", action())
    except Exception as exc:
        return ("raised", _exception(exc))


def workload(provider: FakeProvider) -> list[Any]:
    """Everything an application might do; returns plain data to compare between runs."""
    oai = openai.OpenAI(api_key="sk-test", base_url=provider.openai_url, max_retries=0)
    ant = anthropic.Anthropic(api_key="sk-ant", base_url=provider.anthropic_url, max_retries=0)
    user = [{"role": "user", "content": "hi"}]

    @observatory_sdk.observe(capture_input=True, capture_output=True)
    def application_function(x: int) -> int:
        if x < 0:
            raise ValueError(f"negative: {x}")
        return x + 1

    def stream_chat() -> list[Any]:
        stream = oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=user,
            stream=True,
            stream_options={"include_usage": True},
        )
        return [type(stream).__name__, [c.model_dump() for c in stream]]

    def stream_messages() -> list[Any]:
        with ant.messages.stream(
            model="claude-3-5-haiku-latest", max_tokens=10, messages=user
        ) as s:
            return ["".join(s.text_stream), s.get_final_message().model_dump()]

    def stream_chat_helper() -> Any:
        with oai.chat.completions.stream(model="gpt-4o-mini", messages=user) as stream:
            return [e.type for e in stream] + [stream.get_final_completion().model_dump()]

    async def async_calls() -> list[Any]:
        aoai = openai.AsyncOpenAI(api_key="sk-test", base_url=provider.openai_url, max_retries=0)
        aant = anthropic.AsyncAnthropic(
            api_key="sk-ant", base_url=provider.anthropic_url, max_retries=0
        )
        out: list[Any] = []
        out.append(
            (await aoai.chat.completions.create(model="gpt-4o-mini", messages=user)).model_dump()
        )
        stream = await aant.messages.create(
            model="claude-3-5-haiku-latest", max_tokens=10, messages=user, stream=True
        )
        out.append([e.model_dump() async for e in stream])
        try:
            await aoai.chat.completions.create(model="fail-500", messages=user)
        except openai.APIError as exc:
            out.append(_exception(exc))
        await aoai.close()
        await aant.close()
        return out

    return [
        _capture(
            lambda: oai.chat.completions.create(model="gpt-4o-mini", messages=user).model_dump()
        ),
        _capture(stream_chat),
        _capture(
            lambda: [
                e.model_dump()
                for e in oai.responses.create(model="gpt-4o-mini", input="hi", stream=True)
            ]
        ),
        _capture(
            lambda: oai.embeddings.create(model="text-embedding-3-small", input="x").model_dump()
        ),
        _capture(lambda: oai.chat.completions.create(model="fail-400", messages=user)),
        _capture(
            lambda: ant.messages.create(
                model="claude-3-5-haiku-latest", max_tokens=10, messages=user
            ).model_dump()
        ),
        _capture(stream_messages),
        _capture(lambda: ant.messages.create(model="fail-400", max_tokens=10, messages=user)),
        _capture(lambda: application_function(1)),
        _capture(lambda: application_function(-1)),
        _capture(lambda: asyncio.run(async_calls())),
        _capture(
            lambda: (
                oai.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=user)
                .parse()
                .model_dump()
            )
        ),
        _capture(stream_chat_helper),
    ]


@pytest.fixture
def baseline(provider: FakeProvider) -> list[Any]:
    observatory_sdk.shutdown()
    assert observatory_sdk.instrumented() == []
    result = workload(provider)
    # The workload really exercises both success and failure paths.
    assert [r[0] for r in result].count("raised") == 3
    assert result[4][1]["type"] is openai.BadRequestError
    assert result[7][1]["type"] is anthropic.BadRequestError
    return result


def test_exporter_endpoint_down(provider: FakeProvider, baseline: list[Any]) -> None:
    observatory_sdk.init(
        endpoint=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        api_key="obs_unused",
        service_name=SERVICE,
        export_timeout_seconds=1,
    )
    assert observatory_sdk.instrumented() == ["anthropic", "openai"]
    assert workload(provider) == baseline
    assert observatory_sdk.flush(5) is False  # the spans could not be delivered
    observatory_sdk.shutdown(5)


def test_server_answering_500(provider: FakeProvider, baseline: list[Any]) -> None:
    collector = FailingCollector()
    try:
        observatory_sdk.init(
            endpoint=collector.url, api_key="obs_x", service_name=SERVICE, export_timeout_seconds=2
        )
        assert workload(provider) == baseline
        assert observatory_sdk.flush(5) is False
        assert collector.requests, "the SDK never tried to export"
        assert collector.requests[0]["path"] == "/v1/traces"
        assert collector.requests[0]["headers"]["authorization"] == "Bearer obs_x"
    finally:
        observatory_sdk.shutdown(5)
        collector.stop()


@pytest.fixture
def broken_hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Make the instrumentation's own code raise everywhere it runs inside a client call."""
    calls: dict[str, int] = {}

    def raiser(name: str) -> Callable[..., Any]:
        def hook(*args: Any, **kwargs: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            raise RuntimeError(f"instrumentation bug in {name}")

        return hook

    for module, name in (
        (_openai, "chat_input_messages"),
        (_openai, "_set_chat_response"),
        (_openai, "_chat_chunk"),
        (_openai, "_chat_stream_end"),
        (_openai, "_responses_event"),
        (_openai, "_finish_embeddings"),
        (_anthropic, "input_messages"),
        (_anthropic, "_set_message"),
        (_anthropic, "_event"),
        (_anthropic, "_stream_end"),
    ):
        monkeypatch.setattr(module, name, raiser(name))
    monkeypatch.setattr(_base.LlmCall, "fail", raiser("LlmCall.fail"))
    monkeypatch.setattr("observatory_sdk._context.stamped_attributes", raiser("stamped_attributes"))
    yield calls


def test_instrumentation_hooks_that_raise(
    provider: FakeProvider, baseline: list[Any], obs_server: Server, broken_hooks: dict[str, int]
) -> None:
    init_sdk(obs_server)
    with observatory_sdk.span("broken-hooks") as root:
        assert workload(provider) == baseline
    # Every broken hook was reached (so the comparison above really went through them).
    assert set(broken_hooks) >= {
        "chat_input_messages",
        "_set_chat_response",
        "_chat_chunk",
        "_chat_stream_end",
        "_responses_event",
        "input_messages",
        "_set_message",
        "_event",
        "_stream_end",
        "LlmCall.fail",
        "stamped_attributes",
    }
    # The spans still end and reach the server, just with less detail.
    detail = fetch_trace(obs_server, root.trace_id, min_spans=10)
    assert detail["trace"]["span_count"] >= 10


def test_a_tracer_that_cannot_start_spans(
    provider: FakeProvider, baseline: list[Any], obs_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    init_sdk(obs_server)

    def no_tracer() -> Any:
        raise RuntimeError("tracer broken")

    monkeypatch.setattr(_base, "get_tracer", no_tracer)
    monkeypatch.setattr("observatory_sdk._decorators.get_tracer", no_tracer)
    assert workload(provider) == baseline
