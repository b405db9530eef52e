"""Instrumentation of the official ``openai`` client (sync and async).

Covered: ``chat.completions.create`` (also what ``chat.completions.stream`` calls) and
``.parse``, ``responses.create`` (also behind ``responses.stream``) and ``.parse``,
``completions.create`` (legacy text completions) and ``embeddings.create``; streamed or not.

Token counts of a streamed chat completion come from the final usage chunk, which OpenAI only
sends when the request asks for it (``stream_options={"include_usage": True}``). The SDK does not
add that option itself: it would change the chunks the application receives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from observatory_sdk import _attributes as attr
from observatory_sdk._serialize import parse_json, plain
from observatory_sdk.instrumentation._base import (
    LlmCall,
    Patch,
    first_int,
    get,
    given,
    trace_stream,
    wrap_async,
    wrap_sync,
)

_DATA_URI_LIMIT = 256


# --- shared ----------------------------------------------------------------------------------


def _provider(instance: Any) -> str:
    client = get(instance, "_client")
    return "azure.ai.openai" if "Azure" in type(client).__name__ else "openai"


def _server(instance: Any) -> dict[str, Any]:
    url = get(instance, "_client", "base_url")
    host = getattr(url, "host", None)
    if not host:
        return {}
    port = getattr(url, "port", None)
    if port is None:
        port = 443 if getattr(url, "scheme", "") == "https" else 80
    return {attr.SERVER_ADDRESS: str(host), attr.SERVER_PORT: int(port)}


def _kw(kwargs: Mapping[str, Any], name: str) -> Any:
    value = kwargs.get(name)
    return value if given(value) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _stop(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return None


def _start(
    args: Sequence[Any], kwargs: Mapping[str, Any], operation: str, extra: Mapping[str, Any]
) -> LlmCall:
    instance = args[0] if args else None
    model = _kw(kwargs, "model")
    return LlmCall(
        provider=_provider(instance),
        operation=operation,
        model=str(model) if model is not None else None,
        attributes={**_server(instance), **extra},
    )


def usage_attributes(usage: Any) -> dict[str, Any]:
    """Chat/completions (prompt_/completion_tokens) and Responses (input_/output_tokens) usage.

    OpenAI's prompt token count already includes cached tokens, as the GenAI conventions want.
    """
    if usage is None:
        return {}
    return {
        attr.USAGE_INPUT_TOKENS: first_int(get(usage, "prompt_tokens"), get(usage, "input_tokens")),
        attr.USAGE_OUTPUT_TOKENS: first_int(
            get(usage, "completion_tokens"), get(usage, "output_tokens")
        ),
        attr.USAGE_CACHE_READ_INPUT_TOKENS: first_int(
            get(usage, "prompt_tokens_details", "cached_tokens"),
            get(usage, "input_tokens_details", "cached_tokens"),
        ),
        attr.USAGE_REASONING_OUTPUT_TOKENS: first_int(
            get(usage, "completion_tokens_details", "reasoning_tokens"),
            get(usage, "output_tokens_details", "reasoning_tokens"),
        ),
    }


def _image_part(url: Any) -> dict[str, Any]:
    text = str(url or "")
    if text.startswith("data:"):
        mime = text[5:].split(";", 1)[0]
        return {"type": "blob", "modality": "image", "mime_type": mime}
    return {"type": "uri", "modality": "image", "uri": text[:2048]}


def _content_parts(content: Any) -> list[dict[str, Any]]:
    """Chat/Responses message content (text or a list of typed parts) as GenAI parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    for part in content if isinstance(content, Iterable) else [content]:
        kind = get(part, "type")
        if kind in ("text", "input_text", "output_text"):
            parts.append({"type": "text", "content": get(part, "text")})
        elif kind == "refusal":
            parts.append({"type": "refusal", "content": get(part, "refusal")})
        elif kind == "image_url":
            parts.append(_image_part(get(part, "image_url", "url")))
        elif kind == "input_image":
            parts.append(_image_part(get(part, "image_url") or get(part, "file_id")))
        elif kind in ("input_audio", "audio"):
            parts.append({"type": "blob", "modality": "audio"})
        elif isinstance(part, str):
            parts.append({"type": "text", "content": part})
        else:
            parts.append({"type": str(kind or "unknown")})
    return parts


