from __future__ import annotations

from observatory.ingest.normalize import normalize
from observatory.model import Span


def span(attributes: dict, events: list | None = None, resource: dict | None = None) -> Span:  # type: ignore[type-arg]
    return normalize(
        Span(
            "ab" * 16,
            "cd" * 8,
            None,
            "s",
            0,
            1,
            2,
            attributes=attributes,
            events=events or [],
            resource_attributes=resource or {"service.name": "svc"},
        )
    )


def test_current_genai_names() -> None:
    s = span(
        {
            "gen_ai.provider.name": "azure.ai.openai",
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.usage.input_tokens": 100,
            "gen_ai.usage.output_tokens": 20,
            "gen_ai.usage.cache_read.input_tokens": 40,
            "gen_ai.usage.reasoning_tokens": 5,
            "gen_ai.response.finish_reasons": ["stop"],
            "gen_ai.conversation.id": "conv-1",
            "gen_ai.input.messages": '[{"role": "user", "parts": '
            '[{"type": "text", "content": "hi"}]}]',
            "gen_ai.output.messages": '[{"role": "assistant", "parts": '
            '[{"type": "text", "content": "yo"}]}]',
            "gen_ai.system_instructions": '[{"type": "text", "content": "be brief"}]',
        },
        resource={"service.name": "svc", "deployment.environment.name": "prod"},
    )
    assert (s.provider, s.operation, s.request_model, s.response_model) == (
        "azure",
        "chat",
        "gpt-4o",
        "gpt-4o-2024-08-06",
    )
    assert (s.usage.input_tokens, s.usage.output_tokens, s.usage.total_tokens) == (100, 20, 120)
    assert (s.usage.cache_read_tokens, s.usage.reasoning_tokens) == (40, 5)
    assert s.finish_reason == "stop" and s.session_id == "conv-1"
    assert s.environment == "prod" and s.service_name == "svc"
    assert (
        s.prompt is not None and s.prompt[0]["role"] == "system" and s.prompt[1]["role"] == "user"
    )
    assert s.completion == [{"role": "assistant", "parts": [{"type": "text", "content": "yo"}]}]


def test_deprecated_genai_names_and_provider_prefix() -> None:
    s = span(
        {
            "gen_ai.system": "openai",
            "gen_ai.request.model": "openai/gpt-4o-mini",
            "gen_ai.usage.prompt_tokens": 7,
            "gen_ai.usage.completion_tokens": 3,
        }
    )
    assert (s.provider, s.request_model, s.operation) == ("openai", "gpt-4o-mini", "chat")
    assert (s.usage.input_tokens, s.usage.output_tokens) == (7, 3)


def test_openinference_names() -> None:
    s = span(
        {
            "openinference.span.kind": "LLM",
            "llm.model_name": "claude-3-5-sonnet-20241022",
            "llm.provider": "anthropic",
            "llm.token_count.prompt": 11,
            "llm.token_count.completion": 4,
            "llm.token_count.total": 15,
            "session.id": "s",
            "user.id": "u",
            "llm.input_messages.0.message.role": "system",
            "llm.input_messages.0.message.content": "sys",
            "llm.input_messages.1.message.role": "user",
            "llm.input_messages.1.message.content": "q",
            "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "lookup",
            "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": '{"q": 1}',
        }
    )
    assert (s.provider, s.operation, s.request_model) == (
        "anthropic",
        "chat",
        "claude-3-5-sonnet-20241022",
    )
    assert (s.usage.input_tokens, s.usage.output_tokens, s.usage.total_tokens) == (11, 4, 15)
    assert (s.session_id, s.user_id) == ("s", "u")
    assert [m["role"] for m in s.prompt or []] == ["system", "user"]
    assert (s.completion or [])[0]["tool_calls"] == [
        {"id": None, "name": "lookup", "arguments": {"q": 1}}
    ]


def test_openllmetry_legacy_names() -> None:
    s = span(
        {
            "gen_ai.system": "OpenAI",
            "llm.request.type": "chat",
            "gen_ai.request.model": "gpt-4",
            "gen_ai.prompt.0.role": "user",
            "gen_ai.prompt.0.content": "hello",
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.content": "hi",
            "gen_ai.completion.0.finish_reason": "stop",
            "llm.usage.total_tokens": 9,
            "traceloop.association.properties.user_id": "u9",
        }
    )
    assert s.provider == "openai" and s.operation == "chat" and s.usage.total_tokens == 9
    assert s.prompt == [{"role": "user", "content": "hello"}]
    assert s.completion == [{"role": "assistant", "content": "hi", "finish_reason": "stop"}]
    assert s.finish_reason == "stop" and s.user_id == "u9"


def test_content_from_span_events() -> None:
    s = span(
        {"gen_ai.request.model": "gpt-4o"},
        events=[
            {"name": "gen_ai.system.message", "attributes": {"content": "sys"}},
            {"name": "gen_ai.user.message", "attributes": {"content": "question"}},
            {
                "name": "gen_ai.choice",
                "attributes": {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": '{"role": "assistant", "content": "answer"}',
                },
            },
        ],
    )
    assert s.prompt == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "question"},
    ]
    assert s.completion == [{"role": "assistant", "content": "answer", "finish_reason": "stop"}]


def test_plain_spans_are_not_llm_calls_and_bad_numbers_are_ignored() -> None:
    s = span({"http.method": "GET", "gen_ai.usage.input_tokens": "lots"})
    assert not s.is_llm and s.operation is None and s.usage.input_tokens is None
