"""OTLP log records: insert (idempotent), search, the logs of a trace, retention.

GenAI instrumentations send prompts and completions as log-record *events* rather than span
attributes (https://opentelemetry.io/docs/specs/semconv/gen-ai/gen-ai-events/). Every record is
stored as it came; when a trace is read, spans whose prompt or completion is empty get them from
their GenAI event records (:func:`fill_genai_content`), so the order in which spans and logs
arrive does not matter.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, delete, or_, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from observatory import semconv
from observatory.store.schema import log_records

# Columns an inserted row (a dict) must have.
LOG_COLUMNS: tuple[str, ...] = (
    "project_id",
    "time_unix_nano",
    "observed_time_unix_nano",
    "trace_id",
    "span_id",
    "severity_number",
    "severity_text",
    "event_name",
    "body",
    "attributes",
    "resource_attributes",
    "scope_name",
    "service_name",
    "flags",
    "record_hash",
)
# The events whose content belongs to a span's prompt or completion.
GENAI_EVENT_NAMES: frozenset[str] = frozenset(
    {
        *semconv.MESSAGE_EVENTS,
        semconv.CHOICE_EVENT,
        semconv.OPERATION_DETAILS_EVENT,
        semconv.CONTENT_PROMPT_EVENT,
        semconv.CONTENT_COMPLETION_EVENT,
    }
)
# The trace view shows at most this many log records of one trace.
MAX_TRACE_LOGS = 2000
# OTLP SeverityNumber ranges (logs data model): TRACE 1-4, DEBUG 5-8, INFO 9-12, WARN 13-16,
# ERROR 17-20, FATAL 21-24.
SEVERITY_FLOOR = {"trace": 1, "debug": 5, "info": 9, "warn": 13, "error": 17, "fatal": 21}
_INSERT_CHUNK = 500


class BadLogCursor(ValueError):
    """A pagination cursor that this server did not issue."""


@dataclass
class LogPage:
    items: list[dict[str, Any]]
    next_cursor: str | None


@dataclass
class LogFilters:
    """Filters of the log search. Times in unix nanoseconds."""

    start_time: int | None = None
    end_time: int | None = None
    trace_id: str | None = None
    span_id: str | None = None
    min_severity: int | None = None
    text: str | None = None
    service: str | None = None
    event_name: str | None = None


def insert_logs(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert log rows in the caller's transaction; rows already stored (same project and
    ``record_hash``) are skipped. Returns how many were new."""
    if not rows:
        return 0
    make = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    inserted = 0
    for i in range(0, len(rows), _INSERT_CHUNK):
        chunk = [{c: row[c] for c in LOG_COLUMNS} for row in rows[i : i + _INSERT_CHUNK]]
        statement = (
            make(log_records)
            .on_conflict_do_nothing(index_elements=["project_id", "record_hash"])
            .returning(log_records.c.log_rowid)
        )
        # RETURNING yields only the rows actually inserted (rowcount is not reliable here).
        inserted += len(conn.execute(statement, chunk).all())
    return inserted


def delete_logs_before(conn: Connection, project_id: int, cutoff_ns: int) -> int:
    """Delete a project's log records older than ``cutoff_ns`` (retention). Returns the count."""
    result = conn.execute(
        delete(log_records).where(
            log_records.c.project_id == project_id, log_records.c.time_unix_nano < cutoff_ns
        )
    )
    return max(result.rowcount, 0)