def _tool_call_part(call: Any) -> dict[str, Any]:
    function = get(call, "function") or call
    return {
        "type": "tool_call",
        "id": get(call, "id") or get(call, "call_id"),
        "name": get(function, "name"),
        "arguments": parse_json(get(function, "arguments")),
    }


# --- chat completions ------------------------------------------------------------------------


def chat_input_messages(messages: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages or []:
        role = get(message, "role") or "user"
        if role == "tool":
            out.append(
                {
                    "role": "tool",
                    "parts": [
                        {
                            "type": "tool_call_response",
                            "id": get(message, "tool_call_id"),
                            "response": plain(get(message, "content")),
                        }
                    ],
                }
            )
            continue
        parts = _content_parts(get(message, "content"))
        for call in get(message, "tool_calls") or []:
            parts.append(_tool_call_part(call))
        if get(message, "function_call") is not None:
            parts.append(_tool_call_part({"function": get(message, "function_call")}))
        entry: dict[str, Any] = {"role": role, "parts": parts}
        if get(message, "name"):
            entry["name"] = get(message, "name")
        out.append(entry)
    return out


def _chat_request(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    n = _kw(kwargs, "n")
    response_format = _kw(kwargs, "response_format")
    format_type = get(response_format, "type") if isinstance(response_format, Mapping) else None
    return {
        attr.REQUEST_MAX_TOKENS: first_int(
            _kw(kwargs, "max_completion_tokens"), _kw(kwargs, "max_tokens")
        ),
        attr.REQUEST_TEMPERATURE: _number(_kw(kwargs, "temperature")),
        attr.REQUEST_TOP_P: _number(_kw(kwargs, "top_p")),
        attr.REQUEST_FREQUENCY_PENALTY: _number(_kw(kwargs, "frequency_penalty")),
        attr.REQUEST_PRESENCE_PENALTY: _number(_kw(kwargs, "presence_penalty")),
        attr.REQUEST_STOP_SEQUENCES: _stop(_kw(kwargs, "stop")),
        attr.REQUEST_SEED: first_int(_kw(kwargs, "seed")),
        attr.REQUEST_CHOICE_COUNT: n if isinstance(n, int) and n != 1 else None,
        attr.REQUEST_STREAM: True if _kw(kwargs, "stream") else None,
        attr.OUTPUT_TYPE: (
            "json" if format_type in ("json_object", "json_schema") else format_type or None
        ),
        "openai.request.service_tier": _kw(kwargs, "service_tier"),
    }


def _start_chat(args: Sequence[Any], kwargs: Mapping[str, Any]) -> LlmCall:
    call = _start(args, kwargs, attr.OP_CHAT, _chat_request(kwargs))
    call.content(attr.INPUT_MESSAGES, chat_input_messages, _kw(kwargs, "messages"))
    call.content(attr.TOOL_DEFINITIONS, plain, _kw(kwargs, "tools"))
    return call


def _set_chat_response(call: LlmCall, response: Any) -> None:
    choices = get(response, "choices") or []
    call.set(
        {
            attr.RESPONSE_ID: get(response, "id"),
            attr.RESPONSE_MODEL: get(response, "model"),
            attr.RESPONSE_FINISH_REASONS: [
                str(get(c, "finish_reason")) for c in choices if get(c, "finish_reason")
            ],
            "openai.response.service_tier": get(response, "service_tier"),
            "openai.response.system_fingerprint": get(response, "system_fingerprint"),
            **usage_attributes(get(response, "usage")),
        }
    )
    if call.capture_content:
        outputs = []
        for choice in choices:
            message = get(choice, "message")
            parts = _content_parts(get(message, "content"))
            if get(message, "refusal"):
                parts.append({"type": "refusal", "content": get(message, "refusal")})
            parts.extend(_tool_call_part(c) for c in get(message, "tool_calls") or [])
            outputs.append(
                {
                    "role": get(message, "role") or "assistant",
                    "parts": parts,
                    "finish_reason": get(choice, "finish_reason") or "",
                }
            )
        call.set_content(attr.OUTPUT_MESSAGES, outputs)


def _chat_chunk(call: LlmCall, chunk: Any) -> None:
    state = call.state
    state.setdefault("id", get(chunk, "id"))
    if get(chunk, "model"):
        state["model"] = get(chunk, "model")
    if get(chunk, "usage") is not None:
        state["usage"] = get(chunk, "usage")
    if get(chunk, "service_tier"):
        state["service_tier"] = get(chunk, "service_tier")
    carries_output = False
    choices = state.setdefault("choices", {})
    for choice in get(chunk, "choices") or []:
        index = get(choice, "index") or 0
        acc = choices.setdefault(index, {"text": [], "tools": {}, "finish_reason": None})
        delta = get(choice, "delta")
        text = get(delta, "content") or get(choice, "text")  # chat delta or legacy completion
        if text:
            acc["text"].append(text)
            carries_output = True
        for tool in get(delta, "tool_calls") or []:
            carries_output = True
            slot = acc["tools"].setdefault(
                get(tool, "index") or 0, {"id": None, "name": None, "arguments": []}
            )
            slot["id"] = slot["id"] or get(tool, "id")
            slot["name"] = slot["name"] or get(tool, "function", "name")
            if get(tool, "function", "arguments"):
                slot["arguments"].append(get(tool, "function", "arguments"))
        if get(choice, "finish_reason"):
            acc["finish_reason"] = get(choice, "finish_reason")
    call.chunk(carries_output)


def _chat_stream_end(call: LlmCall) -> None:
    state = call.state
    choices = state.get("choices", {})
    call.set(
        {
            attr.RESPONSE_ID: state.get("id"),
            attr.RESPONSE_MODEL: state.get("model"),
            attr.RESPONSE_FINISH_REASONS: [
                str(c["finish_reason"]) for _, c in sorted(choices.items()) if c["finish_reason"]
            ],
            "openai.response.service_tier": state.get("service_tier"),
            **usage_attributes(state.get("usage")),
        }
    )
    if call.capture_content:
        outputs = []
        for _, acc in sorted(choices.items()):
            parts: list[dict[str, Any]] = []
            if acc["text"]:
                parts.append({"type": "text", "content": "".join(acc["text"])})
            for _, tool in sorted(acc["tools"].items()):
                parts.append(
                    {
                        "type": "tool_call",
                        "id": tool["id"],
                        "name": tool["name"],
                        "arguments": parse_json("".join(tool["arguments"])),
                    }
                )
            outputs.append(
                {"role": "assistant", "parts": parts, "finish_reason": acc["finish_reason"] or ""}
            )
        call.set_content(attr.OUTPUT_MESSAGES, outputs)


def _is_stream(result: Any) -> bool:
    import openai

    return isinstance(result, (openai.Stream, openai.AsyncStream))


def _finish_chat(call: LlmCall, result: Any) -> None:
    if _is_stream(result):
        trace_stream(result, call, _chat_chunk, _chat_stream_end)
        return
    _set_chat_response(call, result)
    call.end()


# --- legacy text completions -----------------------------------------------------------------


def _start_completion(args: Sequence[Any], kwargs: Mapping[str, Any]) -> LlmCall:
    call = _start(args, kwargs, attr.OP_TEXT_COMPLETION, _chat_request(kwargs))
    call.content(attr.INPUT_MESSAGES, completion_prompts, _kw(kwargs, "prompt"))
    return call


def completion_prompts(prompt: Any) -> list[dict[str, Any]]:
    prompts = [prompt] if isinstance(prompt, str) else prompt if isinstance(prompt, list) else []
    return [{"role": "user", "parts": [{"type": "text", "content": plain(p)}]} for p in prompts]


def _finish_completion(call: LlmCall, result: Any) -> None:
    if _is_stream(result):
        trace_stream(result, call, _chat_chunk, _chat_stream_end)
        return
    choices = get(result, "choices") or []
    call.set(
        {
            attr.RESPONSE_ID: get(result, "id"),
            attr.RESPONSE_MODEL: get(result, "model"),
            attr.RESPONSE_FINISH_REASONS: [
                str(get(c, "finish_reason")) for c in choices if get(c, "finish_reason")
            ],
            **usage_attributes(get(result, "usage")),
        }
    )
    call.set_content(
        attr.OUTPUT_MESSAGES,
        [
            {
                "role": "assistant",
                "parts": [{"type": "text", "content": get(c, "text")}],
                "finish_reason": get(c, "finish_reason") or "",
            }
            for c in choices
        ],
    )
    call.end()


# --- responses -------------------------------------------------------------------------------


def responses_input_messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "parts": [{"type": "text", "content": value}]}]
    out: list[dict[str, Any]] = []
    for item in value or []:
        kind = get(item, "type")
        if kind == "function_call":
            out.append({"role": "assistant", "parts": [_tool_call_part(item)]})
        elif kind == "function_call_output":
            out.append(
                {
                    "role": "tool",
                    "parts": [
                        {
                            "type": "tool_call_response",
                            "id": get(item, "call_id"),
                            "response": plain(get(item, "output")),
                        }
                    ],
                }
            )
        elif get(item, "role") is not None:
            out.append({"role": get(item, "role"), "parts": _content_parts(get(item, "content"))})
        else:
            out.append({"role": "user", "parts": [{"type": str(kind or "unknown")}]})
    return out


