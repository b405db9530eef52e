"""Instrumentation of the official ``anthropic`` client (sync and async).

Covered: ``messages.create`` (streamed or not) and the ``messages.stream(...)`` helper.

Anthropic reports ``input_tokens`` without the cached part; the GenAI conventions (and
genai-prices) count input tokens including cache reads and writes, so the span's
``gen_ai.usage.input_tokens`` is ``input_tokens + cache_read_input_tokens +
cache_creation_input_tokens``.

anthropic >= 2 also traces its calls natively when a tracer provider is set. Its span is a child of
ours and describes the same call, so the SDK's processor drops it from the export to LLM
Observatory (otherwise the call, its tokens and its cost would count twice).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable

from observatory_sdk import _attributes as attr
from observatory_sdk._guard import FAILED, safely
from observatory_sdk._serialize import plain
from observatory_sdk.instrumentation._base import (
    ORIGINAL_ATTR,
    LlmCall,
    Patch,
    begin_call,
    first_int,
    get,
    given,
    trace_stream,
    wrap_async,
    wrap_sync,
)

PROVIDER = "anthropic"


def _kw(kwargs: Mapping[str, Any], name: str) -> Any:
    value = kwargs.get(name)
    return value if given(value) else None


def _server(instance: Any) -> dict[str, Any]:
    url = get(instance, "_client", "base_url")
    host = getattr(url, "host", None)
    if not host:
        return {}
    port = getattr(url, "port", None)
    if port is None:
        port = 443 if getattr(url, "scheme", "") == "https" else 80
    return {attr.SERVER_ADDRESS: str(host), attr.SERVER_PORT: int(port)}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _blocks(content: Any) -> list[dict[str, Any]]:
    """Anthropic content (a string or a list of blocks) as GenAI message parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    for block in content if isinstance(content, Iterable) else [content]:
        kind = get(block, "type")
        if kind == "text":
            parts.append({"type": "text", "content": get(block, "text")})
        elif kind in ("tool_use", "server_tool_use"):
            parts.append(
                {
                    "type": "tool_call",
                    "id": get(block, "id"),
                    "name": get(block, "name"),
                    "arguments": plain(get(block, "input")),
                }
            )
        elif kind == "tool_result":
            result = get(block, "content")
            if not isinstance(result, str):
                result = [p.get("content") for p in _blocks(result)] if result else None
            parts.append(
                {"type": "tool_call_response", "id": get(block, "tool_use_id"), "response": result}
            )
        elif kind == "thinking":
            parts.append({"type": "reasoning", "content": get(block, "thinking")})
        elif kind in ("image", "document"):
            source = get(block, "source")
            if get(source, "type") == "url":
                modality = "image" if kind == "image" else "document"
                parts.append({"type": "uri", "modality": modality, "uri": get(source, "url")})
            else:
                parts.append(
                    {
                        "type": "blob",
                        "modality": "image" if kind == "image" else "document",
                        "mime_type": get(source, "media_type"),
                    }
                )
        else:
            parts.append({"type": str(kind or "unknown")})
    return parts


def input_messages(messages: Any) -> list[dict[str, Any]]:
    return [
        {"role": get(m, "role") or "user", "parts": _blocks(get(m, "content"))}
        for m in messages or []
    ]


def usage_attributes(usage: Any) -> dict[str, Any]:
    if usage is None:
        return {}
    uncached = first_int(get(usage, "input_tokens"))
    cache_read = first_int(get(usage, "cache_read_input_tokens"))
    cache_write = first_int(get(usage, "cache_creation_input_tokens"))
    total_input = None if uncached is None else uncached + (cache_read or 0) + (cache_write or 0)
    return {
        attr.USAGE_INPUT_TOKENS: total_input,
        attr.USAGE_OUTPUT_TOKENS: first_int(get(usage, "output_tokens")),
        attr.USAGE_CACHE_READ_INPUT_TOKENS: cache_read,
        attr.USAGE_CACHE_CREATION_INPUT_TOKENS: cache_write,
    }


