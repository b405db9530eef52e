"""Turn arbitrary Python values into bounded JSON strings for span attributes. Never raises."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

# One attribute value is at most this many characters; longer content is cut with a marker.
MAX_CHARS = 64 * 1024
TRUNCATED = "...[truncated]"


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {type(value).__name__}>"


def plain(value: Any, depth: int = 0) -> Any:
    """A JSON-friendly version of ``value`` (pydantic models, dataclasses, sets, bytes...)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if depth > 20:
        return _safe_repr(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v, depth + 1) for k, v in list(value.items())}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v, depth + 1) for v in list(value)]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    dump = getattr(value, "model_dump", None)  # pydantic v2 (openai / anthropic objects)
    if callable(dump):
        try:
            return plain(dump(), depth + 1)
        except Exception:
            return _safe_repr(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        try:
            return plain(dataclasses.asdict(value), depth + 1)
        except Exception:
            return _safe_repr(value)
    return _safe_repr(value)


def truncate(text: str, limit: int = MAX_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[: max(limit - len(TRUNCATED), 0)] + TRUNCATED


def to_json(value: Any, limit: int = MAX_CHARS) -> str:
    """``value`` as a JSON string of at most ``limit`` characters (strings stay plain text)."""
    try:
        if isinstance(value, str):
            return truncate(value, limit)
        text = json.dumps(plain(value), ensure_ascii=False, default=_safe_repr)
    except Exception:
        text = _safe_repr(value)
    return truncate(text, limit)


def parse_json(text: Any) -> Any:
    """Tool-call arguments arrive as JSON text; keep them structured when they parse."""
    if not isinstance(text, str):
        return plain(text)
    try:
        return json.loads(text)
    except ValueError:
        return text