def _start_responses(args: Sequence[Any], kwargs: Mapping[str, Any]) -> LlmCall:
    conversation = _kw(kwargs, "conversation")
    text_format = get(_kw(kwargs, "text"), "format", "type")
    call = _start(
        args,
        kwargs,
        attr.OP_CHAT,
        {
            attr.REQUEST_MAX_TOKENS: first_int(_kw(kwargs, "max_output_tokens")),
            attr.REQUEST_TEMPERATURE: _number(_kw(kwargs, "temperature")),
            attr.REQUEST_TOP_P: _number(_kw(kwargs, "top_p")),
            attr.REQUEST_STREAM: True if _kw(kwargs, "stream") else None,
            attr.OUTPUT_TYPE: "json" if text_format in ("json_object", "json_schema") else None,
            attr.CONVERSATION_ID: (
                conversation
                if isinstance(conversation, str)
                else get(conversation, "id")
                if conversation is not None
                else None
            ),
            "openai.request.service_tier": _kw(kwargs, "service_tier"),
        },
    )
    instructions = _kw(kwargs, "instructions")
    if isinstance(instructions, str):
        call.set_content(attr.SYSTEM_INSTRUCTIONS, [{"type": "text", "content": instructions}])
    call.content(attr.INPUT_MESSAGES, responses_input_messages, _kw(kwargs, "input"))
    call.content(attr.TOOL_DEFINITIONS, plain, _kw(kwargs, "tools"))
    return call


