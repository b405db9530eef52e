"""The real ``anthropic`` client against a fake provider, exported to a real server, read back."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import anthropic
import pytest

from tests.conftest import Server
from tests.sdk import fake_provider as fp
from tests.sdk.conftest import expected_cost, fetch_trace, flatten, only_llm_span
from tests.sdk.fake_provider import FakeProvider

MODEL = "claude-3-5-haiku-latest"
RESPONSE_MODEL = "claude-3-5-haiku-20241022"
TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]
U = fp.ANTHROPIC_USAGE
# GenAI input tokens include cache reads and writes; Anthropic's input_tokens does not.
INPUT_TOKENS = U["input_tokens"] + U["cache_read_input_tokens"] + U["cache_creation_input_tokens"]


def client(provider: FakeProvider) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        api_key="sk-ant-test", base_url=provider.anthropic_url, max_retries=0
    )


def message_cost() -> Decimal:
    return expected_cost(
        "anthropic",
        RESPONSE_MODEL,
        INPUT_TOKENS,
        U["output_tokens"],
        U["cache_read_input_tokens"],
        U["cache_creation_input_tokens"],
    )


def assert_usage(span: dict[str, Any]) -> None:
    assert span["provider"] == "anthropic"
    assert span["request_model"] == MODEL
    assert span["response_model"] == RESPONSE_MODEL
    assert span["input_tokens"] == INPUT_TOKENS
    assert span["output_tokens"] == U["output_tokens"]
    assert span["cache_read_tokens"] == U["cache_read_input_tokens"]
    assert span["cache_write_tokens"] == U["cache_creation_input_tokens"]
    assert Decimal(span["total_cost_usd"]) == message_cost()


def test_message_with_system_prompt_and_cache_tokens(
    sdk: Any, provider: FakeProvider, obs_server: Server
) -> None:
    with sdk.session("sess-claude"), sdk.span("root") as root:
        message = client(provider).messages.create(
            model=MODEL,
            max_tokens=256,
            system="Be brief.",
            messages=[{"role": "user", "content": "Say hello"}],
            stop_sequences=["END"],
        )
    assert message.content[0].text == fp.ANSWER
    detail = fetch_trace(obs_server, root.trace_id, min_spans=2)
    # anthropic >= 2 traces its calls itself; that duplicate span must not reach the server,
    # or the call would be counted (and billed) twice.
    assert detail["trace"]["span_count"] == 2
    assert detail["trace"]["llm_call_count"] == 1
    llm = only_llm_span(detail)
    assert_usage(llm)
    assert llm["name"] == f"chat {MODEL}" and llm["operation"] == "chat"
    assert llm["finish_reason"] == "end_turn"
    assert llm["session_id"] == "sess-claude"
    attrs = llm["attributes"]
    assert attrs["gen_ai.request.max_tokens"] == 256
    assert attrs["gen_ai.request.stop_sequences"] == ["END"]
    assert attrs["gen_ai.usage.cache_creation.input_tokens"] == U["cache_creation_input_tokens"]
    assert json.loads(attrs["gen_ai.system_instructions"]) == [
        {"type": "text", "content": "Be brief."}
    ]
    assert json.loads(attrs["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": "Say hello"}]}
    ]
    assert json.loads(attrs["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": fp.ANSWER}],
            "finish_reason": "end_turn",
        }
    ]
    assert Decimal(detail["trace"]["total_cost_usd"]) == message_cost()


def test_streamed_message_via_create_and_via_stream_helper(
    sdk: Any, provider: FakeProvider, obs_server: Server
) -> None:
    with sdk.span("root") as root:
        raw = client(provider).messages.create(
            model=MODEL,
            max_tokens=256,
            messages=[{"role": "user", "content": "Say hello"}],
            stream=True,
        )
        assert isinstance(raw, anthropic.Stream)
        text_from_events = "".join(
            e.delta.text
            for e in raw
            if e.type == "content_block_delta" and e.delta.type == "text_delta"
        )
        with client(provider).messages.stream(
            model=MODEL, max_tokens=256, messages=[{"role": "user", "content": "Say hello"}]
        ) as stream:
            text_from_helper = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert text_from_events == text_from_helper == fp.ANSWER
    assert final.usage.output_tokens == U["output_tokens"]
    detail = fetch_trace(obs_server, root.trace_id, min_spans=3)
    assert detail["trace"]["span_count"] == 3
    spans = sorted(
        (s for s in flatten(detail["spans"]) if s["operation"] == "chat"),
        key=lambda s: s["start_time_unix_nano"],
    )
    assert len(spans) == 2
    for span in spans:
        assert_usage(span)
        assert span["finish_reason"] == "end_turn"
        assert span["attributes"]["gen_ai.request.stream"] is True
        assert 0 < span["time_to_first_token_ms"] <= span["duration_ms"]
        outputs = json.loads(span["attributes"]["gen_ai.output.messages"])
        assert outputs[0]["parts"] == [{"type": "text", "content": fp.ANSWER}]


def test_tool_use_plain_and_streamed(sdk: Any, provider: FakeProvider, obs_server: Server) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    with sdk.span("root") as root:
        first = client(provider).messages.create(
            model=MODEL, max_tokens=256, messages=messages, tools=TOOLS
        )
        tool_use = next(b for b in first.content if b.type == "tool_use")
        followup = [
            *messages,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": tool_use.id, "content": "18 degrees"}
                ],
            },
        ]
        with client(provider).messages.stream(
            model=MODEL, max_tokens=256, messages=followup, tools=TOOLS
        ) as stream:
            final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].input == {"city": "Paris", "unit": "celsius"}
    detail = fetch_trace(obs_server, root.trace_id, min_spans=3)
    plain, streamed = sorted(
        (s for s in flatten(detail["spans"]) if s["operation"] == "chat"),
        key=lambda s: s["start_time_unix_nano"],
    )
    call = {
        "type": "tool_call",
        "id": "toolu_fake",
        "name": "get_weather",
        "arguments": {"city": "Paris", "unit": "celsius"},
    }
    assert json.loads(plain["attributes"]["gen_ai.output.messages"])[0]["parts"] == [
        {"type": "text", "content": "Let me check."},
        call,
    ]
    assert json.loads(streamed["attributes"]["gen_ai.output.messages"])[0]["parts"] == [call]
    for span in (plain, streamed):
        assert span["finish_reason"] == "tool_use"
        assert json.loads(span["attributes"]["gen_ai.tool.definitions"])[0]["name"] == "get_weather"
    history = json.loads(streamed["attributes"]["gen_ai.input.messages"])
    assert history[1]["parts"][1] == call
    assert history[2]["parts"] == [
        {"type": "tool_call_response", "id": "toolu_fake", "response": "18 degrees"}
    ]


def test_async_client_create_stream_and_helper(
    sdk: Any, provider: FakeProvider, obs_server: Server
) -> None:
    async def run() -> tuple[str, list[str]]:
        aclient = anthropic.AsyncAnthropic(
            api_key="sk-ant-test", base_url=provider.anthropic_url, max_retries=0
        )
        texts = []
        with sdk.span("async-root") as root:
            message = await aclient.messages.create(
                model=MODEL, max_tokens=256, messages=[{"role": "user", "content": "hi"}]
            )
            texts.append(message.content[0].text)
            raw = await aclient.messages.create(
                model=MODEL,
                max_tokens=256,
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
            )
            assert isinstance(raw, anthropic.AsyncStream)
            texts.append(
                "".join(
                    [
                        e.delta.text
                        async for e in raw
                        if e.type == "content_block_delta" and e.delta.type == "text_delta"
                    ]
                )
            )
            async with aclient.messages.stream(
                model=MODEL, max_tokens=256, messages=[{"role": "user", "content": "hi"}]
            ) as stream:
                texts.append("".join([t async for t in stream.text_stream]))
        await aclient.close()
        return root.trace_id, texts

    trace_id, texts = asyncio.run(run())
    assert texts == [fp.ANSWER] * 3
    detail = fetch_trace(obs_server, trace_id, min_spans=4)
    assert detail["trace"]["span_count"] == 4 and detail["trace"]["llm_call_count"] == 3
    spans = [s for s in flatten(detail["spans"]) if s["operation"] == "chat"]
    for span in spans:
        assert_usage(span)
        assert span["parent_span_id"] == detail["spans"][0]["span_id"]
    assert Decimal(detail["trace"]["total_cost_usd"]) == 3 * message_cost()


def test_api_error_is_a_span_error_and_the_same_exception(
    sdk: Any, provider: FakeProvider, obs_server: Server
) -> None:
    with sdk.span("root") as root, pytest.raises(anthropic.InternalServerError) as caught:
        client(provider).messages.create(
            model="fail-500", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 500
    llm = only_llm_span(fetch_trace(obs_server, root.trace_id, min_spans=2))
    assert llm["error"] is True
    assert llm["attributes"]["error.type"] == "anthropic.InternalServerError"
    assert llm["attributes"]["http.response.status_code"] == 500
    assert "fake 500 error" in llm["status_message"]
