"""Read queries the web UI needs beyond queries.py: sessions, users, per-model usage, trace
previews and the look-ups behind UI sessions. SQLAlchemy Core, bound parameters only; the same
SQL runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, func, select
from sqlalchemy.engine import Connection

from observatory.model import ApiKey
from observatory.store import admin, histogram
from observatory.store.schema import api_keys, audit_log, rollups_1m, rollups_1m_latency, spans
from observatory.store.schema import traces as traces_t

SESSION_SORTS = ("last_seen", "first_seen", "traces", "cost", "tokens")
USER_SORTS = ("cost", "traces", "llm_calls", "tokens", "last_seen", "errors")


@dataclass
class Window:
    """The part of the UI's filters these queries honour. Times in unix nanoseconds."""

    start_time: int | None = None
    end_time: int | None = None
    environment: str | None = None
    service: str | None = None
    user_id: str | None = None


def _trace_window(project_id: int, w: Window) -> list[ColumnElement[bool]]:
    t = traces_t.c
    cond: list[ColumnElement[bool]] = [t.project_id == project_id]
    if w.start_time is not None:
        cond.append(t.start_time_unix_nano >= w.start_time)
    if w.end_time is not None:
        cond.append(t.start_time_unix_nano < w.end_time)
    if w.environment:
        cond.append(t.environment == w.environment)
    if w.service:
        cond.append(t.service_name == w.service)
    if w.user_id:
        cond.append(t.user_id == w.user_id)
    return cond


def _money(value: Any) -> Decimal:
    return Decimal(0) if value is None else Decimal(value)


# --- sessions and users ---------------------------------------------------------------------------


