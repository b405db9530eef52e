"""The trace waterfall (span tree with durations to scale) and the span detail view model."""

from __future__ import annotations

from typing import Any

from observatory.ui import conversation

LLM_OPERATIONS = {"chat", "text_completion", "generate_content", "completion", "responses"}
KIND_NAMES = {
    0: "unspecified",
    1: "internal",
    2: "server",
    3: "client",
    4: "producer",
    5: "consumer",
}


def span_type(span: dict[str, Any]) -> str:
    """llm, embedding, tool, agent, retrieval or span: for the badge and the bar colour."""
    op = (span.get("operation") or "").lower()
    if op in ("embeddings", "embedding"):
        return "embedding"
    if op in ("execute_tool", "tool"):
        return "tool"
    if op in ("invoke_agent", "create_agent", "agent"):
        return "agent"
    if op in ("retrieval", "retrieve", "rerank"):
        return "retrieval"
    if op in LLM_OPERATIONS or span.get("request_model") or span.get("response_model"):
        return "llm"
    return "span"


def flatten(trace: dict[str, Any], roots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Spans in tree order (depth first, children by start time) with bar geometry in percent."""
    start = int(trace["start_time_unix_nano"])
    total = max(int(trace["end_time_unix_nano"]) - start, 1)
    rows: list[dict[str, Any]] = []
    stack = [(node, 0) for node in reversed(roots)]
    while stack:
        node, depth = stack.pop()
        offset = (int(node["start_time_unix_nano"]) - start) / total * 100
        width = (int(node["end_time_unix_nano"]) - int(node["start_time_unix_nano"])) / total * 100
        offset = min(max(offset, 0.0), 100.0)
        rows.append(
            {
                **node,
                "depth": depth,
                "type": span_type(node),
                "offset_pct": round(offset, 3),
                "width_pct": round(max(min(width, 100.0 - offset), 0.25), 3),
                "has_children": bool(node["children"]),
                # Bars that reach the right edge get their duration label on their left, or
                # inside the bar when there is no room on the left either.
                "label_at": ("left" if offset > 20 else "inside") if offset + width > 80 else "",
            }
        )
        stack.extend((child, depth + 1) for child in reversed(node["children"]))
    return rows


def pick_span(rows: list[dict[str, Any]], wanted: str) -> dict[str, Any] | None:
    """The requested span, else the first failing one, else the root."""
    wanted = wanted.strip().lower()
    for row in rows:
        if wanted and row["span_id"] == wanted:
            return row
    for row in rows:
        if row["error"]:
            return row
    return rows[0] if rows else None


def _exceptions(events: list[dict[str, Any]] | None) -> list[dict[str, str]]:
    out = []
    for event in events or []:
        if event.get("name") != "exception":
            continue
        attrs = event.get("attributes") or {}
        out.append(
            {
                "type": str(attrs.get("exception.type", "")),
                "message": str(attrs.get("exception.message", "")),
                "stacktrace": str(attrs.get("exception.stacktrace", "")),
            }
        )
    return out


def span_view(span: dict[str, Any], trace: dict[str, Any]) -> dict[str, Any]:
    """Everything the span panel shows; content stays plain data (escaped by the template)."""
    attributes = span.get("attributes") or {}
    return {
        **span,
        "kind_name": KIND_NAMES.get(int(span.get("kind") or 0), str(span.get("kind"))),
        "offset_ms": (int(span["start_time_unix_nano"]) - int(trace["start_time_unix_nano"])) / 1e6,
        "model": span.get("response_model") or span.get("request_model"),
        "prompt_messages": conversation.messages(span.get("prompt")),
        "completion_messages": conversation.messages(span.get("completion")),
        "exceptions": _exceptions(span.get("events")),
        "other_events": [e for e in span.get("events") or [] if e.get("name") != "exception"],
        "attribute_items": sorted(attributes.items()),
        "resource_items": sorted((span.get("resource_attributes") or {}).items()),
        "is_llm": span_type(span) == "llm",
    }
