"""The span write path: one transaction per batch; rollups and trace summaries from the rows
actually inserted, so a retried batch is neither stored nor counted twice.

PostgreSQL: COPY into a session-temporary staging table, then one statement
``INSERT … SELECT … ON CONFLICT DO NOTHING RETURNING`` whose returned rows feed the rollup,
latency-histogram and trace-summary upserts (data-modifying CTEs, one round trip).
SQLite: one ``BEGIN IMMEDIATE`` transaction; existing keys are filtered out first, then rows,
rollups and trace summaries are written with executemany.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import orjson
import psycopg

from observatory.model import STATUS_ERROR, Span
from observatory.store.histogram import bucket_index, bucket_sql
from observatory.store.schema import ROLLUP_DIMENSIONS, ROLLUP_SUMS, SPAN_COLUMNS, USD_SCALE

Row = tuple[Any, ...]
_COL = {name: i for i, name in enumerate(SPAN_COLUMNS)}
_COST_COLUMNS = (_COL["input_cost_usd"], _COL["output_cost_usd"], _COL["total_cost_usd"])
_KEEP = len(SPAN_COLUMNS)  # index of the trailing "keep" flag of a row


def _text(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; keep the rest of the string.
    if value is None or "\x00" not in value:
        return value
    return value.replace("\x00", "\ufffd")


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str).decode()


def span_to_row(project_id: int, span: Span, keep: bool = True) -> Row:
    """A span as a tuple in ``SPAN_COLUMNS`` order plus a last element ``keep``: False for a
    span that sampling left out, which then only counts in the rollups."""
    usage = span.usage
    cost = span.cost
    return (
        project_id,
        span.trace_id,
        span.span_id,
        span.parent_span_id,
        _text(span.name) or "",
        span.kind,
        span.start_time_unix_nano,
        span.end_time_unix_nano,
        span.duration_ms,
        span.status_code,
        _text(span.status_message),
        _text(span.service_name),
        _text(span.environment),
        _text(span.scope_name),
        _text(span.provider),
        _text(span.operation),
        _text(span.request_model),
        _text(span.response_model),
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
        usage.total_tokens,
        cost.input_usd if cost else None,
        cost.output_usd if cost else None,
        cost.total_usd if cost else None,
        span.time_to_first_token_ms,
        _text(span.finish_reason),
        _text(span.session_id),
        _text(span.user_id),
        _json(span.prompt) if span.prompt is not None else None,
        _json(span.completion) if span.completion is not None else None,
        _json(span.attributes),
        _json(span.resource_attributes),
        _json(span.events),
        _json(span.links),
        keep,
    )


class SpanStore(Protocol):
    """A dedicated write connection owned by the writer thread."""

    def write(self, rows: Sequence[Row]) -> int:
        """Insert ``rows`` in one transaction; return how many were new."""

    def close(self) -> None: ...


# --- PostgreSQL ---------------------------------------------------------------------------------

_COLS = ", ".join(SPAN_COLUMNS)
_KEY = ", ".join(("project_id", "bucket_start_unix_s", *ROLLUP_DIMENSIONS))
_DIM_EXPR = (
    "coalesce(service_name, '')",
    "coalesce(provider, '')",
    "coalesce(response_model, request_model, '')",
    "coalesce(operation, '')",
    "coalesce(environment, '')",
)
# (table suffix, bucket width in seconds): per minute and per hour, from the same rows.
ROLLUP_GRAINS = (("1m", 60), ("1h", 3600))


def _rollup_ctes() -> str:
    """Data-modifying CTEs that add the counted rows to every rollup grain."""
    parts = []
    for suffix, seconds in ROLLUP_GRAINS:
        group = ", ".join(
            (
                "project_id",
                f"(start_time_unix_nano / {seconds * 1_000_000_000}) * {seconds}",
                *_DIM_EXPR,
            )
        )
        sums = f"rollups_{suffix}"
        latency = f"rollups_{suffix}_latency"
        update = ", ".join(f"{c} = {sums}.{c} + EXCLUDED.{c}" for c in ROLLUP_SUMS)
        parts.append(f"""), r{suffix} AS (
    INSERT INTO {sums} ({_KEY}, {", ".join(ROLLUP_SUMS)})
    SELECT {group},
           count(*), count(*) FILTER (WHERE status_code = {STATUS_ERROR}),
           coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
           coalesce(sum(cache_read_tokens), 0), coalesce(sum(cache_write_tokens), 0),
           coalesce(sum(reasoning_tokens), 0), coalesce(sum(total_cost_usd), 0),
           sum(duration_ms)
    FROM counted GROUP BY {group} ORDER BY {group}
    ON CONFLICT ({_KEY}) DO UPDATE SET {update}
), l{suffix} AS (
    INSERT INTO {latency} ({_KEY}, bucket_index, count)
    SELECT {group}, {bucket_sql()}, count(*)
    FROM counted GROUP BY {group}, {bucket_sql()} ORDER BY {group}, {bucket_sql()}
    ON CONFLICT ({_KEY}, bucket_index)
    DO UPDATE SET count = {latency}.count + EXCLUDED.count
""")
    return "".join(parts)


POSTGRES_INSERT = f"""
WITH ins AS (
    INSERT INTO spans ({_COLS})
    SELECT {_COLS} FROM _obs_staging WHERE _obs_keep
    ON CONFLICT DO NOTHING
    RETURNING project_id, trace_id, span_id, parent_span_id, name, start_time_unix_nano,
              end_time_unix_nano, duration_ms, status_code, service_name, environment, provider,
              operation, request_model, response_model, input_tokens, output_tokens,
              cache_read_tokens, cache_write_tokens, reasoning_tokens, total_tokens,
              total_cost_usd, session_id, user_id
), counted AS (
    -- Stored spans that are new, plus the spans sampling left out: rollups count both.
    SELECT project_id, start_time_unix_nano, duration_ms, status_code, service_name, environment,
           provider, operation, request_model, response_model, input_tokens, output_tokens,
           cache_read_tokens, cache_write_tokens, reasoning_tokens, total_cost_usd
    FROM ins
    UNION ALL
    SELECT project_id, start_time_unix_nano, duration_ms, status_code, service_name, environment,
           provider, operation, request_model, response_model, input_tokens, output_tokens,
           cache_read_tokens, cache_write_tokens, reasoning_tokens, total_cost_usd
    FROM _obs_staging WHERE NOT _obs_keep
{_rollup_ctes()}), t AS (
    INSERT INTO traces (project_id, trace_id, start_time_unix_nano, end_time_unix_nano, duration_ms,
                        root_span_id, root_span_name, span_count, llm_call_count, error_count,
                        input_tokens, output_tokens, total_tokens, total_cost_usd, service_name,
                        environment, user_id, session_id)
    SELECT project_id, trace_id, min(start_time_unix_nano), max(end_time_unix_nano),
           (max(end_time_unix_nano) - min(start_time_unix_nano)) / 1e6,
           max(span_id) FILTER (WHERE parent_span_id IS NULL),
           max(name) FILTER (WHERE parent_span_id IS NULL),
           count(*),
           count(*) FILTER (WHERE coalesce(response_model, request_model) IS NOT NULL),
           count(*) FILTER (WHERE status_code = {STATUS_ERROR}),
           coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
           coalesce(sum(total_tokens), 0), sum(total_cost_usd),
           coalesce(max(service_name) FILTER (WHERE parent_span_id IS NULL), max(service_name)),
           max(environment), max(user_id), max(session_id)
    FROM ins GROUP BY project_id, trace_id ORDER BY project_id, trace_id
    ON CONFLICT (project_id, trace_id) DO UPDATE SET
        start_time_unix_nano = least(traces.start_time_unix_nano, EXCLUDED.start_time_unix_nano),
        end_time_unix_nano = greatest(traces.end_time_unix_nano, EXCLUDED.end_time_unix_nano),
        duration_ms = (greatest(traces.end_time_unix_nano, EXCLUDED.end_time_unix_nano)
                       - least(traces.start_time_unix_nano, EXCLUDED.start_time_unix_nano)) / 1e6,
        root_span_id = coalesce(EXCLUDED.root_span_id, traces.root_span_id),
        root_span_name = coalesce(EXCLUDED.root_span_name, traces.root_span_name),
        span_count = traces.span_count + EXCLUDED.span_count,
        llm_call_count = traces.llm_call_count + EXCLUDED.llm_call_count,
        error_count = traces.error_count + EXCLUDED.error_count,
        input_tokens = traces.input_tokens + EXCLUDED.input_tokens,
        output_tokens = traces.output_tokens + EXCLUDED.output_tokens,
        total_tokens = traces.total_tokens + EXCLUDED.total_tokens,
        total_cost_usd = CASE WHEN traces.total_cost_usd IS NULL THEN EXCLUDED.total_cost_usd
                              WHEN EXCLUDED.total_cost_usd IS NULL THEN traces.total_cost_usd
                              ELSE traces.total_cost_usd + EXCLUDED.total_cost_usd END,
        service_name = CASE WHEN EXCLUDED.root_span_id IS NOT NULL
                            THEN coalesce(EXCLUDED.service_name, traces.service_name)
                            ELSE coalesce(traces.service_name, EXCLUDED.service_name) END,
        environment = coalesce(traces.environment, EXCLUDED.environment),
        user_id = coalesce(traces.user_id, EXCLUDED.user_id),
        session_id = coalesce(traces.session_id, EXCLUDED.session_id)
)
SELECT count(*) FROM ins
"""


class PostgresSpanStore:
    """COPY + one INSERT … ON CONFLICT statement per batch on a dedicated connection."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(
                self._dsn,
                autocommit=False,
                connect_timeout=5,
                application_name="llm-observatory-writer",
            )
            with conn.cursor() as cur:
                # The staging rows belong to one transaction only: a commit empties the table,
                # which costs less than a TRUNCATE per batch.
                cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS _obs_staging ON COMMIT DELETE ROWS AS "
                    f"SELECT {_COLS}, true AS _obs_keep FROM spans WITH NO DATA"
                )
            conn.commit()
            self._conn = conn
        return self._conn

    def write(self, rows: Sequence[Row]) -> int:
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                with cur.copy(f"COPY _obs_staging ({_COLS}, _obs_keep) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                cur.execute(POSTGRES_INSERT)
                result = cur.fetchone()
            conn.commit()
        except BaseException:
            self._discard_on_failure()
            raise
        return int(result[0]) if result else 0

    def _discard_on_failure(self) -> None:
        conn = self._conn
        if conn is None:
            return
        with contextlib.suppress(psycopg.Error):
            conn.rollback()
        if conn.broken or conn.closed:
            self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# --- SQLite -------------------------------------------------------------------------------------


class SqliteSpanStore:
    """The single writer of the embedded database."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=30000")

    def write(self, rows: Sequence[Row]) -> int:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            fresh = self._new_rows([r for r in rows if r[_KEEP]])
            counted = fresh + [r for r in rows if not r[_KEEP]]
            if fresh:
                placeholders = ", ".join("?" * len(SPAN_COLUMNS))
                conn.executemany(
                    f"INSERT INTO spans ({_COLS}) VALUES ({placeholders})",
                    [_sqlite_row(r) for r in fresh],
                )
                _sqlite_traces(conn, fresh)
            if counted:
                _sqlite_rollups(conn, counted)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return len(fresh)

    def _new_rows(self, rows: Sequence[Row]) -> list[Row]:
        by_project: dict[int, set[str]] = {}
        for row in rows:
            by_project.setdefault(row[0], set()).add(row[1])
        existing: set[tuple[int, str, str]] = set()
        for project_id, trace_ids in by_project.items():
            ids = sorted(trace_ids)
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ", ".join("?" * len(chunk))
                for trace_id, span_id in self._conn.execute(
                    "SELECT trace_id, span_id FROM spans "
                    f"WHERE project_id = ? AND trace_id IN ({marks})",
                    (project_id, *chunk),
                ):
                    existing.add((project_id, trace_id, span_id))
        fresh = []
        for row in rows:
            key = (row[0], row[1], row[2])
            if key not in existing:
                existing.add(key)
                fresh.append(row)
        return fresh

    def close(self) -> None:
        self._conn.close()


def _units(value: Decimal | None) -> int | None:
    return None if value is None else int((value * USD_SCALE).to_integral_value())


def _sqlite_row(row: Row) -> Row:
    out = list(row[:_KEEP])
    for i in _COST_COLUMNS:
        out[i] = _units(row[i])
    return tuple(out)


def rollup_key(row: Row, seconds: int = 60) -> tuple[Any, ...]:
    return (
        row[_COL["project_id"]],
        (row[_COL["start_time_unix_nano"]] // (seconds * 1_000_000_000)) * seconds,
        row[_COL["service_name"]] or "",
        row[_COL["provider"]] or "",
        row[_COL["response_model"]] or row[_COL["request_model"]] or "",
        row[_COL["operation"]] or "",
        row[_COL["environment"]] or "",
    )


def _sqlite_rollups(conn: sqlite3.Connection, rows: Sequence[Row]) -> None:
    for suffix, seconds in ROLLUP_GRAINS:
        _sqlite_rollup_grain(conn, rows, suffix, seconds)


def _sqlite_rollup_grain(
    conn: sqlite3.Connection, rows: Sequence[Row], suffix: str, seconds: int
) -> None:
    sums: dict[tuple[Any, ...], list[Any]] = {}
    latency: dict[tuple[Any, ...], int] = {}
    token_cols = [
        _COL[c]
        for c in (
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
        )
    ]
    for row in rows:
        key = rollup_key(row, seconds)
        acc = sums.setdefault(key, [0, 0, 0, 0, 0, 0, 0, 0, 0.0])
        acc[0] += 1
        acc[1] += row[_COL["status_code"]] == STATUS_ERROR
        for j, col in enumerate(token_cols):
            acc[2 + j] += row[col] or 0
        acc[7] += _units(row[_COL["total_cost_usd"]]) or 0
        acc[8] += row[_COL["duration_ms"]]
        lkey = (*key, bucket_index(row[_COL["duration_ms"]]))
        latency[lkey] = latency.get(lkey, 0) + 1
    key_cols = ", ".join(("project_id", "bucket_start_unix_s", *ROLLUP_DIMENSIONS))
    sum_cols = ", ".join(ROLLUP_SUMS)
    updates = ", ".join(f"{c} = {c} + excluded.{c}" for c in ROLLUP_SUMS)
    conn.executemany(
        f"INSERT INTO rollups_{suffix} ({key_cols}, {sum_cols}) VALUES ({', '.join('?' * 16)}) "
        f"ON CONFLICT ({key_cols}) DO UPDATE SET {updates}",
        [(*k, *v) for k, v in sorted(sums.items())],
    )
    conn.executemany(
        f"INSERT INTO rollups_{suffix}_latency ({key_cols}, bucket_index, count) "
        f"VALUES ({', '.join('?' * 9)}) "
        f"ON CONFLICT ({key_cols}, bucket_index) DO UPDATE SET count = count + excluded.count",
        [(*k, v) for k, v in sorted(latency.items())],
    )


def _sqlite_traces(conn: sqlite3.Connection, rows: Sequence[Row]) -> None:
    acc: dict[tuple[int, str], dict[str, Any]] = {}
    for row in rows:
        key = (row[_COL["project_id"]], row[_COL["trace_id"]])
        t = acc.get(key)
        is_root = row[_COL["parent_span_id"]] is None
        if t is None:
            t = acc[key] = {
                "start": row[_COL["start_time_unix_nano"]],
                "end": row[_COL["end_time_unix_nano"]],
                "root_id": None,
                "root_name": None,
                "spans": 0,
                "llm": 0,
                "errors": 0,
                "in": 0,
                "out": 0,
                "total": 0,
                "cost": None,
                "service": None,
                "env": None,
                "user": None,
                "session": None,
            }
        t["start"] = min(t["start"], row[_COL["start_time_unix_nano"]])
        t["end"] = max(t["end"], row[_COL["end_time_unix_nano"]])
        if is_root:
            t["root_id"] = row[_COL["span_id"]]
            t["root_name"] = row[_COL["name"]]
            t["service"] = row[_COL["service_name"]] or t["service"]
        t["spans"] += 1
        t["llm"] += bool(row[_COL["response_model"]] or row[_COL["request_model"]])
        t["errors"] += row[_COL["status_code"]] == STATUS_ERROR
        t["in"] += row[_COL["input_tokens"]] or 0
        t["out"] += row[_COL["output_tokens"]] or 0
        t["total"] += row[_COL["total_tokens"]] or 0
        cost = _units(row[_COL["total_cost_usd"]])
        if cost is not None:
            t["cost"] = (t["cost"] or 0) + cost
        for field, col in (
            ("service", "service_name"),
            ("env", "environment"),
            ("user", "user_id"),
            ("session", "session_id"),
        ):
            t[field] = t[field] or row[_COL[col]]
    conn.executemany(
        """
        INSERT INTO traces (project_id, trace_id, start_time_unix_nano, end_time_unix_nano,
            duration_ms, root_span_id, root_span_name, span_count, llm_call_count, error_count,
            input_tokens, output_tokens, total_tokens, total_cost_usd, service_name, environment,
            user_id, session_id)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (project_id, trace_id) DO UPDATE SET
            start_time_unix_nano = min(start_time_unix_nano, excluded.start_time_unix_nano),
            end_time_unix_nano = max(end_time_unix_nano, excluded.end_time_unix_nano),
            duration_ms = (max(end_time_unix_nano, excluded.end_time_unix_nano)
                           - min(start_time_unix_nano, excluded.start_time_unix_nano)) / 1e6,
            root_span_id = coalesce(excluded.root_span_id, root_span_id),
            root_span_name = coalesce(excluded.root_span_name, root_span_name),
            span_count = span_count + excluded.span_count,
            llm_call_count = llm_call_count + excluded.llm_call_count,
            error_count = error_count + excluded.error_count,
            input_tokens = input_tokens + excluded.input_tokens,
            output_tokens = output_tokens + excluded.output_tokens,
            total_tokens = total_tokens + excluded.total_tokens,
            total_cost_usd = CASE WHEN total_cost_usd IS NULL THEN excluded.total_cost_usd
                                  WHEN excluded.total_cost_usd IS NULL THEN total_cost_usd
                                  ELSE total_cost_usd + excluded.total_cost_usd END,
            service_name = CASE WHEN excluded.root_span_id IS NOT NULL
                                THEN coalesce(excluded.service_name, service_name)
                                ELSE coalesce(service_name, excluded.service_name) END,
            environment = coalesce(environment, excluded.environment),
            user_id = coalesce(user_id, excluded.user_id),
            session_id = coalesce(session_id, excluded.session_id)
        """,
        [
            (
                k[0],
                k[1],
                t["start"],
                t["end"],
                (t["end"] - t["start"]) / 1e6,
                t["root_id"],
                t["root_name"],
                t["spans"],
                t["llm"],
                t["errors"],
                t["in"],
                t["out"],
                t["total"],
                t["cost"],
                t["service"],
                t["env"],
                t["user"],
                t["session"],
            )
            for k, t in sorted(acc.items())
        ],
    )


def open_span_store(dialect: str, *, dsn: str | None = None, path: Path | None = None) -> SpanStore:
    if dialect == "postgresql":
        assert dsn is not None
        return PostgresSpanStore(dsn)
    assert path is not None
    return SqliteSpanStore(path)