def list_sessions(
    conn: Connection,
    project_id: int,
    w: Window,
    *,
    sort: str = "last_seen",
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Conversations (traces sharing a session id) with their totals, most recent first."""
    t = traces_t.c
    cost = func.sum(t.total_cost_usd)
    tokens = func.sum(t.total_tokens)
    columns = {
        "last_seen": func.max(t.start_time_unix_nano),
        "first_seen": func.min(t.start_time_unix_nano),
        "traces": func.count(),
        "cost": func.coalesce(cost, 0),
        "tokens": func.coalesce(tokens, 0),
    }
    order = columns[sort if sort in columns else "last_seen"]
    query = (
        select(
            t.session_id,
            func.min(t.start_time_unix_nano).label("first_seen"),
            func.max(t.end_time_unix_nano).label("last_seen"),
            func.count().label("traces"),
            func.sum(t.llm_call_count).label("llm_calls"),
            func.sum(t.error_count).label("errors"),
            func.sum(t.input_tokens).label("input_tokens"),
            func.sum(t.output_tokens).label("output_tokens"),
            tokens.label("total_tokens"),
            cost.label("total_cost_usd"),
            func.max(t.user_id).label("user_id"),
            func.count(func.distinct(t.user_id)).label("users"),
        )
        .where(*_trace_window(project_id, w), t.session_id.is_not(None))
        .group_by(t.session_id)
        .order_by(order.desc(), t.session_id)
        .limit(limit)
        .offset(offset)
    )
    return [_aggregate(row, "session_id") for row in conn.execute(query)]


def list_users(
    conn: Connection,
    project_id: int,
    w: Window,
    *,
    sort: str = "cost",
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """End users (traces sharing a user id) with cost and volume."""
    t = traces_t.c
    cost = func.sum(t.total_cost_usd)
    tokens = func.sum(t.total_tokens)
    columns = {
        "cost": func.coalesce(cost, 0),
        "traces": func.count(),
        "llm_calls": func.sum(t.llm_call_count),
        "tokens": func.coalesce(tokens, 0),
        "last_seen": func.max(t.start_time_unix_nano),
        "errors": func.sum(t.error_count),
    }
    order = columns[sort if sort in columns else "cost"]
    query = (
        select(
            t.user_id,
            func.min(t.start_time_unix_nano).label("first_seen"),
            func.max(t.end_time_unix_nano).label("last_seen"),
            func.count().label("traces"),
            func.count(func.distinct(t.session_id)).label("sessions"),
            func.sum(t.llm_call_count).label("llm_calls"),
            func.sum(t.error_count).label("errors"),
            func.sum(t.input_tokens).label("input_tokens"),
            func.sum(t.output_tokens).label("output_tokens"),
            tokens.label("total_tokens"),
            cost.label("total_cost_usd"),
        )
        .where(*_trace_window(project_id, w), t.user_id.is_not(None))
        .group_by(t.user_id)
        .order_by(order.desc(), t.user_id)
        .limit(limit)
        .offset(offset)
    )
    return [_aggregate(row, "user_id") for row in conn.execute(query)]


def _aggregate(row: Any, key: str) -> dict[str, Any]:
    item = dict(row._mapping)
    for name in ("traces", "llm_calls", "errors", "input_tokens", "output_tokens", "total_tokens"):
        item[name] = int(item.get(name) or 0)
    for name in ("users", "sessions"):
        if name in item:
            item[name] = int(item[name] or 0)
    item["total_cost_usd"] = _money(item["total_cost_usd"])
    item["id"] = item[key]
    return item


def trace_previews(
    conn: Connection, project_id: int, trace_rows: Sequence[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """For each trace: its input and output messages, for conversation views.

    The root span's own input/output wins (OpenInference agents record it there); otherwise the
    first prompt and the last completion of the trace's spans.
    """
    if not trace_rows:
        return {}
    lo = min(int(r["start_time_unix_nano"]) for r in trace_rows)
    hi = max(int(r["end_time_unix_nano"]) for r in trace_rows)
    s = spans.c
    rows = conn.execute(
        select(s.trace_id, s.span_id, s.parent_span_id, s.prompt, s.completion)
        .where(
            s.project_id == project_id,
            s.trace_id.in_([r["trace_id"] for r in trace_rows]),
            s.start_time_unix_nano >= lo,
            s.start_time_unix_nano <= hi,
            (s.prompt.is_not(None)) | (s.completion.is_not(None)),
        )
        .order_by(s.trace_id, s.start_time_unix_nano, s.span_id)
    ).all()
    out: dict[str, dict[str, Any]] = {}
    roots = {r["trace_id"]: r.get("root_span_id") for r in trace_rows}
    for row in rows:
        entry = out.setdefault(row.trace_id, {"input": None, "output": None, "root": False})
        prompt = orjson.loads(row.prompt) if row.prompt else None
        completion = orjson.loads(row.completion) if row.completion else None
        is_root = row.span_id == roots.get(row.trace_id) or row.parent_span_id is None
        if is_root and (prompt or completion):
            entry.update(input=prompt or entry["input"], output=completion or entry["output"])
            entry["root"] = True
            continue
        if entry["root"]:
            continue
        if prompt and entry["input"] is None:
            entry["input"] = prompt
        if completion:
            entry["output"] = completion
    for entry in out.values():
        entry.pop("root", None)
    return out


# --- models -------------------------------------------------------------------------------------


def model_usage(conn: Connection, project_id: int, w: Window) -> list[dict[str, Any]]:
    """LLM usage per (provider, model) from the rollups, with latency percentiles."""
    r = rollups_1m.c
    cond = _rollup_window(rollups_1m, project_id, w)
    rows = conn.execute(
        select(
            r.provider,
            r.model,
            func.sum(r.requests).label("requests"),
            func.sum(r.errors).label("errors"),
            func.sum(r.input_tokens).label("input_tokens"),
            func.sum(r.output_tokens).label("output_tokens"),
            func.sum(r.cache_read_tokens).label("cache_read_tokens"),
            func.sum(r.cache_write_tokens).label("cache_write_tokens"),
            func.sum(r.reasoning_tokens).label("reasoning_tokens"),
            func.sum(r.cost_usd).label("cost_usd"),
            func.sum(r.duration_ms_sum).label("duration_ms_sum"),
            func.min(r.bucket_start_unix_s).label("first_seen_s"),
            func.max(r.bucket_start_unix_s).label("last_seen_s"),
        )
        .where(*cond)
        .group_by(r.provider, r.model)
    ).all()
    lat = rollups_1m_latency.c
    hists: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for provider, model, index, count in conn.execute(
        select(lat.provider, lat.model, lat.bucket_index, func.sum(lat.count))
        .where(*_rollup_window(rollups_1m_latency, project_id, w))
        .group_by(lat.provider, lat.model, lat.bucket_index)
    ):
        hists.setdefault((provider, model), []).append((int(index), int(count)))
    out = []
    for row in rows:
        requests = int(row.requests or 0)
        pct = histogram.percentiles(hists.get((row.provider, row.model), []), (0.5, 0.95))
        item: dict[str, Any] = {
            "provider": row.provider,
            "model": row.model,
            "requests": requests,
            "errors": int(row.errors or 0),
            "error_rate": int(row.errors or 0) / requests if requests else 0.0,
            "input_tokens": int(row.input_tokens or 0),
            "output_tokens": int(row.output_tokens or 0),
            "cache_read_tokens": int(row.cache_read_tokens or 0),
            "cache_write_tokens": int(row.cache_write_tokens or 0),
            "reasoning_tokens": int(row.reasoning_tokens or 0),
            "cost_usd": _money(row.cost_usd),
            "avg_latency_ms": float(row.duration_ms_sum or 0) / requests if requests else None,
            "p50_ms": pct[0.5],
            "p95_ms": pct[0.95],
            "first_seen_s": int(row.first_seen_s),
            "last_seen_s": int(row.last_seen_s),
        }
        item["total_tokens"] = item["input_tokens"] + item["output_tokens"]
        out.append(item)
    out.sort(key=lambda i: (-i["cost_usd"], -i["requests"], i["provider"], i["model"]))
    return out


def _rollup_window(table: Any, project_id: int, w: Window) -> list[ColumnElement[bool]]:
    c = table.c
    cond: list[ColumnElement[bool]] = [c.project_id == project_id, c.model != ""]
    if w.start_time is not None:
        cond.append(c.bucket_start_unix_s >= w.start_time // 1_000_000_000)
    if w.end_time is not None:
        cond.append(c.bucket_start_unix_s < -(-w.end_time // 1_000_000_000))
    if w.environment:
        cond.append(c.environment == w.environment)
    if w.service:
        cond.append(c.service_name == w.service)
    return cond


# --- UI sessions ----------------------------------------------------------------------------------


def key_with_hash(conn: Connection, key_id: int) -> tuple[ApiKey, str] | None:
    """A key and its stored hash (UI session cookies are signed over the hash)."""
    digest = conn.execute(select(api_keys.c.key_hash).where(api_keys.c.key_id == key_id)).scalar()
    if digest is None:
        return None
    try:
        key = admin.get_key(conn, key_id)
    except admin.NotFound:
        return None
    return key, str(digest)


def audit_seen(
    conn: Connection, project_id: int, action: str, object_id: str, since_unix_s: int
) -> bool:
    """Whether ``action`` on ``object_id`` was recorded since the given time.

    UI sign-outs and consumed one-time login links are kept in the audit log, so they hold
    across restarts and across every server process.
    """
    since = datetime.fromtimestamp(max(since_unix_s - 60, 0), tz=UTC)
    a = audit_log.c
    found = conn.execute(
        select(a.audit_id)
        .where(
            and_(
                a.project_id == project_id,
                a.at >= since,
                a.action == action,
                a.object_id == object_id,
                a.outcome == "ok",
            )
        )
        .limit(1)
    ).first()
    return found is not None
