"""Prompt and completion message lists → a uniform shape the templates render as text.

Instrumentations record messages in several shapes: GenAI ``parts`` (text, tool_call,
tool_call_response), OpenAI ``content`` strings or part lists with ``tool_calls``, Anthropic content
blocks (text, tool_use, tool_result) and plain strings. Everything here stays data: templates
escape it, nothing is ever marked safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

MAX_TEXT = 200_000
KNOWN_ROLES = ("system", "user", "assistant", "tool", "developer", "function")


@dataclass
class Block:
    kind: str  # text | tool_call | tool_result | json | media
    text: str = ""
    name: str = ""
    call_id: str = ""


@dataclass
class Message:
    role: str
    blocks: list[Block] = field(default_factory=list)
    finish_reason: str = ""
    name: str = ""

    @property
    def role_class(self) -> str:
        return self.role if self.role in KNOWN_ROLES else "other"


def pretty(value: Any) -> str:
    """JSON text for any value; strings that hold JSON are parsed and re-indented."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("{", "["):
            try:
                value = orjson.loads(stripped)
            except orjson.JSONDecodeError:
                return _clip(value)
        else:
            return _clip(value)
    try:
        text = orjson.dumps(
            value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str
        ).decode()
    except TypeError:
        text = repr(value)
    return _clip(text)


def _clip(text: str) -> str:
    if len(text) > MAX_TEXT:
        return text[:MAX_TEXT] + f"\n… ({len(text) - MAX_TEXT} more characters)"
    return text


def _text(value: Any) -> str:
    return _clip(value) if isinstance(value, str) else pretty(value)


def _part_blocks(part: Any) -> list[Block]:
    if not isinstance(part, dict):
        return [Block("text", _text(part))]
    kind = str(part.get("type", ""))
    if kind in ("text", "input_text", "output_text", "reasoning", "thinking"):
        body = part.get("content", part.get("text", part.get("thinking", "")))
        label = "reasoning" if kind in ("reasoning", "thinking") else ""
        return [Block("text", _text(body), name=label)]
    if kind in ("tool_call", "tool_use", "function_call"):
        args = part.get("arguments", part.get("input", part.get("args")))
        return [
            Block(
                "tool_call",
                pretty(args) if args is not None else "",
                name=str(part.get("name", "")),
                call_id=str(part.get("id", part.get("call_id", "")) or ""),
            )
        ]
    if kind in ("tool_call_response", "tool_result", "function_call_output"):
        body = part.get("response", part.get("content", part.get("output", part.get("result"))))
        return [
            Block(
                "tool_result",
                _text(body),
                call_id=str(part.get("id", part.get("tool_use_id", part.get("call_id", ""))) or ""),
            )
        ]
    if kind in ("image", "image_url", "input_image", "blob", "uri", "file", "audio", "input_audio"):
        return [Block("media", f"[{kind} omitted]", name=kind)]
    if "content" in part and len(part) <= 2:
        return [Block("text", _text(part["content"]))]
    return [Block("json", pretty(part))]


def _tool_calls(calls: Any) -> list[Block]:
    if not isinstance(calls, list):
        return [Block("json", pretty(calls))] if calls else []
    blocks = []
    for call in calls:
        if not isinstance(call, dict):
            blocks.append(Block("json", pretty(call)))
            continue
        raw_function = call.get("function")
        function: dict[str, Any] = raw_function if isinstance(raw_function, dict) else {}
        name = call.get("name") or function.get("name") or ""
        args = call.get("arguments", function.get("arguments"))
        blocks.append(
            Block(
                "tool_call",
                pretty(args) if args is not None else "",
                name=str(name),
                call_id=str(call.get("id") or ""),
            )
        )
    return blocks


def message(raw: Any) -> Message:
    """One message in any of the recorded shapes."""
    if not isinstance(raw, dict):
        return Message("other", [Block("text", _text(raw))])
    role = str(raw.get("role") or "other")
    msg = Message(role, finish_reason=str(raw.get("finish_reason") or ""))
    msg.name = str(raw.get("name") or "")
    parts = raw.get("parts")
    content = raw.get("content")
    if isinstance(parts, list):
        for part in parts:
            msg.blocks.extend(_part_blocks(part))
    if content is not None and content != "":
        if isinstance(content, list):
            for part in content:
                msg.blocks.extend(_part_blocks(part))
        elif role == "tool":
            msg.blocks.append(
                Block("tool_result", _text(content), call_id=str(raw.get("tool_call_id") or ""))
            )
        else:
            msg.blocks.append(Block("text", _text(content)))
    msg.blocks.extend(_tool_calls(raw.get("tool_calls")))
    if not msg.blocks:
        rest = {
            k: v
            for k, v in raw.items()
            if k not in ("role", "finish_reason", "name", "parts", "content", "tool_calls")
        }
        if rest:
            msg.blocks.append(Block("json", pretty(rest)))
    return msg


def messages(raw: Any) -> list[Message]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raw = [raw]
    return [message(item) for item in raw]


def preview(raw: Any, *, last_user: bool = False, limit: int = 280) -> str:
    """A one-paragraph text preview: the last user message, or the last message's text."""
    items = messages(raw)
    if last_user:
        users = [m for m in items if m.role == "user"]
        items = users or items
    for msg in reversed(items):
        for block in msg.blocks:
            if block.kind == "text" and block.text.strip():
                text = " ".join(block.text.split())
                return text if len(text) <= limit else text[: limit - 1] + "…"
        for block in msg.blocks:
            if block.kind == "tool_call":
                return f"→ {block.name}()"
    return ""
