"""GenAI metric data points (``gen_ai.client.token.usage``, ``gen_ai.client.operation.duration``,
``gen_ai.server.time_to_first_token`` …): idempotent insert with per-point deltas, and the
aggregates behind ``GET /api/v1/analytics/genai-metrics``.

OTLP points come with *delta* or *cumulative* aggregation temporality
(https://opentelemetry.io/docs/specs/otel/metrics/data-model/#temporality). Each stored point
carries what it adds over the previous point of its series: a delta point adds itself; a
cumulative point adds its value minus the previous point with the same series and start time
("a change of start time means a reset"), or its whole value when it is the first. A cumulative
point that arrives out of order also corrects the delta of the point after it. Sums over
``delta_count``/``delta_sum`` are then right for either temporality, and a retried export
(same series, start and time) is stored once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import ColumnElement, delete, func, literal_column, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from observatory.store.schema import genai_metric_points

TEMPORALITY_UNSPECIFIED = 0
TEMPORALITY_DELTA = 1
TEMPORALITY_CUMULATIVE = 2

USAGE_METRIC = "gen_ai.client.token.usage"
OPERATION_DURATION = "gen_ai.client.operation.duration"
POINT_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in genai_metric_points.c if c.name != "point_rowid"
)


@dataclass
class MetricFilters:
    """Filters of the GenAI metrics analytics. Times in unix nanoseconds."""

    start_time: int
    end_time: int | None = None
    service: str | None = None
    provider: str | None = None
    model: str | None = None
    operation: str | None = None


# --- writes -------------------------------------------------------------------------------------


def _lock(conn: Connection, project_ids: set[int]) -> None:
    """Serialise metric writes of a project (deltas read the previous point, then write)."""
    if conn.dialect.name == "postgresql":
        for project_id in sorted(project_ids):
            conn.execute(
                text(
                    "SELECT pg_advisory_xact_lock("
                    "hashtext('observatory.genai_metrics'), CAST(:p AS integer))"
                ),
                {"p": project_id % 2**31},
            )
        return
    dbapi = conn.connection.dbapi_connection
    if dbapi is not None and not getattr(dbapi, "in_transaction", True):
        # Take SQLite's write lock before the first read, so no other writer slips between.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _loads_list(value: str | None) -> list[Any] | None:
    if value is None:
        return None
    loaded = orjson.loads(value)
    return loaded if isinstance(loaded, list) else None


def _delta(current: Mapping[str, Any], previous: Mapping[str, Any] | None) -> dict[str, Any]:
    """What ``current`` (a cumulative point) adds over ``previous`` (the point before it)."""
    whole = {
        "delta_count": current["count"],
        "delta_sum": current["sum"],
        "delta_bucket_counts": current["bucket_counts"],
    }
    if previous is None:
        return whole
    count, prev_count = current["count"], previous["count"]
    total, prev_total = current["sum"], previous["sum"]
    if count is not None and prev_count is not None:
        if count < prev_count:  # a reset the exporter did not mark with a new start time
            return whole
        out: dict[str, Any] = {
            "delta_count": count - prev_count,
            "delta_sum": None if total is None or prev_total is None else total - prev_total,
            "delta_bucket_counts": None,
        }
        buckets = _loads_list(current["bucket_counts"])
        prev_buckets = _loads_list(previous["bucket_counts"])
        if (
            buckets is not None
            and prev_buckets is not None
            and len(buckets) == len(prev_buckets)
            and current["explicit_bounds"] == previous["explicit_bounds"]
        ):
            diff = [int(a) - int(b) for a, b in zip(buckets, prev_buckets, strict=True)]
            out["delta_bucket_counts"] = orjson.dumps(diff).decode() if min(diff) >= 0 else None
        return out
    if total is not None and prev_total is not None:
        if current.get("monotonic") and total < prev_total:
            return whole
        return {"delta_count": None, "delta_sum": total - prev_total, "delta_bucket_counts": None}
    return whole


def _neighbour(conn: Connection, row: Mapping[str, Any], before: bool) -> dict[str, Any] | None:
    c = genai_metric_points.c
    query = select(
        c.point_rowid, c.count, c.sum, c.bucket_counts, c.explicit_bounds, c.time_unix_nano
    ).where(
        c.project_id == row["project_id"],
        c.series_key == row["series_key"],
        c.start_time_unix_nano == row["start_time_unix_nano"],
    )
    if before:
        query = query.where(c.time_unix_nano < row["time_unix_nano"]).order_by(
            c.time_unix_nano.desc()
        )
    else:
        query = query.where(c.time_unix_nano > row["time_unix_nano"]).order_by(
            c.time_unix_nano.asc()
        )
    found = conn.execute(query.limit(1)).first()
    return None if found is None else dict(found._mapping)


def insert_points(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert metric points in the caller's (fresh) transaction; points already stored are
    skipped. Returns how many were new."""
    if not rows:
        return 0
    _lock(conn, {int(r["project_id"]) for r in rows})
    make = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    c = genai_metric_points.c
    inserted = 0
    for row in sorted(rows, key=lambda r: (r["series_key"], r["time_unix_nano"])):
        values = {name: row.get(name) for name in POINT_COLUMNS}
        cumulative = row["temporality"] == TEMPORALITY_CUMULATIVE
        if cumulative:
            values.update(_delta(row, _neighbour(conn, row, before=True)))
        else:
            values["delta_count"] = row["count"]
            values["delta_sum"] = row["sum"]
            values["delta_bucket_counts"] = row["bucket_counts"]
        result = conn.execute(
            make(genai_metric_points)
            .values(**values)
            .on_conflict_do_nothing(
                index_elements=[
                    "project_id",
                    "series_key",
                    "start_time_unix_nano",
                    "time_unix_nano",
                ]
            )
            .returning(c.point_rowid)
        )
        if result.first() is None:  # stored before (a retried export)
            continue
        inserted += 1
        if cumulative:
            following = _neighbour(conn, row, before=False)
            if following is not None:
                fix = _delta({**following, "monotonic": row.get("monotonic")}, row)
                conn.execute(
                    update(genai_metric_points)
                    .where(c.point_rowid == following["point_rowid"])
                    .values(**fix)
                )
    return inserted