def _loads(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


def log_dict(row: Any) -> dict[str, Any]:
    """A stored log record with its JSON columns decoded."""
    return {
        "time_unix_nano": row.time_unix_nano,
        "observed_time_unix_nano": row.observed_time_unix_nano,
        "trace_id": row.trace_id,
        "span_id": row.span_id,
        "severity_number": row.severity_number,
        "severity_text": row.severity_text,
        "event_name": row.event_name,
        "body": _loads(row.body),
        "attributes": _loads(row.attributes),
        "resource_attributes": _loads(row.resource_attributes),
        "scope_name": row.scope_name,
        "service_name": row.service_name,
        "flags": row.flags,
    }


# --- search -------------------------------------------------------------------------------------


def _encode_cursor(time_unix_nano: int, rowid: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([time_unix_nano, rowid])).decode()


def _decode_cursor(cursor: str) -> tuple[int, int]:
    try:
        values = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise BadLogCursor("cursor is not valid") from exc
    if (
        not isinstance(values, list)
        or len(values) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    ):
        raise BadLogCursor("cursor is not valid")
    return int(values[0]), int(values[1])


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _conditions(project_id: int, f: LogFilters) -> list[ColumnElement[bool]]:
    c = log_records.c
    cond: list[ColumnElement[bool]] = [c.project_id == project_id]
    if f.start_time is not None:
        cond.append(c.time_unix_nano >= f.start_time)
    if f.end_time is not None:
        cond.append(c.time_unix_nano < f.end_time)
    if f.trace_id:
        cond.append(c.trace_id == f.trace_id)
    if f.span_id:
        cond.append(c.span_id == f.span_id)
    if f.min_severity is not None:
        cond.append(c.severity_number >= f.min_severity)
    if f.service:
        cond.append(c.service_name == f.service)
    if f.event_name:
        cond.append(c.event_name == f.event_name)
    if f.text:
        pattern = _like(f.text)
        cond.append(
            or_(
                c.body.ilike(pattern, escape="\\"),
                c.severity_text.ilike(pattern, escape="\\"),
                c.event_name.ilike(pattern, escape="\\"),
            )
        )
    return cond


def search_logs(
    conn: Connection,
    project_id: int,
    f: LogFilters,
    *,
    limit: int = 100,
    cursor: str | None = None,
) -> LogPage:
    """Log records, newest first, with keyset pagination on (time, row id)."""
    c = log_records.c
    cond = _conditions(project_id, f)
    if cursor:
        time_ns, rowid = _decode_cursor(cursor)
        cond.append(tuple_(c.time_unix_nano, c.log_rowid) < tuple_(time_ns, rowid))
    rows = conn.execute(
        select(log_records)
        .where(and_(*cond))
        .order_by(c.time_unix_nano.desc(), c.log_rowid.desc())
        .limit(limit + 1)
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = (
        _encode_cursor(rows[-1].time_unix_nano, rows[-1].log_rowid) if more and rows else None
    )
    return LogPage([log_dict(r) for r in rows], next_cursor)


def logs_for_trace(
    conn: Connection, project_id: int, trace_id: str, limit: int = MAX_TRACE_LOGS
) -> list[dict[str, Any]]:
    """Every log record of a trace in time order (GenAI events included)."""
    c = log_records.c
    rows = conn.execute(
        select(log_records)
        .where(c.project_id == project_id, c.trace_id == trace_id)
        .order_by(c.time_unix_nano, c.observed_time_unix_nano, c.log_rowid)
        .limit(limit)
    ).all()
    return [log_dict(r) for r in rows]


# --- GenAI events → prompt and completion --------------------------------------------------------


def event_name_of(log: Mapping[str, Any]) -> str | None:
    """The record's event name: the ``event_name`` field, else the ``event.name`` attribute."""
    name = log.get("event_name")
    if name:
        return str(name)
    attrs = log.get("attributes") or {}
    value = attrs.get("event.name") if isinstance(attrs, Mapping) else None
    return str(value) if value else None


def _parse_json(value: Any) -> Any:
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _messages(value: Any, default_role: str) -> list[dict[str, Any]]:
    """A GenAI message list, one message, or plain text → a list of messages."""
    value = _parse_json(value)
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, dict):
        if isinstance(value.get("messages"), list):
            return _messages(value["messages"], default_role)
        value = [value]
    if not isinstance(value, list):
        return [{"role": default_role, "content": value}]
    out: list[dict[str, Any]] = []
    for item in value:
        if isinstance(item, dict):
            message = dict(item)
            message.setdefault("role", default_role)
            out.append(message)
        else:
            out.append({"role": default_role, "content": item})
    return out


def _field(body: Any, attrs: Mapping[str, Any], name: str) -> Any:
    """A field of an event: in the body (current events) or an attribute (older SDKs)."""
    if isinstance(body, Mapping) and body.get(name) is not None:
        return body[name]
    return attrs.get(name)


def genai_content(
    log: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The prompt and completion messages one GenAI event record carries."""
    name = event_name_of(log)
    body = _parse_json(log.get("body"))
    raw_attrs = log.get("attributes")
    attrs: Mapping[str, Any] = raw_attrs if isinstance(raw_attrs, Mapping) else {}
    if name in semconv.MESSAGE_EVENTS:
        message: dict[str, Any] = {
            "role": _field(body, attrs, "role") or semconv.MESSAGE_EVENTS[name]
        }
        content = _field(body, attrs, "content")
        if content is None and isinstance(body, str | list):
            content = body
        if content is not None:
            message["content"] = _parse_json(content)
        tool_calls = _field(body, attrs, "tool_calls")
        if tool_calls is not None:
            message["tool_calls"] = _parse_json(tool_calls)
        tool_call_id = _field(body, attrs, "id")
        if tool_call_id is not None:
            message["tool_call_id"] = tool_call_id
        return [message], []
    if name == semconv.CHOICE_EVENT:
        inner = _parse_json(_field(body, attrs, "message"))
        choice: dict[str, Any] = dict(inner) if isinstance(inner, Mapping) else {}
        if not choice.get("role"):
            choice["role"] = "assistant"
        content = _field(body, attrs, "content")
        if "content" not in choice and content is not None:
            choice["content"] = _parse_json(content)
        for key in ("finish_reason", "index"):
            value = _field(body, attrs, key)
            if value is not None:
                choice[key] = value
        return [], [choice]
    if name == semconv.OPERATION_DETAILS_EVENT:
        prompt = _messages(_field(body, attrs, "gen_ai.system_instructions"), "system")
        prompt += _messages(_field(body, attrs, "gen_ai.input.messages"), "user")
        completion = _messages(_field(body, attrs, "gen_ai.output.messages"), "assistant")
        return prompt, completion
    if name == semconv.CONTENT_PROMPT_EVENT:
        return _messages(_field(body, attrs, "gen_ai.prompt"), "user"), []
    if name == semconv.CONTENT_COMPLETION_EVENT:
        return [], _messages(_field(body, attrs, "gen_ai.completion"), "assistant")
    return [], []


def _walk(nodes: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """Every node once, whether ``nodes`` is the flat list or the roots of the tree."""
    stack = list(nodes)
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(node.get("children") or [])


def fill_genai_content(spans: Iterable[dict[str, Any]], logs: Sequence[Mapping[str, Any]]) -> int:
    """Give spans with an empty prompt/completion the content of their GenAI event records.

    ``spans`` are span dicts (children under ``children`` are visited too), ``logs`` the
    trace's records in time order. A span's own content always wins. Returns how many spans
    got content.
    """
    by_span: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for log in logs:
        span_id = log.get("span_id")
        if not span_id or event_name_of(log) not in GENAI_EVENT_NAMES:
            continue
        prompt, completion = genai_content(log)
        acc = by_span.setdefault(str(span_id), ([], []))
        acc[0].extend(prompt)
        acc[1].extend(completion)
    if not by_span:
        return 0
    filled = 0
    for node in _walk(spans):
        found = by_span.get(node.get("span_id") or "")
        if found is None:
            continue
        prompt, completion = found
        changed = False
        if not node.get("prompt") and prompt:
            node["prompt"] = prompt
            changed = True
        if not node.get("completion") and completion:
            node["completion"] = sorted(completion, key=lambda m: _index(m.get("index")))
            if not node.get("finish_reason"):
                reason = node["completion"][-1].get("finish_reason")
                node["finish_reason"] = str(reason) if reason is not None else None
            changed = True
        filled += changed
    return filled


def _index(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def attach_to_trace(
    conn: Connection, project_id: int, trace_id: str, spans: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Read a trace's log records, fill its spans' empty prompt/completion from GenAI events,
    and return the records (for the ``logs`` list of the trace view)."""
    logs = logs_for_trace(conn, project_id, trace_id)
    fill_genai_content(spans, logs)
    return logs
