"""Read queries behind the API and the UI. Every filter is a bound parameter, never SQL text."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Double,
    Integer,
    Table,
    Text,
    and_,
    case,
    cast,
    exists,
    func,
    literal,
    literal_column,
    or_,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import Connection

from observatory.store import cube, histogram
from observatory.store import logs as log_store
from observatory.store.schema import (
    ROLLUP_DIMENSIONS,
    ROLLUP_SUMS,
    rollups_1h,
    rollups_1h_latency,
    rollups_1m,
    rollups_1m_latency,
    spans,
    traces,
)

QUANTILES = histogram.QUANTILES
BUCKET_SECONDS = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "1d": 86400}
GROUP_BY_ROLLUP = {
    "model": "model",
    "provider": "provider",
    "service": "service_name",
    "operation": "operation",
    "environment": "environment",
}
GROUP_BY_RAW = {"user": "user_id", "session": "session_id"}
TRACE_SORTS = {
    "start_time": traces.c.start_time_unix_nano,
    "duration": traces.c.duration_ms,
    "cost": func.coalesce(traces.c.total_cost_usd, 0),
    "tokens": traces.c.total_tokens,
    "spans": traces.c.span_count,
}
SPAN_SORTS = {
    "start_time": spans.c.start_time_unix_nano,
    "duration": spans.c.duration_ms,
    "cost": func.coalesce(spans.c.total_cost_usd, 0),
    "tokens": func.coalesce(spans.c.total_tokens, 0),
}


class BadCursor(ValueError):
    """A pagination cursor that this server did not issue."""


@dataclass
class Filters:
    """Filters shared by the trace list, span search and analytics. Times in unix nanoseconds."""

    start_time: int | None = None
    end_time: int | None = None
    service: str | None = None
    provider: str | None = None
    model: str | None = None
    operation: str | None = None
    status: str | None = None  # "ok" or "error"
    user_id: str | None = None
    session_id: str | None = None
    environment: str | None = None
    min_cost: Decimal | None = None
    max_cost: Decimal | None = None
    min_duration_ms: float | None = None
    max_duration_ms: float | None = None
    name: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


def _encode_cursor(values: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(
        orjson.dumps([str(v) if isinstance(v, Decimal) else v for v in values])
    ).decode()


def _decode_cursor(cursor: str) -> list[Any]:
    try:
        values = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise BadCursor("cursor is not valid") from exc
    if not isinstance(values, list) or len(values) != 2:
        raise BadCursor("cursor is not valid")
    return values


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def _money(value: Any) -> str | None:
    """Money leaves the API as a decimal string so no precision is lost in JSON: fixed-point,
    without trailing zeros ("0.1476829500" → "0.14768295", "100.0000000000" → "100")."""
    if value is None:
        return None
    if isinstance(value, Decimal):  # the common case, a few thousand times per series: cheaper
        text = str(value)
        if "E" not in text:
            if "." in text:
                text = text.rstrip("0").rstrip(".")
            return text if text not in ("", "-0") else "0"
    amount = Decimal(value)
    return format(amount.normalize(), "f") if amount != 0 else "0"


# --- traces -------------------------------------------------------------------------------------


def _trace_conditions(project_id: int, f: Filters) -> list[ColumnElement[bool]]:
    t = traces.c
    cond: list[ColumnElement[bool]] = [t.project_id == project_id]
    if f.start_time is not None:
        cond.append(t.start_time_unix_nano >= f.start_time)
    if f.end_time is not None:
        cond.append(t.start_time_unix_nano < f.end_time)
    if f.service:
        cond.append(t.service_name == f.service)
    if f.environment:
        cond.append(t.environment == f.environment)
    if f.user_id:
        cond.append(t.user_id == f.user_id)
    if f.session_id:
        cond.append(t.session_id == f.session_id)
    if f.status == "error":
        cond.append(t.error_count > 0)
    elif f.status == "ok":
        cond.append(t.error_count == 0)
    if f.min_cost is not None:
        cond.append(t.total_cost_usd >= f.min_cost)
    if f.max_cost is not None:
        cond.append(t.total_cost_usd <= f.max_cost)
    if f.min_duration_ms is not None:
        cond.append(t.duration_ms >= f.min_duration_ms)
    if f.max_duration_ms is not None:
        cond.append(t.duration_ms <= f.max_duration_ms)
    if f.name:
        cond.append(t.root_span_name.like(_like(f.name), escape="\\"))
    span_cond = []
    if f.provider:
        span_cond.append(spans.c.provider == f.provider)
    if f.model:
        span_cond.append(or_(spans.c.request_model == f.model, spans.c.response_model == f.model))
    if f.operation:
        span_cond.append(spans.c.operation == f.operation)
    if span_cond:
        cond.append(
            exists().where(
                spans.c.project_id == t.project_id,
                spans.c.trace_id == t.trace_id,
                spans.c.start_time_unix_nano >= t.start_time_unix_nano,
                spans.c.start_time_unix_nano <= t.end_time_unix_nano,
                *span_cond,
            )
        )
    return cond


def _trace_summary(row: Any) -> dict[str, Any]:
    return {
        "trace_id": row.trace_id,
        "root_span_id": row.root_span_id,
        "name": row.root_span_name,
        "start_time_unix_nano": row.start_time_unix_nano,
        "end_time_unix_nano": row.end_time_unix_nano,
        "duration_ms": row.duration_ms,
        "span_count": row.span_count,
        "llm_call_count": row.llm_call_count,
        "error_count": row.error_count,
        "error": row.error_count > 0,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "total_tokens": row.total_tokens,
        "total_cost_usd": _money(row.total_cost_usd),
        "service_name": row.service_name,
        "environment": row.environment,
        "user_id": row.user_id,
        "session_id": row.session_id,
    }


def list_traces(
    conn: Connection,
    project_id: int,
    f: Filters,
    *,
    sort: str = "start_time",
    descending: bool = True,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """One row per trace, newest first by default, with keyset pagination."""
    sort_col = TRACE_SORTS[sort]
    cond = _trace_conditions(project_id, f)
    if cursor:
        value, trace_id = _decode_cursor(cursor)
        key = tuple_(sort_col, traces.c.trace_id)
        if not isinstance(trace_id, str):
            raise BadCursor("cursor is not valid")
        bound = tuple_(_cursor_value(sort, value), trace_id)
        cond.append(key < bound if descending else key > bound)
    order = (
        (sort_col.desc(), traces.c.trace_id.desc())
        if descending
        else (sort_col.asc(), traces.c.trace_id.asc())
    )
    rows = conn.execute(
        select(traces, sort_col.label("_sort")).where(and_(*cond)).order_by(*order).limit(limit + 1)
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [_trace_summary(r) for r in rows]
    models = _models_for(conn, project_id, rows)
    for item in items:
        item["models"] = models.get(item["trace_id"], [])
    next_cursor = _encode_cursor([rows[-1]._sort, rows[-1].trace_id]) if more and rows else None
    return Page(items, next_cursor)


def _cursor_value(sort: str, value: Any) -> Any:
    from sqlalchemy import bindparam

    if sort == "cost":
        try:
            return bindparam(
                "cursor_value", Decimal(str(value)), type_=traces.c.total_cost_usd.type
            )
        except ArithmeticError as exc:
            raise BadCursor("cursor is not valid") from exc
    if not isinstance(value, int | float):
        raise BadCursor("cursor is not valid")
    return bindparam("cursor_value", value)


def _models_for(conn: Connection, project_id: int, rows: Sequence[Any]) -> dict[str, list[str]]:
    if not rows:
        return {}
    lo = min(r.start_time_unix_nano for r in rows)
    hi = max(r.end_time_unix_nano for r in rows)
    model = func.coalesce(spans.c.response_model, spans.c.request_model)
    query = (
        select(spans.c.trace_id, model.label("model"))
        .where(
            spans.c.project_id == project_id,
            spans.c.trace_id.in_([r.trace_id for r in rows]),
            spans.c.start_time_unix_nano >= lo,
            spans.c.start_time_unix_nano <= hi,
            model.is_not(None),
        )
        .distinct()
    )
    out: dict[str, list[str]] = {}
    for trace_id, name in conn.execute(query):
        out.setdefault(trace_id, []).append(name)
    for names in out.values():
        names.sort()
    return out


def get_trace(conn: Connection, project_id: int, trace_id: str) -> dict[str, Any] | None:
    """The trace summary, every span as a tree (children ordered by start time) and the trace's
    OTLP log records; spans whose prompt/completion came as GenAI log events get them here."""
    summary = conn.execute(
        select(traces).where(traces.c.project_id == project_id, traces.c.trace_id == trace_id)
    ).first()
    if summary is None:
        return None
    rows = conn.execute(
        select(spans)
        .where(
            spans.c.project_id == project_id,
            spans.c.trace_id == trace_id,
            # Bounds from the summary let PostgreSQL prune partitions.
            spans.c.start_time_unix_nano >= summary.start_time_unix_nano,
            spans.c.start_time_unix_nano <= summary.end_time_unix_nano,
        )
        .order_by(spans.c.start_time_unix_nano, spans.c.span_id)
    ).all()
    nodes = [span_dict(r) for r in rows]
    by_id = {n["span_id"]: n for n in nodes}
    roots = []
    for node in nodes:
        node["children"] = []
    for node in nodes:
        parent = by_id.get(node["parent_span_id"]) if node["parent_span_id"] else None
        if parent is not None and parent is not node:
            parent["children"].append(node)
        else:
            roots.append(node)
    _set_depth(roots, 0)
    logs = log_store.attach_to_trace(conn, project_id, trace_id, nodes)
    result = _trace_summary(summary)
    result["models"] = sorted(
        {
            n["response_model"] or n["request_model"]
            for n in nodes
            if n["response_model"] or n["request_model"]
        }
    )
    return {"trace": result, "spans": roots, "logs": logs}


def _set_depth(nodes: list[dict[str, Any]], depth: int) -> None:
    stack = [(n, depth) for n in nodes]
    while stack:
        node, d = stack.pop()
        node["depth"] = d
        stack.extend((c, d + 1) for c in node["children"])


def _loads(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


def span_dict(row: Any) -> dict[str, Any]:
    """A stored span with every canonical field, JSON columns decoded."""
    return {
        "trace_id": row.trace_id,
        "span_id": row.span_id,
        "parent_span_id": row.parent_span_id,
        "name": row.name,
        "kind": row.kind,
        "start_time_unix_nano": row.start_time_unix_nano,
        "end_time_unix_nano": row.end_time_unix_nano,
        "duration_ms": row.duration_ms,
        "status_code": row.status_code,
        "status_message": row.status_message,
        "error": row.status_code == 2,
        "service_name": row.service_name,
        "environment": row.environment,
        "scope_name": row.scope_name,
        "provider": row.provider,
        "operation": row.operation,
        "request_model": row.request_model,
        "response_model": row.response_model,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cache_read_tokens": row.cache_read_tokens,
        "cache_write_tokens": row.cache_write_tokens,
        "reasoning_tokens": row.reasoning_tokens,
        "total_tokens": row.total_tokens,
        "input_cost_usd": _money(row.input_cost_usd),
        "output_cost_usd": _money(row.output_cost_usd),
        "total_cost_usd": _money(row.total_cost_usd),
        "time_to_first_token_ms": row.time_to_first_token_ms,
        "finish_reason": row.finish_reason,
        "session_id": row.session_id,
        "user_id": row.user_id,
        "prompt": _loads(row.prompt),
        "completion": _loads(row.completion),
        "attributes": _loads(row.attributes),
        "resource_attributes": _loads(row.resource_attributes),
        "events": _loads(row.events),
        "links": _loads(row.links),
    }


# --- spans --------------------------------------------------------------------------------------


def _span_conditions(conn: Connection, project_id: int, f: Filters) -> list[ColumnElement[bool]]:
    s = spans.c
    cond: list[ColumnElement[bool]] = [s.project_id == project_id]
    if f.start_time is not None:
        cond.append(s.start_time_unix_nano >= f.start_time)
    if f.end_time is not None:
        cond.append(s.start_time_unix_nano < f.end_time)
    for value, column in (
        (f.service, s.service_name),
        (f.provider, s.provider),
        (f.operation, s.operation),
        (f.user_id, s.user_id),
        (f.session_id, s.session_id),
        (f.environment, s.environment),
    ):
        if value:
            cond.append(column == value)
    if f.model:
        cond.append(or_(s.request_model == f.model, s.response_model == f.model))
    if f.status == "error":
        cond.append(s.status_code == 2)
    elif f.status == "ok":
        cond.append(s.status_code != 2)
    if f.min_cost is not None:
        cond.append(s.total_cost_usd >= f.min_cost)
    if f.max_cost is not None:
        cond.append(s.total_cost_usd <= f.max_cost)
    if f.min_duration_ms is not None:
        cond.append(s.duration_ms >= f.min_duration_ms)
    if f.max_duration_ms is not None:
        cond.append(s.duration_ms <= f.max_duration_ms)
    if f.name:
        cond.append(s.name.like(_like(f.name), escape="\\"))
    for key, value in f.attributes.items():
        cond.append(_attribute_equals(conn, key, value))
    return cond


def _attribute_equals(conn: Connection, key: str, value: str) -> ColumnElement[bool]:
    if conn.dialect.name == "postgresql":
        as_json = cast(spans.c.attributes, JSONB)
        return func.jsonb_extract_path_text(as_json, key) == value
    path = '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return func.json_extract(spans.c.attributes, path) == value


def search_spans(
    conn: Connection,
    project_id: int,
    f: Filters,
    *,
    sort: str = "start_time",
    descending: bool = True,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    sort_col = SPAN_SORTS[sort]
    cond = _span_conditions(conn, project_id, f)
    if cursor:
        value, rowid = _decode_cursor(cursor)
        if not isinstance(value, int | float | str) or not isinstance(rowid, int):
            raise BadCursor("cursor is not valid")
        if sort == "cost":
            try:
                value = Decimal(str(value))
            except ArithmeticError as exc:
                raise BadCursor("cursor is not valid") from exc
        key = tuple_(sort_col, spans.c.span_rowid)
        cond.append(key < tuple_(value, rowid) if descending else key > tuple_(value, rowid))
    order = (
        (sort_col.desc(), spans.c.span_rowid.desc())
        if descending
        else (sort_col.asc(), spans.c.span_rowid.asc())
    )
    rows = conn.execute(
        select(spans, sort_col.label("_sort")).where(and_(*cond)).order_by(*order).limit(limit + 1)
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = _encode_cursor([rows[-1]._sort, rows[-1].span_rowid]) if more and rows else None
    return Page([span_dict(r) for r in rows], next_cursor)


# --- analytics ----------------------------------------------------------------------------------


def _zero_totals() -> dict[str, Any]:
    return {
        "requests": 0,
        "errors": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": Decimal(0),
        "duration_ms_sum": 0.0,
    }


Histogram = int  # packed (store/histogram.py)


def _add_histogram(hists: dict[tuple[int, Any], Histogram], key: Any, packed: int) -> None:
    hists[key] = hists.get(key, 0) + packed


def _finish(acc: dict[str, Any], hist: Histogram) -> dict[str, Any]:
    """The API's aggregate item from summed totals and a latency histogram."""
    return _item([acc[name] for name in _SUM_NAMES], histogram.packed_percentiles(hist, QUANTILES))