def delete_points_before(conn: Connection, project_id: int, cutoff_ns: int) -> int:
    """Delete a project's metric points older than ``cutoff_ns`` (retention)."""
    result = conn.execute(
        delete(genai_metric_points).where(
            genai_metric_points.c.project_id == project_id,
            genai_metric_points.c.time_unix_nano < cutoff_ns,
        )
    )
    return max(result.rowcount, 0)


# --- reads --------------------------------------------------------------------------------------


def _conditions(project_id: int, f: MetricFilters) -> list[ColumnElement[bool]]:
    c = genai_metric_points.c
    cond: list[ColumnElement[bool]] = [
        c.project_id == project_id,
        c.time_unix_nano >= f.start_time,
    ]
    if f.end_time is not None:
        cond.append(c.time_unix_nano < f.end_time)
    for value, column in (
        (f.service, c.service_name),
        (f.provider, c.provider),
        (f.model, c.model),
        (f.operation, c.operation),
    ):
        if value:
            cond.append(column == value)
    return cond


def metric_series(
    conn: Connection, project_id: int, f: MetricFilters, step_s: int | None
) -> list[dict[str, Any]]:
    """Sum of the deltas per (time bucket, metric, unit, provider, model, operation, token
    type). ``step_s=None`` makes one bucket for the whole range."""
    c = genai_metric_points.c
    secs = c.time_unix_nano.op("/")(1_000_000_000)
    bucket = (secs.op("/")(step_s).op("*")(step_s) if step_s else literal_column("0")).label("b")
    keys = [c.metric_name, c.unit, c.provider, c.model, c.operation, c.token_type]
    rows = conn.execute(
        select(
            bucket,
            *keys,
            func.sum(c.delta_count).label("points"),
            func.sum(c.delta_sum).label("total"),
        )
        .where(*_conditions(project_id, f))
        .group_by(*([bucket] if step_s else []), *keys)
    ).all()
    out = []
    for row in rows:
        count = None if row.points is None else int(row.points)
        total = None if row.total is None else float(row.total)
        out.append(
            {
                "bucket_start_unix_s": int(row.b) if step_s else None,
                "metric": row.metric_name,
                "unit": row.unit,
                "provider": row.provider,
                "model": row.model,
                "operation": row.operation,
                "token_type": row.token_type,
                "count": count,
                "sum": total,
                "avg": (total / count) if total is not None and count else None,
            }
        )
    out.sort(
        key=lambda r: (
            r["bucket_start_unix_s"] or 0,
            r["metric"],
            r["provider"],
            r["model"],
            r["operation"],
            r["token_type"],
        )
    )
    return out


def _seconds_to_ms(unit: str) -> float:
    return {"s": 1000.0, "ms": 1.0, "us": 0.001, "ns": 0.000001}.get(unit, 1000.0)


def usage_views(series: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Token usage and operation duration per (bucket, provider, model) from ``series``."""
    tokens: dict[tuple[Any, str, str], dict[str, Any]] = {}
    durations: dict[tuple[Any, str, str], dict[str, Any]] = {}
    for item in series:
        key = (item["bucket_start_unix_s"], item["provider"], item["model"])
        if item["metric"] == USAGE_METRIC:
            acc = tokens.setdefault(
                key,
                {
                    "bucket_start_unix_s": key[0],
                    "provider": key[1],
                    "model": key[2],
                    "requests": 0,
                    "input_tokens": 0,
                    "output_tokens": 0,
                    "total_tokens": 0,
                },
            )
            amount = round(item["sum"] or 0)
            direction = item["token_type"]
            if direction == "input":
                acc["input_tokens"] += amount
                acc["requests"] += item["count"] or 0
            elif direction == "output":
                acc["output_tokens"] += amount
            acc["total_tokens"] += amount
        elif item["metric"] == OPERATION_DURATION:
            acc = durations.setdefault(
                key,
                {
                    "bucket_start_unix_s": key[0],
                    "provider": key[1],
                    "model": key[2],
                    "count": 0,
                    "total_duration_ms": 0.0,
                },
            )
            acc["count"] += item["count"] or 0
            acc["total_duration_ms"] += (item["sum"] or 0.0) * _seconds_to_ms(item["unit"])
    for acc in durations.values():
        acc["avg_duration_ms"] = acc["total_duration_ms"] / acc["count"] if acc["count"] else None

    def ordered(values: dict[tuple[Any, str, str], dict[str, Any]]) -> list[dict[str, Any]]:
        return [values[k] for k in sorted(values, key=lambda k: (k[0] or 0, k[1], k[2]))]

    return {"token_usage": ordered(tokens), "operation_duration": ordered(durations)}
