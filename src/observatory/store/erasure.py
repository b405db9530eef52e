"""Erasure on request (right to erasure): every span of one user id or one session id.

A span belongs to the subject when its own ``user_id``/``session_id`` matches, or when its
trace's does (the ``traces`` summary holds the trace-level ids, usually set on the root span
only). Whole matching traces go with their summary rows; a span matching on its own inside
another subject's trace goes alone, and that trace's summary is recomputed from the spans that
remain (deleted when none remain). OTLP log records attached to erased spans (same trace and
span id, or any record of an erased trace) are deleted too, since they can carry the same
prompts. Rollups hold no per-user data and stay.

Work is done in batches, each its own transaction; a failed erasure can be run again and
finishes the job (it is idempotent).
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, and_, case, delete, func, inspect, select, tuple_, update
from sqlalchemy.engine import Connection

from observatory.store.engine import Database
from observatory.store.schema import spans, traces

BATCH_ROWS = 2000
SUBJECTS = ("user_id", "session_id")


@dataclass
class ErasureResult:
    spans: int = 0
    traces: int = 0
    logs: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"spans": self.spans, "traces": self.traces, "logs": self.logs}


def subject_hash(secret_key: str, subject: str, value: str) -> str:
    """A keyed hash of an erased id for the audit log, which must never hold the id itself.

    HMAC-SHA-256 under the server's secret key: whoever knows the key and an id can check that it
    was erased; the audit log alone reveals nothing.
    """
    message = f"observatory.erasure\x00{subject}\x00{value}".encode()
    return "hmac-sha256:" + hmac.new(secret_key.encode(), message, hashlib.sha256).hexdigest()


def _logs_table(conn: Connection) -> Table | None:
    schema = importlib.import_module("observatory.store.schema")
    table = getattr(schema, "log_records", None)
    if not isinstance(table, Table) or not inspect(conn).has_table(table.name):
        return None
    return table


def erase(
    db: Database,
    project_id: int,
    *,
    user_id: str | None = None,
    session_id: str | None = None,
    batch_rows: int = BATCH_ROWS,
) -> ErasureResult:
    """Delete every span of ``user_id`` or of ``session_id`` (exactly one) in the project."""
    if (user_id is None) == (session_id is None):
        raise ValueError("give exactly one of user_id and session_id")
    subject = "user_id" if user_id is not None else "session_id"
    value = user_id if user_id is not None else session_id
    assert value is not None
    result = ErasureResult()
    trace_column = traces.c[subject]
    span_column = spans.c[subject]
    # 1. Whole traces whose trace-level id matches: their spans, logs and summary rows.
    while True:
        with db.write() as conn:
            trace_ids = [
                r[0]
                for r in conn.execute(
                    select(traces.c.trace_id)
                    .where(traces.c.project_id == project_id, trace_column == value)
                    .order_by(traces.c.trace_id)
                    .limit(batch_rows)
                )
            ]
            if not trace_ids:
                break
            result.spans += _count_deleted(
                conn.execute(
                    delete(spans).where(
                        spans.c.project_id == project_id, spans.c.trace_id.in_(trace_ids)
                    )
                )
            )
            logs = _logs_table(conn)
            if logs is not None:
                result.logs += _count_deleted(
                    conn.execute(
                        delete(logs).where(
                            logs.c.project_id == project_id, logs.c.trace_id.in_(trace_ids)
                        )
                    )
                )
            result.traces += _count_deleted(
                conn.execute(
                    delete(traces).where(
                        traces.c.project_id == project_id, traces.c.trace_id.in_(trace_ids)
                    )
                )
            )
    # 2. Single spans carrying the id inside other traces. The span-level ids have no index
    # (it would cost ingest throughput), so one scan streams the keys and each batch is deleted
    # in its own transaction as the scan goes on.
    with db.engine.connect() as scan:
        found = scan.execution_options(stream_results=True, yield_per=batch_rows).execute(
            select(spans.c.trace_id, spans.c.span_id).where(
                spans.c.project_id == project_id, span_column == value
            )
        )
        try:
            for part in found.partitions(batch_rows):
                keys = [(r[0], r[1]) for r in part]
                _erase_spans(db, project_id, span_column, value, keys, result)
        finally:
            found.close()
    return result


def _erase_spans(
    db: Database,
    project_id: int,
    span_column: Any,
    value: str,
    keys: list[tuple[str, str]],
    result: ErasureResult,
) -> None:
    key = tuple_(spans.c.trace_id, spans.c.span_id)
    with db.write() as conn:
        result.spans += _count_deleted(
            conn.execute(
                delete(spans).where(
                    spans.c.project_id == project_id, span_column == value, key.in_(keys)
                )
            )
        )
        logs = _logs_table(conn)
        if logs is not None:
            result.logs += _count_deleted(
                conn.execute(
                    delete(logs).where(
                        logs.c.project_id == project_id,
                        tuple_(logs.c.trace_id, logs.c.span_id).in_(keys),
                    )
                )
            )
        result.traces += refresh_trace_summaries(
            conn, project_id, sorted({trace_id for trace_id, _ in keys})
        )


def _count_deleted(result: Any) -> int:
    return max(int(result.rowcount), 0)


def refresh_trace_summaries(conn: Connection, project_id: int, trace_ids: Sequence[str]) -> int:
    """Recompute the summaries of traces that lost spans; delete those with none left.

    Returns the number of summary rows deleted.
    """
    if not trace_ids:
        return 0
    s = spans.c
    is_llm = func.coalesce(s.response_model, s.request_model).is_not(None)
    aggregates = conn.execute(
        select(
            s.trace_id,
            func.min(s.start_time_unix_nano).label("start"),
            func.max(s.end_time_unix_nano).label("end"),
            func.count().label("span_count"),
            func.sum(case((is_llm, 1), else_=0)).label("llm"),
            func.sum(case((s.status_code == 2, 1), else_=0)).label("errors"),
            func.coalesce(func.sum(s.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(s.output_tokens), 0).label("output_tokens"),
            func.coalesce(func.sum(s.total_tokens), 0).label("total_tokens"),
            func.sum(s.total_cost_usd).label("cost"),
        )
        .where(s.project_id == project_id, s.trace_id.in_(trace_ids))
        .group_by(s.trace_id)
    ).all()
    roots = {
        r.trace_id: r
        for r in conn.execute(
            select(s.trace_id, s.span_id, s.name, s.service_name).where(
                s.project_id == project_id, s.trace_id.in_(trace_ids), s.parent_span_id.is_(None)
            )
        )
    }
    remaining = set()
    for row in aggregates:
        remaining.add(row.trace_id)
        root = roots.get(row.trace_id)
        values: dict[str, Any] = {
            "start_time_unix_nano": row.start,
            "end_time_unix_nano": row.end,
            "duration_ms": (row.end - row.start) / 1e6,
            "span_count": row.span_count,
            "llm_call_count": int(row.llm or 0),
            "error_count": int(row.errors or 0),
            "input_tokens": int(row.input_tokens),
            "output_tokens": int(row.output_tokens),
            "total_tokens": int(row.total_tokens),
            "total_cost_usd": row.cost,
            "root_span_id": root.span_id if root is not None else None,
            "root_span_name": root.name if root is not None else None,
        }
        if root is not None and root.service_name:
            values["service_name"] = root.service_name
        conn.execute(
            update(traces)
            .where(traces.c.project_id == project_id, traces.c.trace_id == row.trace_id)
            .values(**values)
        )
    gone = [t for t in trace_ids if t not in remaining]
    if not gone:
        return 0
    return _count_deleted(
        conn.execute(
            delete(traces).where(
                and_(traces.c.project_id == project_id, traces.c.trace_id.in_(gone))
            )
        )
    )