def _item(sums: Sequence[Any], percentiles: Sequence[float | None]) -> dict[str, Any]:
    """The API's aggregate item from the sums (in ROLLUP_SUMS order) and the latency
    percentiles (histogram.PERCENTILE_NAMES)."""
    requests, errors, input_tokens, output_tokens, cache_read, cache_write, reasoning = sums[:7]
    cost_usd, duration_ms_sum = sums[7:]
    p50, p90, p95, p99 = percentiles
    return {
        "requests": requests,
        "errors": errors,
        "error_rate": (errors / requests) if requests else 0.0,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
        "reasoning_tokens": reasoning,
        "total_tokens": input_tokens + output_tokens,
        "cost_usd": _money(cost_usd),
        "avg_latency_ms": (duration_ms_sum / requests) if requests else None,
        "latency_ms": {"p50": p50, "p90": p90, "p95": p95, "p99": p99},
    }


def _dimension_filters(f: Filters) -> dict[str, str]:
    """The filters on rollup dimensions, by column."""
    pairs = (
        ("service_name", f.service),
        ("provider", f.provider),
        ("model", f.model),
        ("operation", f.operation),
        ("environment", f.environment),
    )
    return {column: value for column, value in pairs if value}


def _rollup_conditions(
    table: Any, project_id: int, f: Filters, llm_only: bool, lo_s: int | None, hi_s: int | None
) -> list[ColumnElement[bool]]:
    c = table.c
    cond: list[ColumnElement[bool]] = [c.project_id == project_id]
    if lo_s is not None:
        cond.append(c.bucket_start_unix_s >= lo_s)
    if hi_s is not None:
        cond.append(c.bucket_start_unix_s < hi_s)
    for column, value in _dimension_filters(f).items():
        cond.append(getattr(c, column) == value)
    if llm_only:
        cond.append(c.model != "")
    return cond


