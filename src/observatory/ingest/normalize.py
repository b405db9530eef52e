"""Turn raw span attributes into the canonical LLM fields (see semconv.py for the sources)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from observatory import semconv
from observatory.model import LlmUsage, Span

_INDEXED = re.compile(r"^(\d+)\.(.+)$")


def _first(attrs: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = attrs.get(name)
        if value is not None and value != "":
            return value
    return None


# Every attribute name normalisation reads, grouped by the field it fills, in order of preference.
_GROUPS: dict[str, tuple[str, ...]] = {
    name: getattr(semconv, name)
    for name in (
        "SERVICE_NAME",
        "ENVIRONMENT",
        "SESSION_ID",
        "USER_ID",
        "REQUEST_MODEL",
        "RESPONSE_MODEL",
        "PROVIDER",
        "INPUT_TOKENS",
        "OUTPUT_TOKENS",
        "CACHE_READ_TOKENS",
        "CACHE_WRITE_TOKENS",
        "REASONING_TOKENS",
        "TOTAL_TOKENS",
        "FINISH_REASONS",
        "TIME_TO_FIRST_TOKEN_S",
        "INPUT_MESSAGES",
        "SYSTEM_INSTRUCTIONS",
        "OUTPUT_MESSAGES",
        "INPUT_VALUE",
        "OUTPUT_VALUE",
    )
}
_SLOTS: dict[str, tuple[str, int]] = {
    attr: (group, rank) for group, names in _GROUPS.items() for rank, attr in enumerate(names)
}


def known_values(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """For each group of ``_GROUPS``, the value of its most preferred non-empty attribute.

    The same as ``_first(attrs, semconv.<GROUP>)`` for every group, in one pass over the
    attributes instead of a lookup per candidate name.
    """
    found: dict[str, tuple[int, Any]] = {}
    slots = _SLOTS
    for key, value in attrs.items():
        slot = slots.get(key)
        if slot is None or value is None or value == "":
            continue
        group, rank = slot
        have = found.get(group)
        if have is None or rank < have[0]:
            found[group] = (rank, value)
    return {group: value for group, (_, value) in found.items()}


def _str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list):
        return ",".join(str(v) for v in value) if value else None
    text = str(value).strip()
    return text[:512] or None


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = int(float(value)) if isinstance(value, str | float) else int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if 0 <= number < 2**62 else None


def _seconds_to_ms(value: Any) -> float | None:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    if seconds != seconds or seconds < 0 or seconds > 86_400:  # NaN or nonsense
        return None
    return seconds * 1000.0


def normalize_provider(raw: str | None) -> str | None:
    if not raw:
        return None
    key = raw.strip().lower()
    return semconv.PROVIDER_ALIASES.get(key, key[:64])


def normalize(span: Span) -> Span:
    """Fill the canonical fields of ``span`` in place and return it."""
    attrs = span.attributes
    found = known_values(attrs)
    res = known_values(span.resource_attributes)
    span.service_name = _str(res.get("SERVICE_NAME")) or _str(found.get("SERVICE_NAME"))
    span.environment = _str(found.get("ENVIRONMENT") or res.get("ENVIRONMENT"))
    span.session_id = _str(found.get("SESSION_ID") or res.get("SESSION_ID"))
    span.user_id = _str(found.get("USER_ID") or res.get("USER_ID"))

    span.request_model = _str(found.get("REQUEST_MODEL"))
    span.response_model = _str(found.get("RESPONSE_MODEL"))
    span.provider = normalize_provider(_str(found.get("PROVIDER")))
    # "openai/gpt-4o" style model names carry the provider.
    for attr in ("request_model", "response_model"):
        model = getattr(span, attr)
        if model and "/" in model and not model.startswith("/"):
            prefix, _, rest = model.partition("/")
            alias = semconv.PROVIDER_ALIASES.get(prefix.lower())
            if alias and rest:
                setattr(span, attr, rest)
                span.provider = span.provider or alias

    span.operation = _operation(attrs, span)

    usage = LlmUsage(
        input_tokens=_int(found.get("INPUT_TOKENS")),
        output_tokens=_int(found.get("OUTPUT_TOKENS")),
        cache_read_tokens=_int(found.get("CACHE_READ_TOKENS")),
        cache_write_tokens=_int(found.get("CACHE_WRITE_TOKENS")),
        reasoning_tokens=_int(found.get("REASONING_TOKENS")),
        total_tokens=_int(found.get("TOTAL_TOKENS")),
    )
    if usage.total_tokens is None and (
        usage.input_tokens is not None or usage.output_tokens is not None
    ):
        usage.total_tokens = (usage.input_tokens or 0) + (usage.output_tokens or 0)
    span.usage = usage

    finish = found.get("FINISH_REASONS")
    if isinstance(finish, list):
        finish = finish[0] if finish else None
    span.finish_reason = _str(finish)
    ttft = found.get("TIME_TO_FIRST_TOKEN_S")
    span.time_to_first_token_ms = _seconds_to_ms(ttft) if ttft is not None else None

    prompt, completion = extract_content(span, found)
    span.prompt = prompt
    span.completion = completion
    if span.finish_reason is None and completion:
        last = completion[-1].get("finish_reason")
        span.finish_reason = _str(last)
    return span


def _operation(attrs: Mapping[str, Any], span: Span) -> str | None:
    op = _str(attrs.get("gen_ai.operation.name"))
    if op:
        return op
    request_type = _str(attrs.get("llm.request.type"))
    if request_type:
        return semconv.LLM_REQUEST_TYPE_TO_OPERATION.get(request_type.lower(), request_type.lower())
    kind = _str(attrs.get(semconv.OPENINFERENCE_KIND))
    if kind:
        mapped = semconv.OPENINFERENCE_KIND_TO_OPERATION.get(kind.upper())
        if mapped:
            return mapped
    if span.request_model or span.response_model:
        return "chat"
    return None


# --- content ------------------------------------------------------------------------------------


def _parse_json_value(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in ("[", "{"):
            try:
                return orjson.loads(text)
            except orjson.JSONDecodeError:
                return value
    return value


def _as_messages(value: Any, default_role: str) -> list[dict[str, Any]] | None:
    """Accept a GenAI message list, an OpenAI-style list, a single message or plain text."""
    value = _parse_json_value(value)
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, dict):
        if "messages" in value and isinstance(value["messages"], list):
            return _as_messages(value["messages"], default_role)
        value = [value]
    if isinstance(value, list):
        out: list[dict[str, Any]] = []
        for item in value:
            if isinstance(item, dict):
                message = dict(item)
                message.setdefault("role", default_role)
                out.append(message)
            else:
                out.append({"role": default_role, "content": item})
        return out or None
    return [{"role": default_role, "content": value}]


def _indexed_messages(
    attrs: Mapping[str, Any], prefix: str, default_role: str
) -> list[dict[str, Any]] | None:
    """Rebuild ``prefix.N.field`` (OpenLLMetry) or ``prefix.N.message.field`` (OpenInference)."""
    grouped: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        if not key.startswith(prefix):
            continue
        match = _INDEXED.match(key[len(prefix) :])
        if not match:
            continue
        index, field = int(match.group(1)), match.group(2)
        if field.startswith("message."):
            field = field[len("message.") :]
        grouped.setdefault(index, {})[field] = value
    if not grouped:
        return None
    messages = []
    for index in sorted(grouped):
        fields = grouped[index]
        message: dict[str, Any] = {"role": fields.pop("role", default_role)}
        if "content" in fields:
            message["content"] = fields.pop("content")
        tool_calls = _tool_calls(fields)
        if tool_calls:
            message["tool_calls"] = tool_calls
        for key, value in fields.items():
            if not key.startswith(("tool_calls.", "tool_call.")):
                message[key] = value
        messages.append(message)
    return messages


def _tool_calls(fields: dict[str, Any]) -> list[dict[str, Any]]:
    calls: dict[int, dict[str, Any]] = {}
    for key, value in fields.items():
        if not key.startswith("tool_calls."):
            continue
        match = _INDEXED.match(key[len("tool_calls.") :])
        if not match:
            continue
        sub = match.group(2).removeprefix("tool_call.")
        calls.setdefault(int(match.group(1)), {})[sub] = value
    out = []
    for index in sorted(calls):
        call = calls[index]
        out.append(
            {
                "id": call.get("id"),
                "name": call.get("function.name") or call.get("name"),
                "arguments": _parse_json_value(
                    call.get("function.arguments") or call.get("arguments")
                ),
            }
        )
    return out


def _event_content(span: Span) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    prompt: list[dict[str, Any]] = []
    completion: list[dict[str, Any]] = []
    for event in span.events:
        name = event.get("name", "")
        attrs = event.get("attributes") or {}
        if name in semconv.MESSAGE_EVENTS:
            message: dict[str, Any] = {"role": attrs.get("role") or semconv.MESSAGE_EVENTS[name]}
            content = attrs.get("content", attrs.get("gen_ai.event.content"))
            if content is not None:
                message["content"] = _parse_json_value(content)
            if attrs.get("tool_calls") is not None:
                message["tool_calls"] = _parse_json_value(attrs["tool_calls"])
            prompt.append(message)
        elif name == semconv.CHOICE_EVENT:
            msg = _parse_json_value(attrs.get("message"))
            choice: dict[str, Any] = dict(msg) if isinstance(msg, dict) else {}
            choice.setdefault("role", "assistant")
            if "content" not in choice and attrs.get("content") is not None:
                choice["content"] = _parse_json_value(attrs["content"])
            if attrs.get("finish_reason") is not None:
                choice["finish_reason"] = attrs["finish_reason"]
            completion.append(choice)
        elif name == semconv.OPERATION_DETAILS_EVENT:
            prompt.extend(_as_messages(attrs.get("gen_ai.input.messages"), "user") or [])
            completion.extend(_as_messages(attrs.get("gen_ai.output.messages"), "assistant") or [])
        elif name == semconv.CONTENT_PROMPT_EVENT:
            prompt.extend(_as_messages(attrs.get("gen_ai.prompt"), "user") or [])
        elif name == semconv.CONTENT_COMPLETION_EVENT:
            completion.extend(_as_messages(attrs.get("gen_ai.completion"), "assistant") or [])
    return prompt or None, completion or None


def extract_content(
    span: Span, found: Mapping[str, Any] | None = None
) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    """Prompt and completion as message lists, from attributes or events, whichever exists.

    ``found`` is ``known_values(span.attributes)`` when the caller has it already.
    """
    attrs = span.attributes
    if found is None:
        found = known_values(attrs)
    prompt = _as_messages(found.get("INPUT_MESSAGES"), "user")
    system = found.get("SYSTEM_INSTRUCTIONS")
    if system is not None:
        prompt = (_as_messages(system, "system") or []) + (prompt or [])
    if prompt is None:
        prompt = _indexed_messages(attrs, semconv.OPENINFERENCE_INPUT_PREFIX, "user")
    if prompt is None:
        prompt = _indexed_messages(attrs, semconv.OPENLLMETRY_PROMPT_PREFIX, "user")
    completion = _as_messages(found.get("OUTPUT_MESSAGES"), "assistant")
    if completion is None:
        completion = _indexed_messages(attrs, semconv.OPENINFERENCE_OUTPUT_PREFIX, "assistant")
    if completion is None:
        completion = _indexed_messages(attrs, semconv.OPENLLMETRY_COMPLETION_PREFIX, "assistant")
    if prompt is None or completion is None:
        event_prompt, event_completion = _event_content(span)
        prompt = prompt or event_prompt
        completion = completion or event_completion
    if prompt is None:
        prompt = _as_messages(found.get("INPUT_VALUE"), "user")
    if completion is None:
        completion = _as_messages(found.get("OUTPUT_VALUE"), "assistant")
    return prompt, completion