def _start_messages(args: Sequence[Any], kwargs: Mapping[str, Any]) -> LlmCall:
    instance = args[0] if args else None
    model = _kw(kwargs, "model")
    stop = _kw(kwargs, "stop_sequences")
    call = LlmCall(
        provider=PROVIDER,
        operation=attr.OP_CHAT,
        model=str(model) if model is not None else None,
        attributes={
            **_server(instance),
            attr.REQUEST_MAX_TOKENS: first_int(_kw(kwargs, "max_tokens")),
            attr.REQUEST_TEMPERATURE: _number(_kw(kwargs, "temperature")),
            attr.REQUEST_TOP_P: _number(_kw(kwargs, "top_p")),
            attr.REQUEST_TOP_K: _number(_kw(kwargs, "top_k")),
            attr.REQUEST_STOP_SEQUENCES: [str(s) for s in stop] if stop else None,
            attr.REQUEST_STREAM: True if _kw(kwargs, "stream") else None,
        },
    )
    system = _kw(kwargs, "system")
    if system:
        call.content(attr.SYSTEM_INSTRUCTIONS, _blocks, system)
    call.content(attr.INPUT_MESSAGES, input_messages, _kw(kwargs, "messages"))
    call.content(attr.TOOL_DEFINITIONS, plain, _kw(kwargs, "tools"))
    return call


def _set_message(call: LlmCall, message: Any) -> None:
    stop_reason = get(message, "stop_reason")
    call.set(
        {
            attr.RESPONSE_ID: get(message, "id"),
            attr.RESPONSE_MODEL: get(message, "model"),
            attr.RESPONSE_FINISH_REASONS: [str(stop_reason)] if stop_reason else None,
            **usage_attributes(get(message, "usage")),
        }
    )
    call.set_content(
        attr.OUTPUT_MESSAGES,
        [
            {
                "role": get(message, "role") or "assistant",
                "parts": _blocks(get(message, "content")),
                "finish_reason": str(stop_reason or ""),
            }
        ],
    )


def _event(call: LlmCall, event: Any) -> None:
    state = call.state
    kind = get(event, "type")
    carries_output = False
    if kind == "message_start":
        message = get(event, "message")
        state["id"] = get(message, "id")
        state["model"] = get(message, "model")
        state["usage"] = dict(usage_fields(get(message, "usage")))
    elif kind == "content_block_start":
        block = get(event, "content_block")
        state.setdefault("blocks", {})[get(event, "index") or 0] = {
            "type": get(block, "type"),
            "id": get(block, "id"),
            "name": get(block, "name"),
            "text": [get(block, "text") or ""],
            "json": [],
        }
    elif kind == "content_block_delta":
        delta = get(event, "delta")
        slot = state.setdefault("blocks", {}).setdefault(
            get(event, "index") or 0,
            {"type": "text", "id": None, "name": None, "text": [], "json": []},
        )
        delta_type = get(delta, "type")
        if delta_type == "text_delta":
            slot["text"].append(get(delta, "text") or "")
        elif delta_type == "thinking_delta":
            slot["text"].append(get(delta, "thinking") or "")
        elif delta_type == "input_json_delta":
            slot["json"].append(get(delta, "partial_json") or "")
        carries_output = True
    elif kind == "message_delta":
        stop_reason = get(event, "delta", "stop_reason")
        if stop_reason:
            state["stop_reason"] = stop_reason
        # message_delta usage is cumulative; it has the final output (and newer: input) counts.
        state.setdefault("usage", {}).update(usage_fields(get(event, "usage")))
    call.chunk(carries_output)


