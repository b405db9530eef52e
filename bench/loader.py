"""Fill a database with N spans spread over the last D days, through the server's bulk path.

Rows come from :func:`observatory.ingest.pipeline.prepare` (decode, normalise, price) and are
written with the server's own ``PostgresSpanStore`` / ``SqliteSpanStore`` in large batches, so
spans, trace summaries and per-minute rollups are exactly what ingest would have stored. Each
workload template is prepared once; every batch re-stamps those rows with fresh ids and times
(fixed-width string and integer replacements), so loading measures the database path rather than
the Python parse, which the ingest benchmark measures.

PostgreSQL loads in parallel processes, each owning a disjoint slice of the time range (no two
writers update the same rollup rows). SQLite has one writer.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.workload import REQUEST_WINDOW_NS, TEMPLATE_T0, Workload, WorkloadConfig

NANOS_PER_DAY = 86_400 * 1_000_000_000


@dataclass(frozen=True)
class LoadPlan:
    database_url: str
    spans: int
    days: int = 30
    processes: int = 2
    batch_spans: int = 20_000
    seed: int = 7
    end_ns: int = 0  # data ends here (default: now)
    large_trace_fraction: float = 0.05
    templates: int = 16


def setup_database(database_url: str, data_dir: Path, admin_key: str) -> int:
    """Migrate, bootstrap project ``default``; make ``admin_key`` an admin key of it (also on a
    database loaded earlier); return the project id."""
    from sqlalchemy import text

    from observatory.app import bootstrap
    from observatory.config import load_settings
    from observatory.model import Role
    from observatory.store import admin
    from observatory.store.engine import Database, migrate

    settings = load_settings(
        {
            "data_dir": str(data_dir),
            "database_url": database_url,
            "initial_admin_key": admin_key,
        },
        env={},
    )
    db = Database(database_url, None, pool_size=1)
    try:
        migrate(db)
        created = bootstrap(db, settings)
        with db.write() as conn:
            project_id = conn.execute(
                text("SELECT project_id FROM projects WHERE name = 'default'")
            ).scalar_one()
            if created is None:
                known = conn.execute(
                    text("SELECT 1 FROM api_keys WHERE key_hash = :h"),
                    {"h": admin.hash_key(admin_key)},
                ).first()
                if known is None:
                    admin.create_key(conn, int(project_id), Role.ADMIN, "bench", key=admin_key)
    finally:
        db.dispose()
    return int(project_id)


def ensure_day_partitions(database_url: str, start_ns: int, end_ns: int) -> int:
    """PostgreSQL: create the daily span partitions covering [start, end]; returns how many."""
    from observatory.store import partitions
    from observatory.store.engine import Database

    db = Database(database_url, None, pool_size=1)
    if not db.is_postgres:
        db.dispose()
        return 0
    first = datetime.fromtimestamp(start_ns / 1e9, tz=UTC).date() - timedelta(days=1)
    last = datetime.fromtimestamp(end_ns / 1e9, tz=UTC).date() + timedelta(days=1)
    days = {first + timedelta(days=i) for i in range((last - first).days + 1)}
    try:
        with db.write() as conn:
            created = partitions.ensure_partitions_for(conn, days)
    finally:
        db.dispose()
    return len(created)


def template_rows(workload: Workload, project_id: int) -> list[list[tuple[Any, ...]]]:
    """Each template prepared by the server's pipeline, stamped at ``TEMPLATE_T0``."""
    from observatory.ingest.pipeline import PROTOBUF, prepare

    out = []
    for index in range(len(workload.templates)):
        prepared = prepare(workload.body(index, TEMPLATE_T0), PROTOBUF, project_id)
        out.append(prepared.rows)
    return out


def restamp(
    rows: Sequence[tuple[Any, ...]], trace_prefix: str, span_prefix: str, shift_ns: int
) -> list[tuple[Any, ...]]:
    """Fresh ids (hex prefixes replaced) and times shifted by ``shift_ns``."""
    out = []
    for row in rows:
        r = list(row)
        r[1] = trace_prefix + r[1][16:]
        r[2] = span_prefix + r[2][8:]
        if r[3] is not None:
            r[3] = span_prefix + r[3][8:]
        r[6] += shift_ns
        r[7] += shift_ns
        out.append(tuple(r))
    return out


