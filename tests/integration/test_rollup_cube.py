"""The rollup cube (store/cube.py) on both databases: dashboards answer exactly as from the
per-dimension rollups, before and after compaction, and after spans arrive in a compacted hour."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select

from observatory.store import cube, queries
from observatory.store.schema import (
    rollups_1h,
    rollups_1h_cube,
    rollups_1h_cube_hours,
    rollups_1h_latency,
)
from tests.compare import same_answers
from tests.integration.conftest import App
from tests.otlp_builder import BASE_NS, SpanSpec, llm_attributes, protobuf_request

HOUR_NS = 3600 * 10**9
FAR_FUTURE_S = BASE_NS // 10**9 + 10 * 365 * 86400
MODELS = [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-3-5-haiku")]
SERVICES = ["support", "search"]
ENVIRONMENTS = ["production", "staging"]
# A range with partial hours at both ends (they come from the per-minute rollups).
RANGE = queries.Filters(start_time=BASE_NS + 1234 * 10**9, end_time=BASE_NS + 30 * HOUR_NS + 7)
QUERIES: list[tuple[dict[str, str], str | None, str | None, bool]] = [
    (filters, group_by, bucket, llm_only)
    for filters in ({}, {"service": "support"}, {"model": "gpt-4o"}, {"environment": "staging"})
    for group_by in (None, "model", "provider", "service")
    for bucket in (None, "1h", "6h")
    for llm_only in (True, False)
] + [
    # Three dimensions: not in the cube, answered from the rows.
    ({"service": "support", "environment": "staging"}, "model", "1h", True),
]


def _ingest(
    app: App, rng: random.Random, first_trace: int, traces: int, hours: int, base_ns: int = BASE_NS
) -> None:
    for service in SERVICES:
        for environment in ENVIRONMENTS:
            specs = []
            for n in range(first_trace, first_trace + traces):
                start = base_ns + rng.randrange(0, hours * 3600) * 10**9
                provider, model = rng.choice(MODELS)
                specs.append(SpanSpec(n, 1, None, "agent", start, rng.uniform(50, 9000)))
                for child in range(2, 4):
                    specs.append(
                        SpanSpec(
                            n,
                            child,
                            1,
                            "chat",
                            start + child * 10**6,
                            rng.lognormvariate(6.0, 1.0),
                            error=rng.random() < 0.05,
                            attributes=llm_attributes(model=model, provider=provider),
                        )
                    )
            resource = {"service.name": service, "deployment.environment.name": environment}
            response = app.ingest(protobuf_request(specs, resource=resource))
            assert response.status_code == 200, response.text
            first_trace += 100_000


def _answers(app: App, use_cube: bool = True) -> list[list[dict[str, Any]]]:
    saved = queries.CUBE_MAX_STALE_HOURS
    if not use_cube:
        queries.CUBE_MAX_STALE_HOURS = -1  # every query reads the rollup rows
    try:
        with app.state.db.read() as conn:
            return [
                queries.analytics(
                    conn,
                    1,
                    queries.Filters(
                        start_time=RANGE.start_time, end_time=RANGE.end_time, **filters
                    ),
                    group_by=group_by,
                    bucket=bucket,
                    llm_only=llm_only,
                )
                for filters, group_by, bucket, llm_only in QUERIES
            ]
    finally:
        queries.CUBE_MAX_STALE_HOURS = saved


def _count(app: App, table: Any) -> int:
    with app.state.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_the_cube_answers_exactly_like_the_rollup_rows(app_factory, database_url) -> None:  # type: ignore[no-untyped-def]
    app = app_factory(database_url, cube_interval_seconds=0)
    db = app.state.db
    _ingest(app, random.Random(5), 1, 60, 32)
    from_rows = _answers(app)
    assert all(from_rows[i] for i in range(len(QUERIES) - 1))
    assert _count(app, rollups_1h_cube) == 0

    built = cube.compact(db, now_s=FAR_FUTURE_S)
    assert built.hours == 32 and built.pending == 0 and not built.skipped
    assert _count(app, rollups_1h_cube_hours) == 32
    # Every dimension set of at most two dimensions has its cells.
    with db.read() as conn:
        sets = {r[0] for r in conn.execute(select(rollups_1h_cube.c.dims).distinct())}
    assert sets == set(cube.SETS)
    assert same_answers(_answers(app), from_rows)
    assert cube.compact(db, now_s=FAR_FUTURE_S).hours == 0  # nothing changed since

    # The answers really come from the cube: without the hourly latency rows they are the same.
    with db.write() as conn:
        conn.execute(delete(rollups_1h_latency))
    assert same_answers(_answers(app)[:-1], from_rows[:-1])


def test_hours_changed_after_compaction_are_read_from_the_rows(app_factory, database_url) -> None:  # type: ignore[no-untyped-def]
    app = app_factory(database_url, cube_interval_seconds=0)
    db = app.state.db
    rng = random.Random(9)
    _ingest(app, rng, 1, 40, 30)
    assert cube.compact(db, now_s=FAR_FUTURE_S).hours == 30
    # Late spans land in two compacted hours: their stamps no longer match.
    _ingest(app, rng, 5000, 1, 2)
    with db.read() as conn:
        hours = cube.validity(conn, 1, None, None)
    assert len(hours.stale) == 2 and len(hours.valid) == 28 and hours.skip == hours.stale
    mixed = _answers(app)
    assert same_answers(_answers(app, use_cube=False), mixed)
    assert cube.compact(db, now_s=FAR_FUTURE_S).hours == 2
    assert same_answers(_answers(app), mixed)


def test_compaction_follows_deleted_hours_and_settles(app_factory, database_url) -> None:  # type: ignore[no-untyped-def]
    app = app_factory(database_url, cube_interval_seconds=0)
    db = app.state.db
    _ingest(app, random.Random(2), 1, 20, 3)
    first_hour = BASE_NS // 10**9 // 3600 * 3600
    # The server's frequent rounds look back a little only; a full round finds older hours.
    assert cube.compact(db, now_s=first_hour + 5 * 3600, lookback_s=3 * 3600).hours == 1
    assert cube.compact(db, now_s=first_hour + 5 * 3600, lookback_s=None).hours == 2
    with db.write() as conn:
        conn.execute(delete(rollups_1h_cube))
        conn.execute(delete(rollups_1h_cube_hours))
    # An hour that ended less than a minute ago is left for the next round.
    assert cube.compact(db, now_s=first_hour + 3 * 3600 + 30).hours == 2
    assert cube.compact(db, now_s=FAR_FUTURE_S).hours == 1
    # Retention (or erasure) removed an hour's rollups (a whole hour of RANGE): its cells and
    # stamp go too.
    gone = first_hour + 3600
    with db.write() as conn:
        for table in (rollups_1h, rollups_1h_latency):
            conn.execute(delete(table).where(table.c.bucket_start_unix_s == gone))
    # Until the next round its cells are still there, and never read.
    with db.read() as conn:
        hours = cube.validity(conn, 1, None, None)
    assert hours.skip == {gone} and not hours.stale and len(hours.valid) == 2
    with_cells_left = _answers(app)
    assert same_answers(_answers(app, use_cube=False), with_cells_left)
    assert cube.compact(db, now_s=FAR_FUTURE_S).hours == 1
    with db.read() as conn:
        left = conn.execute(
            select(func.count())
            .select_from(rollups_1h_cube)
            .where(rollups_1h_cube.c.bucket_start_unix_s == gone)
        ).scalar_one()
        hours = cube.validity(conn, 1, None, None)
    assert left == 0 and len(hours.valid) == 2 and not hours.stale and not hours.skip
    assert _count(app, rollups_1h_cube_hours) == 2


def test_the_server_compacts_in_the_background(app_factory, database_url) -> None:  # type: ignore[no-untyped-def]
    app = app_factory(database_url, cube_interval_seconds=1)
    # Recent hours, as the rounds between full ones look back two days only.
    three_hours_ago = (time.time_ns() // HOUR_NS - 3) * HOUR_NS
    _ingest(app, random.Random(4), 1, 10, 2, base_ns=three_hours_ago)
    deadline = time.monotonic() + 30
    while _count(app, rollups_1h_cube_hours) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _count(app, rollups_1h_cube_hours) == 2


def test_cli_compacts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {"OBSERVATORY_DATABASE_URL": url, "OBSERVATORY_DATA_DIR": str(tmp_path), "PATH": "/bin"}
    observatory = str(Path(sys.executable).parent / "observatory")
    done = subprocess.run(
        [observatory, "rollups", "compact"], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("rollup cube: rebuilt 0 hours")