def usage_fields(usage: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for name in (
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    ):
        value = first_int(get(usage, name))
        if value is not None:
            out[name] = value
    return out


def _stream_end(call: LlmCall) -> None:
    import json

    state = call.state
    stop_reason = state.get("stop_reason")
    call.set(
        {
            attr.RESPONSE_ID: state.get("id"),
            attr.RESPONSE_MODEL: state.get("model"),
            attr.RESPONSE_FINISH_REASONS: [str(stop_reason)] if stop_reason else None,
            **usage_attributes(state.get("usage")),
        }
    )
    if not call.capture_content:
        return
    parts: list[dict[str, Any]] = []
    for _, block in sorted(state.get("blocks", {}).items()):
        if block["type"] in ("tool_use", "server_tool_use"):
            raw = "".join(block["json"])
            try:
                arguments: Any = json.loads(raw) if raw else {}
            except ValueError:
                arguments = raw
            parts.append(
                {
                    "type": "tool_call",
                    "id": block["id"],
                    "name": block["name"],
                    "arguments": arguments,
                }
            )
        elif block["type"] == "thinking":
            parts.append({"type": "reasoning", "content": "".join(block["text"])})
        else:
            parts.append({"type": "text", "content": "".join(block["text"])})
    call.set_content(
        attr.OUTPUT_MESSAGES,
        [{"role": "assistant", "parts": parts, "finish_reason": str(stop_reason or "")}],
    )


def _is_stream(result: Any) -> bool:
    import anthropic

    return isinstance(result, (anthropic.Stream, anthropic.AsyncStream))


def _finish_messages(call: LlmCall, result: Any) -> None:
    if _is_stream(result):
        trace_stream(result, call, _event, _stream_end)
        return
    _set_message(call, result)
    call.end()


# --- messages.stream(...) ---------------------------------------------------------------------


def _request_attr(manager: Any) -> str:
    """The (name-mangled) attribute where a stream manager keeps the request it will make."""
    for name in vars(manager):
        if isinstance(name, str) and name.endswith("__api_request"):
            return name
    raise AttributeError("stream manager without an api request")


def _trace_manager(manager: Any, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    name = _request_attr(manager)
    original = getattr(manager, name)
    request_kwargs = {**kwargs, "stream": True}
    if callable(original):

        def api_request() -> Any:
            call = begin_call(_start_messages, args, request_kwargs)
            if call is None:
                return original()
            token = safely(call.attach)
            try:
                raw = original()
            except BaseException as exc:
                safely(call.fail, exc)
                safely(call.end)
                raise
            finally:
                if token is not FAILED:
                    safely(call.detach, token)
            if safely(_finish_messages, call, raw) is FAILED:
                safely(call.end)
            return raw

        setattr(manager, name, api_request)
    elif hasattr(original, "__await__"):

        async def api_request_async() -> Any:
            call = begin_call(_start_messages, args, request_kwargs)
            if call is None:
                return await original
            token = safely(call.attach)
            try:
                raw = await original
            except BaseException as exc:
                safely(call.fail, exc)
                safely(call.end)
                raise
            finally:
                if token is not FAILED:
                    safely(call.detach, token)
            if safely(_finish_messages, call, raw) is FAILED:
                safely(call.end)
            return raw

        setattr(manager, name, api_request_async())


def _wrap_stream_helper(original: Callable[..., Any]) -> Callable[..., Any]:
    import functools

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        manager = original(*args, **kwargs)
        safely(_trace_manager, manager, args, kwargs)
        return manager

    setattr(wrapper, ORIGINAL_ATTR, original)
    return wrapper


PATCHES: list[Patch] = [
    (
        "anthropic.resources.messages.messages",
        "Messages",
        "create",
        lambda original: wrap_sync(original, _start_messages, _finish_messages),
    ),
    (
        "anthropic.resources.messages.messages",
        "AsyncMessages",
        "create",
        lambda original: wrap_async(original, _start_messages, _finish_messages),
    ),
    ("anthropic.resources.messages.messages", "Messages", "stream", _wrap_stream_helper),
    ("anthropic.resources.messages.messages", "AsyncMessages", "stream", _wrap_stream_helper),
]