def _worker(
    plan: LoadPlan,
    project_id: int,
    worker: int,
    requests: int,
    slice_start_ns: int,
    slice_ns: int,
    result_queue: Any,
) -> None:
    from observatory.store.engine import parse_database_url
    from observatory.store.writes import aggregate, open_span_store

    workload = Workload(_workload_config(plan))
    templates = template_rows(workload, project_id)
    url = parse_database_url(plan.database_url)
    store = open_span_store(url.dialect, dsn=url.libpq_dsn, path=url.sqlite_path)
    rng = random.Random(f"{plan.seed}:{worker}")
    step = slice_ns / max(requests, 1)
    batch: list[tuple[Any, ...]] = []
    written = 0
    inserted = 0
    write_seconds = 0.0
    started = time.monotonic()
    try:
        for k in range(requests):
            seq = worker + k * plan.processes
            base = slice_start_ns + int(k * step) + rng.randrange(max(int(step), 1))
            base = max(base, slice_start_ns + REQUEST_WINDOW_NS)
            trace_prefix = (workload.trace_prefix(seq)).hex()
            span_prefix = f"{(workload.run_nonce + seq * 2654435761) & 0xFFFFFFFF:08x}"
            # Templates by a seeded draw, not by ``seq``: with ``seq = worker + k * processes``
            # each worker (time slice) would otherwise see only some templates, hence only
            # some services, and the recent half of the data would lack half the services.
            rows = templates[rng.randrange(len(templates))]
            batch.extend(restamp(rows, trace_prefix, span_prefix, base - TEMPLATE_T0))
            if len(batch) >= plan.batch_spans or k == requests - 1:
                t0 = time.monotonic()
                # The server's fast path: rollups and trace summaries aggregated here.
                inserted += store.write(batch, aggregate(batch))
                write_seconds += time.monotonic() - t0
                written += len(batch)
                batch = []
    finally:
        store.close()
    result_queue.put(
        {
            "worker": worker,
            "spans": written,
            "inserted": inserted,
            "seconds": round(time.monotonic() - started, 2),
            "write_seconds": round(write_seconds, 2),
        }
    )


def _workload_config(plan: LoadPlan) -> WorkloadConfig:
    return WorkloadConfig(
        seed=plan.seed,
        large_trace_fraction=plan.large_trace_fraction,
        templates=plan.templates,
    )


def load(plan: LoadPlan, project_id: int) -> dict[str, Any]:
    """Load ``plan.spans`` spans; returns timings and counts."""
    from observatory.store.engine import parse_database_url

    workload = Workload(_workload_config(plan))
    spans_per_request = sum(t.span_count for t in workload.templates) / len(workload.templates)
    requests = max(round(plan.spans / spans_per_request), 1)
    end_ns = plan.end_ns or time.time_ns()
    start_ns = end_ns - plan.days * NANOS_PER_DAY
    started = time.monotonic()
    partitions = ensure_day_partitions(plan.database_url, start_ns, end_ns)
    processes = (
        plan.processes if parse_database_url(plan.database_url).dialect == "postgresql" else 1
    )
    processes = max(1, min(processes, requests))
    per_worker = [
        requests // processes + (1 if w < requests % processes else 0) for w in range(processes)
    ]
    slice_ns = (end_ns - start_ns) // processes
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(
                LoadPlan(**{**vars(plan), "processes": processes}),
                project_id,
                w,
                per_worker[w],
                start_ns + w * slice_ns,
                slice_ns,
                results,
            ),
            name=f"bench-loader-{w}",
        )
        for w in range(processes)
    ]
    for proc in procs:
        proc.start()
    workers: list[dict[str, Any]] = []
    deadline = time.monotonic() + 6 * 3600
    while len(workers) < processes and time.monotonic() < deadline:
        try:
            workers.append(results.get(timeout=5))
        except Exception:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                for proc in procs:
                    proc.kill()
                raise RuntimeError(f"loader process failed (exit {dead[0].exitcode})") from None
    for proc in procs:
        proc.join(60)
    elapsed = time.monotonic() - started
    spans = sum(w["spans"] for w in workers)
    inserted = sum(w["inserted"] for w in workers)
    if inserted != spans:
        raise RuntimeError(f"loader wrote {spans} spans but only {inserted} were new")
    return {
        "spans": spans,
        "requests": requests,
        "days": plan.days,
        "processes": processes,
        "batch_spans": plan.batch_spans,
        "partitions_created": partitions,
        "seconds": round(elapsed, 1),
        "spans_per_s": round(spans / elapsed, 1) if elapsed else None,
        "workers": workers,
        "start_ns": start_ns,
        "end_ns": end_ns,
    }


def compact(database_url: str) -> float:
    """Build the rollup cube of every loaded hour, as the server's compaction rounds would (the
    dashboards read it); returns seconds."""
    from observatory.store import cube
    from observatory.store.engine import Database

    started = time.monotonic()
    db = Database(database_url, None, pool_size=1)
    try:
        cube.compact(db)
    finally:
        db.dispose()
    return round(time.monotonic() - started, 1)


def analyze(database_url: str) -> float:
    """Refresh planner statistics (and the visibility map on PostgreSQL); returns seconds."""
    from sqlalchemy import text

    from observatory.store.engine import Database

    started = time.monotonic()
    db = Database(database_url, None, pool_size=1)
    try:
        if db.is_postgres:
            with db.engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                conn.execute(text("VACUUM (ANALYZE)"))
        else:
            with db.engine.connect() as conn:
                conn.execute(text("ANALYZE"))
                conn.commit()
    finally:
        db.dispose()
    return round(time.monotonic() - started, 1)
