"""The real ``openai`` client against a fake provider, exported to a real server and read back."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import openai
import pytest

from tests.conftest import Server
from tests.sdk import fake_provider as fp
from tests.sdk.conftest import (
    ENVIRONMENT,
    SERVICE,
    expected_cost,
    fetch_trace,
    flatten,
    get_json,
    only_llm_span,
)
from tests.sdk.fake_provider import FakeProvider

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            },
        },
    }
]


def client(provider: FakeProvider) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-test", base_url=provider.openai_url, max_retries=0)


def async_client(provider: FakeProvider) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-test", base_url=provider.openai_url, max_retries=0)


def chat_cost(model: str = "gpt-4o-mini-2024-07-18") -> Decimal:
    u = fp.OPENAI_USAGE
    return expected_cost(
        "openai", model, u["prompt_tokens"], u["completion_tokens"], u["cached_tokens"]
    )


def assert_chat_usage(span: dict[str, Any]) -> None:
    u = fp.OPENAI_USAGE
    assert span["provider"] == "openai"
    assert span["request_model"] == "gpt-4o-mini"
    assert span["response_model"] == "gpt-4o-mini-2024-07-18"
    assert span["input_tokens"] == u["prompt_tokens"]
    assert span["output_tokens"] == u["completion_tokens"]
    assert span["cache_read_tokens"] == u["cached_tokens"]
    assert Decimal(span["total_cost_usd"]) == chat_cost()
    assert span["attributes"]["gen_ai.usage.reasoning.output_tokens"] == fp.OPENAI_REASONING_TOKENS


def test_chat_completion_with_session_user_and_tags(
    sdk: Any, provider: FakeProvider, obs_server: Server
) -> None:
    with (
        sdk.session("sess-chat"),
        sdk.user("user-7"),
        sdk.tags("beta", tenant="acme"),
        sdk.span("answer-question", kind="agent") as root,
    ):
        response = client(provider).chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Say hello"},
            ],
            temperature=0.2,
            max_tokens=100,
        )
    assert response.choices[0].message.content == fp.ANSWER

    detail = fetch_trace(obs_server, root.trace_id, min_spans=2)
    trace = detail["trace"]
    assert trace["span_count"] == 2 and trace["llm_call_count"] == 1
    assert Decimal(trace["total_cost_usd"]) == chat_cost()
    assert trace["session_id"] == "sess-chat" and trace["user_id"] == "user-7"

    [agent] = detail["spans"]
    assert agent["name"] == "answer-question"
    assert agent["operation"] == "invoke_agent"
    [llm] = agent["children"]
    assert llm["name"] == "chat gpt-4o-mini" and llm["kind"] == 3  # SPAN_KIND_CLIENT
    assert_chat_usage(llm)
    assert llm["operation"] == "chat"
    assert llm["finish_reason"] == "stop"
    assert llm["session_id"] == "sess-chat" and llm["user_id"] == "user-7"
    assert llm["service_name"] == SERVICE and llm["environment"] == ENVIRONMENT
    attrs = llm["attributes"]
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.conversation.id"] == "sess-chat"
    assert attrs["tenant"] == "acme" and attrs["observatory.tags"] == ["beta"]
    assert attrs["gen_ai.request.temperature"] == 0.2
    assert attrs["gen_ai.request.max_tokens"] == 100
    assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["gen_ai.response.id"] == "chatcmpl-fake"
    assert "gen_ai.response.time_to_first_chunk" not in attrs  # not streamed
    # Content in the GenAI message format, as JSON.
    inputs = json.loads(attrs["gen_ai.input.messages"])
    assert inputs == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "Say hello"}]},
    ]
    outputs = json.loads(attrs["gen_ai.output.messages"])
    assert outputs == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": fp.ANSWER}],
            "finish_reason": "stop",
        }
    ]
    assert llm["prompt"][1]["parts"][0]["content"] == "Say hello"
    assert llm["completion"][0]["parts"][0]["content"] == fp.ANSWER

    # The span search finds it by session and by a custom tag.
    spans = get_json(obs_server, "/api/v1/spans", session_id="sess-chat", range="1h")["data"]
    assert {s["name"] for s in spans} == {"answer-question", "chat gpt-4o-mini"}
    tagged = get_json(
        obs_server, "/api/v1/spans", attribute="tenant=acme", model="gpt-4o-mini", range="1h"
    )["data"]
    assert [s["span_id"] for s in tagged] == [llm["span_id"]]


def test_streamed_chat_records_time_to_first_chunk_and_final_usage(
    sdk: Any, provider: FakeProvider, obs_server: Server
) -> None:
    with sdk.span("stream-root") as root:
        stream = client(provider).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Say hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        assert isinstance(stream, openai.Stream)  # the application gets the library's own type
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == fp.ANSWER
    llm = only_llm_span(fetch_trace(obs_server, root.trace_id, min_spans=2))
    assert_chat_usage(llm)
    assert llm["finish_reason"] == "stop"
    assert llm["attributes"]["gen_ai.request.stream"] is True
    ttft_s = llm["attributes"]["gen_ai.response.time_to_first_chunk"]
    assert 0 < ttft_s * 1000 <= llm["duration_ms"]
    assert llm["time_to_first_token_ms"] == pytest.approx(ttft_s * 1000)
    outputs = json.loads(llm["attributes"]["gen_ai.output.messages"])
    assert outputs[0]["parts"] == [{"type": "text", "content": fp.ANSWER}]


def test_stream_without_usage_chunk_has_no_made_up_tokens(
    sdk: Any, provider: FakeProvider, obs_server: Server
) -> None:
    with sdk.span("root") as root:
        chunks = list(
            client(provider).chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
    assert len(chunks) == len(fp.ANSWER_PIECES) + 2
    llm = only_llm_span(fetch_trace(obs_server, root.trace_id, min_spans=2))
    assert llm["response_model"] == "gpt-4o-mini-2024-07-18"
    assert llm["input_tokens"] is None and llm["output_tokens"] is None
    assert llm["total_cost_usd"] is None
    assert llm["time_to_first_token_ms"] > 0
    # The SDK did not ask for usage behind the application's back.
    assert "stream_options" not in provider.requests[-1]["body"]


def test_tool_calls_plain_and_streamed(
    sdk: Any, provider: FakeProvider, obs_server: Server
) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    with sdk.span("tools-root") as root:
        first = client(provider).chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=TOOLS
        )
        call = first.choices[0].message.tool_calls[0]
        streamed = client(provider).chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                *messages,
                first.choices[0].message,
                {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"},
            ],
            tools=TOOLS,
            stream=True,
        )
        arguments = "".join(
            c.choices[0].delta.tool_calls[0].function.arguments or ""
            for c in streamed
            if c.choices and c.choices[0].delta.tool_calls
        )
    assert arguments == fp.TOOL_ARGUMENTS
    detail = fetch_trace(obs_server, root.trace_id, min_spans=3)
    plain, stream = sorted(
        (s for s in flatten(detail["spans"]) if s["operation"] == "chat"),
        key=lambda s: s["start_time_unix_nano"],
    )
    expected_call = {
        "type": "tool_call",
        "id": "call_fake",
        "name": "get_weather",
        "arguments": {"city": "Paris", "unit": "celsius"},
    }
    for span in (plain, stream):
        assert span["finish_reason"] == "tool_calls"
        outputs = json.loads(span["attributes"]["gen_ai.output.messages"])
        assert outputs[0]["parts"] == [expected_call]
        definitions = json.loads(span["attributes"]["gen_ai.tool.definitions"])
        assert definitions[0]["function"]["name"] == "get_weather"
    history = json.loads(stream["attributes"]["gen_ai.input.messages"])
    assert history[1] == {"role": "assistant", "parts": [expected_call]}
    assert history[2] == {
        "role": "tool",
        "parts": [{"type": "tool_call_response", "id": "call_fake", "response": "18 degrees"}],
    }


def test_responses_api_plain_and_streamed(
    sdk: Any, provider: FakeProvider, obs_server: Server
) -> None:
    with sdk.span("responses-root") as root:
        plain = client(provider).responses.create(
            model="gpt-4o-mini", instructions="Be brief.", input="Say hello"
        )
        events = list(
            client(provider).responses.create(model="gpt-4o-mini", input="Say hello", stream=True)
        )
    assert plain.output_text == fp.ANSWER
    assert events[-1].type == "response.completed"
    detail = fetch_trace(obs_server, root.trace_id, min_spans=3)
    spans = sorted(
        (s for s in flatten(detail["spans"]) if s["operation"] == "chat"),
        key=lambda s: s["start_time_unix_nano"],
    )
    assert len(spans) == 2
    for span in spans:
        assert_chat_usage(span)
        assert span["finish_reason"] == "stop"
        outputs = json.loads(span["attributes"]["gen_ai.output.messages"])
        assert outputs[0]["parts"] == [{"type": "text", "content": fp.ANSWER}]
    assert json.loads(spans[0]["attributes"]["gen_ai.system_instructions"]) == [
        {"type": "text", "content": "Be brief."}
    ]
    assert spans[1]["time_to_first_token_ms"] > 0
    assert Decimal(detail["trace"]["total_cost_usd"]) == 2 * chat_cost()


def test_embeddings_and_legacy_completions(
    sdk: Any, provider: FakeProvider, obs_server: Server
) -> None:
    with sdk.span("misc-root") as root:
        embedding = client(provider).embeddings.create(
            model="text-embedding-3-small", input=["a", "b"]
        )
        completion = client(provider).completions.create(
            model="gpt-3.5-turbo-instruct", prompt="Say hello"
        )
    assert embedding.data[0].embedding == fp.EMBEDDING
    assert completion.choices[0].text == fp.ANSWER
    detail = fetch_trace(obs_server, root.trace_id, min_spans=3)
    by_op = {s["operation"]: s for s in flatten(detail["spans"])}
    emb = by_op["embeddings"]
    assert emb["name"] == "embeddings text-embedding-3-small"
    assert emb["input_tokens"] == fp.EMBEDDING_TOKENS
    assert emb["attributes"]["gen_ai.embeddings.dimension.count"] == len(fp.EMBEDDING)
    assert Decimal(emb["total_cost_usd"]) == expected_cost(
        "openai", "text-embedding-3-small", fp.EMBEDDING_TOKENS, 0
    )
    text = by_op["text_completion"]
    assert text["response_model"] == "gpt-3.5-turbo-instruct"
    assert text["completion"][0]["parts"][0]["content"] == fp.ANSWER
    u = fp.OPENAI_USAGE
    assert Decimal(text["total_cost_usd"]) == expected_cost(
        "openai",
        "gpt-3.5-turbo-instruct",
        u["prompt_tokens"],
        u["completion_tokens"],
        u["cached_tokens"],
    )


def test_async_client_plain_and_streamed(
    sdk: Any, provider: FakeProvider, obs_server: Server
) -> None:
    async def run() -> tuple[str, str, str]:
        aclient = async_client(provider)
        with sdk.span("async-root") as root:
            plain = await aclient.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
            stream = await aclient.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            assert isinstance(stream, openai.AsyncStream)
            pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            events = await aclient.responses.create(model="gpt-4o-mini", input="hi", stream=True)
            assert [e.type async for e in events][-1] == "response.completed"
            embedding = await aclient.embeddings.create(model="text-embedding-3-small", input="x")
            assert embedding.data[0].embedding == fp.EMBEDDING
        await aclient.close()
        return root.trace_id, plain.choices[0].message.content or "", "".join(pieces)

    trace_id, plain_text, streamed_text = asyncio.run(run())
    assert plain_text == streamed_text == fp.ANSWER
    detail = fetch_trace(obs_server, trace_id, min_spans=5)
    assert detail["trace"]["span_count"] == 5
    spans = sorted(
        (s for s in flatten(detail["spans"]) if s["operation"] == "chat"),
        key=lambda s: s["start_time_unix_nano"],
    )
    assert len(spans) == 3
    for span in spans:
        assert_chat_usage(span)
        assert span["parent_span_id"] == detail["spans"][0]["span_id"]
    assert spans[0]["time_to_first_token_ms"] is None
    assert spans[1]["time_to_first_token_ms"] > 0 and spans[2]["time_to_first_token_ms"] > 0
    [embeddings] = [s for s in flatten(detail["spans"]) if s["operation"] == "embeddings"]
    assert embeddings["input_tokens"] == fp.EMBEDDING_TOKENS


def test_provider_error_is_a_span_error_and_the_same_exception(
    sdk: Any, provider: FakeProvider, obs_server: Server
) -> None:
    with sdk.span("error-root") as root, pytest.raises(openai.BadRequestError) as caught:
        client(provider).chat.completions.create(
            model="fail-400", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.status_code == 400
    assert caught.value.code == "model_not_found"
    detail = fetch_trace(obs_server, root.trace_id, min_spans=2)
    llm = only_llm_span(detail)
    assert llm["error"] is True and llm["status_code"] == 2
    assert "fake 400 error" in llm["status_message"]
    assert llm["attributes"]["error.type"] == "openai.BadRequestError"
    assert llm["attributes"]["http.response.status_code"] == 400
    assert [e["name"] for e in llm["events"]] == ["exception"]
    assert detail["trace"]["error_count"] == 1


def test_stream_helpers_parse_and_raw_responses(
    sdk: Any, provider: FakeProvider, obs_server: Server
) -> None:
    oai = client(provider)
    user = [{"role": "user", "content": "Say hello"}]
    with sdk.span("helpers-root") as root:
        with oai.chat.completions.stream(
            model="gpt-4o-mini", messages=user, stream_options={"include_usage": True}
        ) as stream:
            final_chat = stream.get_final_completion()
        with oai.responses.stream(model="gpt-4o-mini", input="Say hello") as rstream:
            final_response = rstream.get_final_response()
        parsed = oai.chat.completions.parse(model="gpt-4o-mini", messages=user)
        raw = oai.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=user)
    assert final_chat.choices[0].message.content == fp.ANSWER
    assert final_response.output_text == fp.ANSWER
    assert parsed.choices[0].message.content == fp.ANSWER
    assert raw.parse().choices[0].message.content == fp.ANSWER
    detail = fetch_trace(obs_server, root.trace_id, min_spans=5)
    # One span per API call: the helpers do not add nested duplicates.
    assert detail["trace"]["span_count"] == 5
    llm = sorted(
        (s for s in flatten(detail["spans"]) if s["operation"] == "chat"),
        key=lambda s: s["start_time_unix_nano"],
    )
    assert len(llm) == 4
    for span in llm[:3]:
        assert_chat_usage(span)
    assert llm[0]["time_to_first_token_ms"] > 0 and llm[1]["time_to_first_token_ms"] > 0
    # A raw response is not parsed by the SDK (that would read the body for the application):
    # the span has the request but no response details.
    assert llm[3]["request_model"] == "gpt-4o-mini" and llm[3]["input_tokens"] is None


def test_azure_openai_client_is_the_azure_provider(
    sdk: Any, provider: FakeProvider, obs_server: Server
) -> None:
    azure = openai.AzureOpenAI(
        api_key="azure-key",
        api_version="2024-06-01",
        azure_endpoint=f"http://127.0.0.1:{provider.port}",
        max_retries=0,
    )
    with sdk.span("azure-root") as root:
        response = azure.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert response.choices[0].message.content == fp.ANSWER
    assert "/openai/deployments/gpt-4o-mini/" in provider.requests[-1]["path"]
    llm = only_llm_span(fetch_trace(obs_server, root.trace_id, min_spans=2))
    assert llm["attributes"]["gen_ai.provider.name"] == "azure.ai.openai"
    assert llm["provider"] == "azure"
    assert llm["input_tokens"] == fp.OPENAI_USAGE["prompt_tokens"]