def _set_responses_response(call: LlmCall, response: Any) -> None:
    output = get(response, "output") or []
    status = get(response, "status")
    has_tool_call = any(get(item, "type") == "function_call" for item in output)
    if status == "incomplete":
        finish = str(get(response, "incomplete_details", "reason") or "incomplete")
    elif status == "failed":
        finish = "error"
    else:
        finish = "tool_calls" if has_tool_call else "stop"
    call.set(
        {
            attr.RESPONSE_ID: get(response, "id"),
            attr.RESPONSE_MODEL: get(response, "model"),
            attr.RESPONSE_FINISH_REASONS: [finish] if status else None,
            "openai.response.service_tier": get(response, "service_tier"),
            **usage_attributes(get(response, "usage")),
        }
    )
    if status == "failed":
        message = get(response, "error", "message") or "response failed"
        call.fail_message(str(get(response, "error", "code") or "response_failed"), str(message))
    if call.capture_content:
        parts: list[dict[str, Any]] = []
        for item in output:
            kind = get(item, "type")
            if kind == "message":
                parts.extend(_content_parts(get(item, "content")))
            elif kind == "function_call":
                parts.append(_tool_call_part(item))
            elif kind == "reasoning":
                summary = " ".join(str(get(s, "text") or "") for s in get(item, "summary") or [])
                if summary:
                    parts.append({"type": "reasoning", "content": summary})
            else:
                parts.append({"type": str(kind or "unknown")})
        call.set_content(
            attr.OUTPUT_MESSAGES, [{"role": "assistant", "parts": parts, "finish_reason": finish}]
        )