HOUR = 3600
# Below this range the per-minute rollups are read directly.
HOURLY_FROM_SECONDS = 6 * HOUR


def rollup_segments(
    f: Filters, step: int | None
) -> list[tuple[Table, Table, int | None, int | None]]:
    """Which rollup tables cover which part of the range ``[start, end)``, in unix seconds.

    Whole hours come from the hourly rollups (written in the same transaction as the per-minute
    ones, so each hourly row is exactly the sum of its minutes); the partial hours at the edges
    from the per-minute rollups. Buckets finer than an hour read minutes only.
    """
    lo = f.start_time // 1_000_000_000 if f.start_time is not None else None
    hi = -(-f.end_time // 1_000_000_000) if f.end_time is not None else None
    minutes = (rollups_1m, rollups_1m_latency)
    hours = (rollups_1h, rollups_1h_latency)
    if step is not None and step < HOUR:
        return [(*minutes, lo, hi)]
    if lo is not None and hi is not None and hi - lo < HOURLY_FROM_SECONDS:
        return [(*minutes, lo, hi)]
    h_lo = -(-lo // HOUR) * HOUR if lo is not None else None
    h_hi = (hi // HOUR) * HOUR if hi is not None else None
    if h_lo is not None and h_hi is not None and h_hi <= h_lo:
        return [(*minutes, lo, hi)]
    segments: list[tuple[Table, Table, int | None, int | None]] = []
    if lo is not None and h_lo is not None and lo < h_lo:
        segments.append((*minutes, lo, h_lo))
    segments.append((*hours, h_lo, h_hi))
    if hi is not None and h_hi is not None and h_hi < hi:
        segments.append((*minutes, h_hi, hi))
    return segments


def needs_raw(group_by: str | None, f: Filters) -> bool:
    """User and session breakdowns (and filters) are not in the rollups; they read raw spans."""
    return group_by in GROUP_BY_RAW or bool(
        f.user_id
        or f.session_id
        or f.status
        or f.name
        or f.attributes
        or f.min_cost is not None
        or f.max_cost is not None
        or f.min_duration_ms is not None
        or f.max_duration_ms is not None
    )


def analytics(
    conn: Connection,
    project_id: int,
    f: Filters,
    *,
    group_by: str | None = None,
    bucket: str | None = None,
    llm_only: bool = True,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Aggregates per (time bucket, group). ``bucket=None`` means one bucket for the whole range."""
    if needs_raw(group_by, f):
        return _analytics_raw(
            conn, project_id, f, group_by=group_by, bucket=bucket, llm_only=llm_only, limit=limit
        )
    return _analytics_rollups(
        conn, project_id, f, group_by=group_by, bucket=bucket, llm_only=llm_only, limit=limit
    )


def _bucket_expr(column: Any, step: int | None) -> Any:
    if step is None:
        return literal_column("0")
    # Integer division on both databases (SQLAlchemy's "/" would render true division).
    return column.op("/")(step).op("*")(step)


_SUM_NAMES = ROLLUP_SUMS  # the rollup tables' (and the cube's) sum columns, in order


def _analytics_rollups(
    conn: Connection,
    project_id: int,
    f: Filters,
    *,
    group_by: str | None,
    bucket: str | None,
    llm_only: bool,
    limit: int,
) -> list[dict[str, Any]]:
    step = BUCKET_SECONDS[bucket] if bucket else None
    group_column = GROUP_BY_ROLLUP[group_by] if group_by else None
    accs: dict[tuple[int, Any], dict[str, Any]] = {}
    hists: dict[tuple[int, Any], Histogram] = {}
    out: list[dict[str, Any]] = []  # finished items (hourly series points from the cube)
    for sums_table, latency_table, lo, hi in rollup_segments(f, step):
        q = _RollupQuery(project_id, f, group_column, llm_only, step, lo, hi)
        hours = (
            _from_cube(conn, q, accs, hists, out) if latency_table is rollups_1h_latency else None
        )
        if hours is None or hours:
            _from_sums(conn, sums_table, q, hours, accs)
            _from_latency_rows(conn, latency_table, q, hours, hists)
    for key, acc in accs.items():
        item = _finish(acc, hists.get(key, 0))
        item["bucket_start_unix_s"] = key[0] if step else None
        item["group"] = key[1] if group_by else None
        out.append(item)
    return _order_and_limit(out, bucket, limit)


@dataclass(frozen=True)
class _RollupQuery:
    """One segment of a dashboard query over the rollups (see rollup_segments)."""

    project_id: int
    f: Filters
    group_column: str | None
    llm_only: bool
    step: int | None
    lo: int | None
    hi: int | None

    def key(self, bucket_start: int, group: Any) -> tuple[int, Any]:
        return (bucket_start // self.step * self.step if self.step else 0, group)

    def grouping(self, table: Table) -> tuple[Any, Any, list[Any]]:
        """(bucket, group, GROUP BY keys) expressions over a rollup table."""
        b = _bucket_expr(table.c.bucket_start_unix_s, self.step).label("b")
        column = getattr(table.c, self.group_column) if self.group_column else literal_column("''")
        g = column.label("g")
        keys = [k for k, used in ((b, self.step), (g, self.group_column)) if used is not None]
        return b, g, keys

    def conditions(self, table: Table, hours: set[int] | None) -> list[ColumnElement[bool]]:
        cond = _rollup_conditions(table, self.project_id, self.f, self.llm_only, self.lo, self.hi)
        if hours is not None:
            cond.append(table.c.bucket_start_unix_s.in_(sorted(hours)))
        return cond


def _add_sums(acc: dict[str, Any], sums: Sequence[Any]) -> None:
    """Add rollup sums (in _SUM_NAMES order) to a total. PostgreSQL sums BIGINT as NUMERIC:
    the counts come back to int."""
    for name, value in zip(_SUM_NAMES[:7], sums, strict=False):
        acc[name] += int(value or 0)
    acc["cost_usd"] += Decimal(sums[7] or 0)
    acc["duration_ms_sum"] += float(sums[8] or 0)


# A range with more hours than this missing from the cube (not built yet) reads the rows instead.
CUBE_MAX_STALE_HOURS = 48


def _from_cube(
    conn: Connection,
    q: _RollupQuery,
    accs: dict[tuple[int, Any], dict[str, Any]],
    hists: dict[tuple[int, Any], Histogram],
    out: list[dict[str, Any]],
) -> set[int] | None:
    """Add the sums and histograms of the hours the cube holds (or, for an hourly series, its
    finished points to ``out``); return the hours it does not hold (to read from the rollup
    rows), or None when the cube cannot answer this query."""
    filters = _dimension_filters(q.f)
    mask = cube.mask_of([*filters, *([q.group_column] if q.group_column else [])])
    if mask is None:
        return None
    hours = cube.validity(conn, q.project_id, q.lo, q.hi)
    if not hours.valid or len(hours.stale) > CUBE_MAX_STALE_HOURS:
        return None
    cells = cube.Cells(
        q.project_id, mask, filters, q.group_column, q.llm_only, q.lo, q.hi, frozenset(hours.skip)
    )
    if q.step == HOUR and q.llm_only:
        # An hourly series of LLM calls has one cell per point (llm = 1, one value per group):
        # its stored percentiles are the point's, no histogram need leave the database. The
        # other segments' points (edge hours, stale hours) are other hours.
        grouped = q.group_column is not None
        sums = len(_SUM_NAMES)
        for hour, group, *values in cells.points(conn):
            item = _item(values[:sums], values[sums:])
            item["bucket_start_unix_s"] = hour
            item["group"] = group if grouped else None
            out.append(item)
        return hours.stale
    step = q.step
    bucket = None if step is None else (lambda column: _bucket_expr(column, step))
    for b, g, *sums in cells.sums(conn, bucket):
        _add_sums(accs.setdefault((int(b), g), _zero_totals()), sums)
    for hour, g, first, counts in cells.histograms(conn):
        if counts:
            _add_histogram(hists, q.key(hour, g), histogram.from_stored(first, counts))
    return hours.stale


def _from_sums(
    conn: Connection,
    sums_table: Table,
    q: _RollupQuery,
    hours: set[int] | None,
    accs: dict[tuple[int, Any], dict[str, Any]],
) -> None:
    """Add the sums of the per-dimension rollup rows (of ``hours`` only, if given)."""
    b, g, keys = q.grouping(sums_table)
    rows = conn.execute(
        select(b, g, *[func.sum(getattr(sums_table.c, name)) for name in _SUM_NAMES])
        .where(*q.conditions(sums_table, hours))
        .group_by(*keys)
    ).all()
    for b_value, g_value, *sums in rows:
        if sums[0] is None:
            continue
        _add_sums(accs.setdefault((int(b_value), g_value), _zero_totals()), sums)


def _from_latency_rows(
    conn: Connection,
    latency_table: Table,
    q: _RollupQuery,
    hours: set[int] | None,
    hists: dict[tuple[int, Any], Histogram],
) -> None:
    """Add the histograms of the per-dimension latency rows (of ``hours`` only, if given)."""
    lat = latency_table.c
    b, g, keys = q.grouping(latency_table)
    for hb, hg, index, count in conn.execute(
        select(b, g, lat.bucket_index, func.sum(lat.count))
        .where(*q.conditions(latency_table, hours))
        .group_by(*keys, lat.bucket_index)
    ):
        key = (int(hb), hg)
        _add_histogram(hists, key, histogram.pack(index, int(count)))


def _order_and_limit(
    items: list[dict[str, Any]], bucket: str | None, limit: int
) -> list[dict[str, Any]]:
    if bucket:
        items.sort(key=lambda i: (i["bucket_start_unix_s"], str(i["group"])))
        return items
    items.sort(key=lambda i: (-Decimal(i["cost_usd"] or 0), -i["requests"], str(i["group"])))
    return items[:limit]


def _analytics_raw(
    conn: Connection,
    project_id: int,
    f: Filters,
    *,
    group_by: str | None,
    bucket: str | None,
    llm_only: bool,
    limit: int,
) -> list[dict[str, Any]]:
    step = BUCKET_SECONDS[bucket] if bucket else None
    s = spans.c
    # User and session usually sit on the root span; LLM spans inherit them from their trace.
    trace_level = group_by in GROUP_BY_RAW or bool(f.user_id or f.session_id)
    user_id, session_id = f.user_id, f.session_id
    f = Filters(**{**vars(f), "user_id": None, "session_id": None})
    cond = _span_conditions(conn, project_id, f)
    if user_id:
        cond.append(func.coalesce(s.user_id, traces.c.user_id) == user_id)
    if session_id:
        cond.append(func.coalesce(s.session_id, traces.c.session_id) == session_id)
    if llm_only:
        cond.append(func.coalesce(s.response_model, s.request_model).is_not(None))
    if group_by in GROUP_BY_RAW:
        column = GROUP_BY_RAW[group_by]
        group_col: Any = func.coalesce(getattr(s, column), getattr(traces.c, column))
    elif group_by == "model":
        group_col = func.coalesce(s.response_model, s.request_model, "")
    elif group_by:
        group_col = func.coalesce(getattr(s, GROUP_BY_ROLLUP[group_by]), "")
    else:
        group_col = literal_column("''")
    secs = s.start_time_unix_nano.op("/")(1_000_000_000)
    b = (_bucket_expr(secs, step) if step else literal_column("0")).label("b")
    query = select(
        b,
        group_col.label("g"),
        _latency_bucket(conn, s.duration_ms).label("i"),
        s.status_code,
        s.input_tokens,
        s.output_tokens,
        s.cache_read_tokens,
        s.cache_write_tokens,
        s.reasoning_tokens,
        s.total_cost_usd.label("cost_usd"),
        s.duration_ms,
    )
    if trace_level:
        query = query.join(
            traces, and_(traces.c.project_id == s.project_id, traces.c.trace_id == s.trace_id)
        )
    accs: dict[tuple[int, Any], dict[str, Any]] = {}
    hists: dict[tuple[int, Any], int] = {}
    for b_value, g_value, latency_counts, *sums in conn.execute(
        _raw_aggregate(query.where(*cond).subquery("matched"))
    ):
        key = (int(b_value), g_value)
        _add_sums(accs.setdefault(key, _zero_totals()), sums)
        hists[key] = _unpack_latency_counts(latency_counts)
    out = []
    for key, acc in accs.items():
        item = _finish(acc, hists[key])
        item["bucket_start_unix_s"] = key[0] if step else None
        item["group"] = key[1] if group_by else None
        out.append(item)
    return _order_and_limit(out, bucket, limit)


def _latency_bucket(conn: Connection, duration_ms: Any) -> Any:
    """``histogram.bucket_index(duration_ms)`` in SQL, equal to it for every float but NaN: the
    number of bucket lower bounds at most the duration, by comparisons only (no ln())."""
    bounds = histogram.lower_bounds()
    if conn.dialect.name == "postgresql":
        # width_bucket(operand, thresholds): how many of the sorted thresholds are <= operand.
        return func.width_bucket(duration_ms, literal(list(bounds), ARRAY(Double)))
    return _count_bounds_at_most(duration_ms, bounds, 0, len(bounds))


def _count_bounds_at_most(value: Any, bounds: Sequence[float], lo: int, hi: int) -> Any:
    """How many of ``bounds`` are <= ``value``, known to be in [lo, hi]: a binary search in
    nested CASEs (9 comparisons a row for 320 bounds), the bounds bound as exact doubles."""
    if lo == hi:
        return literal_column(str(lo), Integer)
    mid = (lo + hi + 1) // 2
    return case(
        (
            value < literal(bounds[mid - 1], Double),
            _count_bounds_at_most(value, bounds, lo, mid - 1),
        ),
        else_=_count_bounds_at_most(value, bounds, mid, hi),
    )


def _raw_aggregate(matched: Any) -> Any:
    """Totals per (bucket ``b``, group ``g``) of the matched spans (columns of _analytics_raw's
    row query), in _SUM_NAMES order after ``b``, ``g`` and the latency counts as text
    ``"index:count,…"``. One pass over the spans: per latency bucket first, then per group,
    so only one row per group leaves the database."""
    m = matched.c
    per_latency_bucket = (
        select(
            m.b,
            m.g,
            m.i,
            func.count().label("requests"),
            func.sum(case((m.status_code == 2, 1), else_=0)).label("errors"),
            # The token counts and cost_usd: summed as they are.
            *[func.sum(getattr(m, name)).label(name) for name in _SUM_NAMES[2:-1]],
            func.sum(m.duration_ms).label("duration_ms_sum"),
        )
        .group_by(m.b, m.g, m.i)
        .subquery("per_latency_bucket")
    )
    p = per_latency_bucket.c
    counts = cast(p.i, Text) + ":" + cast(p.requests, Text)
    return select(
        p.b,
        p.g,
        func.aggregate_strings(counts, ","),
        *[func.sum(getattr(p, name)) for name in _SUM_NAMES],
    ).group_by(p.b, p.g)


def _unpack_latency_counts(text: str) -> int:
    """A packed histogram from ``"index:count,…"``."""
    packed = 0
    for pair in text.split(","):
        index, _, count = pair.partition(":")
        packed += histogram.pack(int(index), int(count))
    return packed


def distinct_values(
    conn: Connection, project_id: int, dimension: str, start_time: int | None = None
) -> list[str]:
    """Values seen for a rollup dimension (filters in the UI)."""
    column = getattr(rollups_1m.c, GROUP_BY_ROLLUP[dimension])
    query = (
        select(column)
        .where(rollups_1m.c.project_id == project_id, column != "")
        .distinct()
        .order_by(column)
    )
    if start_time is not None:
        query = query.where(rollups_1m.c.bucket_start_unix_s >= start_time // 1_000_000_000)
    return [r[0] for r in conn.execute(query.limit(500))]


ROLLUP_DIMENSION_NAMES = tuple(GROUP_BY_ROLLUP)
assert set(GROUP_BY_ROLLUP.values()) == set(ROLLUP_DIMENSIONS)