def _responses_event(call: LlmCall, event: Any) -> None:
    kind = str(get(event, "type") or "")
    response = get(event, "response")
    if response is not None:
        call.state["response"] = response
    if kind == "error":
        call.state["error"] = (str(get(event, "code") or "error"), str(get(event, "message")))
    call.chunk(kind.endswith(".delta"))


def _responses_stream_end(call: LlmCall) -> None:
    response = call.state.get("response")
    if response is not None:
        _set_responses_response(call, response)
    error = call.state.get("error")
    if error is not None:
        call.fail_message(*error)


def _finish_responses(call: LlmCall, result: Any) -> None:
    if _is_stream(result):
        trace_stream(result, call, _responses_event, _responses_stream_end)
        return
    _set_responses_response(call, result)
    call.end()


# --- embeddings ------------------------------------------------------------------------------


def _start_embeddings(args: Sequence[Any], kwargs: Mapping[str, Any]) -> LlmCall:
    encoding = _kw(kwargs, "encoding_format")
    return _start(
        args,
        kwargs,
        attr.OP_EMBEDDINGS,
        {
            attr.REQUEST_ENCODING_FORMATS: [str(encoding)] if encoding else None,
            attr.EMBEDDINGS_DIMENSION_COUNT: first_int(_kw(kwargs, "dimensions")),
        },
    )


def _finish_embeddings(call: LlmCall, result: Any) -> None:
    data = get(result, "data") or []
    vector = get(data[0], "embedding") if data else None
    usage = get(result, "usage")
    call.set(
        {
            attr.RESPONSE_MODEL: get(result, "model"),
            attr.USAGE_INPUT_TOKENS: first_int(get(usage, "prompt_tokens")),
            attr.EMBEDDINGS_DIMENSION_COUNT: len(vector) if isinstance(vector, list) else None,
        }
    )
    call.end()


# --- what gets patched -----------------------------------------------------------------------


def _both(
    module: str, sync_cls: str, async_cls: str, method: str, start: Any, finish: Any
) -> list[Patch]:
    return [
        (module, sync_cls, method, lambda original: wrap_sync(original, start, finish)),
        (module, async_cls, method, lambda original: wrap_async(original, start, finish)),
    ]


PATCHES: list[Patch] = [
    *_both(
        "openai.resources.chat.completions.completions",
        "Completions",
        "AsyncCompletions",
        "create",
        _start_chat,
        _finish_chat,
    ),
    *_both(
        "openai.resources.chat.completions.completions",
        "Completions",
        "AsyncCompletions",
        "parse",
        _start_chat,
        _finish_chat,
    ),
    *_both(
        "openai.resources.completions",
        "Completions",
        "AsyncCompletions",
        "create",
        _start_completion,
        _finish_completion,
    ),
    *_both(
        "openai.resources.responses.responses",
        "Responses",
        "AsyncResponses",
        "create",
        _start_responses,
        _finish_responses,
    ),
    *_both(
        "openai.resources.responses.responses",
        "Responses",
        "AsyncResponses",
        "parse",
        _start_responses,
        _finish_responses,
    ),
    *_both(
        "openai.resources.embeddings",
        "Embeddings",
        "AsyncEmbeddings",
        "create",
        _start_embeddings,
        _finish_embeddings,
    ),
]
