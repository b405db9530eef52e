"""Retention on both databases: exactly what is older than each project's limit goes, per kind;
whole day partitions are dropped on PostgreSQL only when older than every project's limit; a dry
run deletes nothing; one run at a time; the scheduled job in the server; the CLI."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from sqlalchemy import func, insert, select

from observatory.config import ConfigError, load_settings
from observatory.store import partitions, retention
from observatory.store import schema as schema_module
from observatory.store.engine import Database
from observatory.store.schema import audit_log, rollups_1m, rollups_1m_latency, spans, traces
from tests.conftest import BIN
from tests.integration.conftest import App
from tests.otlp_builder import SpanSpec, llm_attributes, protobuf_request

DAY = 86_400 * 10**9
SECOND = 10**9
DEFAULTS = retention.RetentionPolicy(spans_days=365, rollups_days=730, audit_days=365, logs_days=90)
LOGS = getattr(schema_module, "log_records", None)
# Hourly rollups (migration 0006) sit beside the per-minute ones when this build has them.
HOURLY = getattr(schema_module, "rollups_1h", None) is not None


def llm_span(n: int, start_ns: int) -> SpanSpec:
    """A one-span trace (its own root) with an LLM call, so it also lands in the rollups."""
    return SpanSpec(n, n, None, "chat", start_ns, 10.0, attributes=llm_attributes())


def ingest(app: App, specs: list[SpanSpec], key: str | None = None) -> None:
    response = app.ingest(protobuf_request(specs), key=key)
    assert response.status_code == 200, response.text
    assert "partialSuccess" not in response.text


def other_project(app: App, name: str) -> tuple[int, str]:
    created = app.client.post("/api/v1/admin/projects", json={"name": name}, headers=app.headers())
    assert created.status_code == 201, created.text
    return int(created.json()["project_id"]), str(created.json()["admin_key"])


def old_audit(db: Database, project_id: int | None, at_ns: int, action: str) -> None:
    with db.write() as conn:
        conn.execute(
            insert(audit_log).values(
                at=datetime.fromtimestamp(at_ns / 1e9, tz=UTC),
                project_id=project_id,
                actor="test",
                action=action,
                outcome="ok",
                details="{}",
            )
        )


def log_record(db: Database, project_id: int, time_ns: int, n: int) -> None:
    assert LOGS is not None
    with db.write() as conn:
        conn.execute(
            insert(LOGS).values(
                project_id=project_id,
                time_unix_nano=time_ns,
                observed_time_unix_nano=time_ns,
                severity_number=9,
                body='"hello"',
                attributes="{}",
                resource_attributes="{}",
                flags=0,
                record_hash=f"{n:032x}",
            )
        )


def table_counts(db: Database) -> dict[str, int]:
    tables = [spans, traces, rollups_1m, rollups_1m_latency, audit_log]
    for name in ("log_records", "rollups_1h", "rollups_1h_latency"):
        optional = getattr(schema_module, name, None)
        if optional is not None:
            tables.append(optional)
    with db.engine.connect() as conn:
        return {
            t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
            for t in tables
        }


def minute(ns: int) -> int:
    return ns // SECOND // 60 * 60


def span_starts(db: Database, project_id: int) -> set[int]:
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(spans.c.start_time_unix_nano).where(spans.c.project_id == project_id)
        )
        return {r[0] for r in rows}


def test_retention_removes_exactly_what_is_older_than_each_limit(app: App) -> None:
    db = app.state.db
    now = time.time_ns()
    b_id, b_key = other_project(app, "short")
    put = app.client.put(
        "/api/v1/admin/settings/retention",
        json={"spans_days": 30, "rollups_days": 60},
        headers=app.headers(b_key),
    )
    assert put.status_code == 200, put.text
    assert put.json()["effective"] == {
        "spans_days": 30,
        "rollups_days": 60,
        "audit_days": 365,
        "logs_days": 90,
    }
    cutoff_a = now - 365 * DAY
    cutoff_b = now - 30 * DAY
    old_day = datetime.fromtimestamp((now - 400 * DAY) / 1e9, tz=UTC).date()
    mid_day = datetime.fromtimestamp((now - 100 * DAY) / 1e9, tz=UTC).date()
    if db.is_postgres:
        # Old days with their own partitions; the rest of the old spans land in DEFAULT.
        with db.write() as conn:
            created = partitions.ensure_partitions_for(conn, {old_day, mid_day})
        assert created == [partitions.partition_name(old_day), partitions.partition_name(mid_day)]
    a_starts = {
        "800d": now - 800 * DAY,
        "400d": now - 400 * DAY,
        "366d": now - 366 * DAY,
        "cutoff-1s": cutoff_a - SECOND,
        "cutoff+1s": cutoff_a + SECOND,
        "100d": now - 100 * DAY,
        "1d": now - DAY,
    }
    b_starts = {
        "400d": now - 400 * DAY,
        "100d": now - 100 * DAY + 60 * SECOND,
        "cutoff-1s": cutoff_b - SECOND,
        "cutoff+1s": cutoff_b + SECOND,
        "1d": now - DAY,
    }
    ingest(app, [llm_span(i + 1, t) for i, t in enumerate(a_starts.values())])
    ingest(app, [llm_span(i + 101, t) for i, t in enumerate(b_starts.values())], key=b_key)
    a_id = 1
    old_audit(db, a_id, now - 400 * DAY, "test.old")
    old_audit(db, a_id, now - 300 * DAY, "test.recent")
    old_audit(db, b_id, now - 400 * DAY, "test.old")
    old_audit(db, None, now - 500 * DAY, "test.old")
    if LOGS is not None:
        log_record(db, a_id, now - 100 * DAY, 1)
        log_record(db, a_id, now - 10 * DAY, 2)
        log_record(db, b_id, now - 100 * DAY, 3)

    before = table_counts(db)
    dry = retention.run_retention(db, DEFAULTS, dry_run=True, now_ns=now)
    assert dry.ran and dry.dry_run
    assert table_counts(db) == before, "a dry run deleted something"
    expected_a = {
        "spans": 4,
        "traces": 4,
        "rollups_1m": 1,
        "rollups_1m_latency": 1,
        "rollups_1h": 1 if HOURLY else 0,
        "rollups_1h_latency": 1 if HOURLY else 0,
        "audit_log": 1,
        "logs": 1 if LOGS is not None else 0,
    }
    expected_b = {
        "spans": 3,
        "traces": 3,
        "rollups_1m": 2,
        "rollups_1m_latency": 2,
        "rollups_1h": 2 if HOURLY else 0,
        "rollups_1h_latency": 2 if HOURLY else 0,
        "audit_log": 1,
        "logs": 1 if LOGS is not None else 0,
    }
    by_name = {p.name: p for p in dry.projects}
    assert by_name["default"].counts == expected_a
    assert by_name["short"].counts == expected_b
    assert by_name[""].counts["audit_log"] == 1
    assert dry.logs_supported == (LOGS is not None)
    if db.is_postgres:
        # Only the partition older than the LONGEST retention (365 days of "default") may go.
        assert dry.dropped_partitions == [partitions.partition_name(old_day)]

    report = retention.run_retention(db, DEFAULTS, now_ns=now, actor="test")
    assert report.ran and not report.dry_run and report.complete
    by_name = {p.name: p for p in report.projects}
    assert by_name["default"].counts == expected_a
    assert by_name["short"].counts == expected_b
    assert by_name[""].counts["audit_log"] == 1

    kept_a = {k for k in a_starts if k in ("cutoff+1s", "100d", "1d")}
    kept_b = {k for k in b_starts if k in ("cutoff+1s", "1d")}
    assert span_starts(db, a_id) == {a_starts[k] for k in kept_a}
    assert span_starts(db, b_id) == {b_starts[k] for k in kept_b}
    with db.engine.connect() as conn:
        trace_starts = {
            (r.project_id, r.start_time_unix_nano)
            for r in conn.execute(select(traces.c.project_id, traces.c.start_time_unix_nano))
        }
        assert trace_starts == {(a_id, a_starts[k]) for k in kept_a} | {
            (b_id, b_starts[k]) for k in kept_b
        }
        buckets = {
            (r.project_id, r.bucket_start_unix_s)
            for r in conn.execute(select(rollups_1m.c.project_id, rollups_1m.c.bucket_start_unix_s))
        }
        # Rollups have their own limits: "default" keeps 730 days, "short" 60.
        assert buckets == {(a_id, minute(t)) for k, t in a_starts.items() if k != "800d"} | {
            (b_id, minute(b_starts[k])) for k in ("cutoff-1s", "cutoff+1s", "1d")
        }
        actions = {
            (r.project_id, r.action)
            for r in conn.execute(select(audit_log.c.project_id, audit_log.c.action))
        }
        assert (a_id, "test.recent") in actions
        assert not {a for a in actions if a[1] == "test.old"}
        if LOGS is not None:
            left = {r[0] for r in conn.execute(select(LOGS.c.time_unix_nano))}
            assert left == {now - 10 * DAY}
    if db.is_postgres:
        with db.engine.connect() as conn:
            existing = partitions.existing_partitions(conn)
        assert partitions.partition_name(old_day) not in existing
        assert partitions.partition_name(mid_day) in existing  # "default" still keeps its rows
        assert report.dropped_partitions == [partitions.partition_name(old_day)]

    # Every deletion is audited, per project, with the counts.
    audit = app.get("/api/v1/admin/audit", params={"action": "retention.delete"}).json()["data"]
    assert len(audit) == 1 and audit[0]["actor"] == "test"
    assert audit[0]["details"]["counts"] == {k: v for k, v in expected_a.items() if v}
    audit_b = app.get(
        "/api/v1/admin/audit", key=b_key, params={"action": "retention.delete"}
    ).json()["data"]
    assert audit_b[0]["details"]["counts"]["spans"] == 3
    assert audit_b[0]["details"]["policy"]["spans_days"] == 30

    # A second run finds nothing more.
    again = retention.run_retention(db, DEFAULTS, now_ns=now)
    assert all(not any(p.counts.values()) for p in again.projects)
    assert again.dropped_partitions == []


def test_only_one_of_two_concurrent_runs_works(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    db = app.state.db
    now = time.time_ns()
    ingest(app, [llm_span(1, now - 400 * DAY), llm_span(2, now - DAY)])
    entered = threading.Event()
    release = threading.Event()
    real_delete_batch = retention.delete_batch

    def slow_delete_batch(*args: Any, **kwargs: Any) -> int:
        entered.set()
        assert release.wait(30), "the test never released the first run"
        return real_delete_batch(*args, **kwargs)

    monkeypatch.setattr(retention, "delete_batch", slow_delete_batch)
    results: list[retention.RetentionReport] = []
    errors: list[BaseException] = []

    def first_run() -> None:
        try:
            results.append(retention.run_retention(db, DEFAULTS, now_ns=now))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=first_run)
    worker.start()
    try:
        assert entered.wait(30), "the first run never started deleting"
        # Another server of the cluster (its own engine and connections) tries at the same time.
        other = Database(app.settings.database_url)
        try:
            second = retention.run_retention(other, DEFAULTS, now_ns=now)
        finally:
            other.dispose()
        assert second.ran is False
        assert all(not any(p.counts.values()) for p in second.projects)
    finally:
        release.set()
        worker.join(60)
    assert not errors, errors
    assert results[0].ran and results[0].total("spans") == 1
    assert span_starts(db, 1) == {now - DAY}


def test_cli_dry_run_run_and_lock(app: App) -> None:
    db = app.state.db
    now = time.time_ns()
    ingest(app, [llm_span(1, now - 400 * DAY), llm_span(2, now - 2 * DAY)])

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVATORY_")}
        env.update(
            OBSERVATORY_DATA_DIR=str(app.settings.data_dir),
            OBSERVATORY_DATABASE_URL=app.settings.database_url,
        )
        return subprocess.run(
            [str(BIN / "observatory"), *args], env=env, capture_output=True, text=True, timeout=60
        )

    dry = cli("retention", "run", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run" in dry.stdout
    row = next(line for line in dry.stdout.splitlines() if line.startswith("default "))
    assert row.split()[2:4] == ["1", "1"]  # spans, traces
    assert span_starts(db, 1) == {now - 400 * DAY, now - 2 * DAY}

    with retention.retention_lock(db) as held:
        assert held
        blocked = cli("retention", "run", "--json")
    assert blocked.returncode == 0, blocked.stderr
    assert orjson.loads(blocked.stdout)["ran"] is False
    assert span_starts(db, 1) == {now - 400 * DAY, now - 2 * DAY}

    done = cli("retention", "run", "--json")
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    assert report["ran"] is True and report["totals"]["spans"] == 1
    assert span_starts(db, 1) == {now - 2 * DAY}
    entries = app.get("/api/v1/admin/audit", params={"action": "retention.delete"}).json()["data"]
    assert [e["actor"] for e in entries] == ["cli"]


def test_scheduled_job_runs_in_the_server(
    app_factory: Callable[..., App], database_url: str
) -> None:
    app = app_factory(database_url, retention_interval_seconds=1)
    now = time.time_ns()
    ingest(app, [llm_span(1, now - 400 * DAY), llm_span(2, now - DAY)])

    def audited() -> list[dict[str, Any]]:
        params = {"action": "retention.delete"}
        return list(app.get("/api/v1/admin/audit", params=params).json()["data"])

    # The run audits once it has finished every kind: wait for the entry, not just the spans.
    # (Generous: on a loaded machine a run can wait for partition locks.)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not audited():
        time.sleep(0.2)
    assert span_starts(app.state.db, 1) == {now - DAY}
    entries = audited()
    assert entries and entries[-1]["actor"] == "system"
    assert entries[-1]["details"]["counts"]["spans"] == 1


def test_retention_settings_api_and_limits(app: App) -> None:
    view = app.get("/api/v1/admin/settings/retention").json()
    assert view["defaults"] == {
        "spans_days": 365,
        "rollups_days": 730,
        "audit_days": 365,
        "logs_days": 90,
    }
    assert view["project"] == {} and view["effective"] == view["defaults"]
    too_short = app.client.put(
        "/api/v1/admin/settings/retention", json={"audit_days": 100}, headers=app.headers()
    )
    assert too_short.status_code == 422
    message = orjson.dumps(too_short.json()["detail"]).decode()
    assert "365" in message and "audit_days" in message
    unknown = app.client.put(
        "/api/v1/admin/settings/retention", json={"span_days": 10}, headers=app.headers()
    )
    assert unknown.status_code == 422
    ok = app.client.put(
        "/api/v1/admin/settings/retention",
        json={"spans_days": 90, "audit_days": 730},
        headers=app.headers(),
    )
    assert ok.status_code == 200, ok.text
    assert ok.json()["project"] == {"spans_days": 90, "audit_days": 730}
    assert ok.json()["effective"]["spans_days"] == 90
    # Other project settings are left as they were; the overrides live under "retention".
    project = app.get("/api/v1/admin/project").json()
    assert project["settings"]["retention"] == {"spans_days": 90, "audit_days": 730}
    read_key = app.create_key("read")
    assert app.get("/api/v1/admin/settings/retention", key=read_key).status_code == 403
    entries = app.get("/api/v1/admin/audit", params={"action": "settings.retention"}).json()["data"]
    assert [e["outcome"] for e in entries] == ["ok", "invalid"]
    assert entries[0]["details"]["after"] == {"spans_days": 90, "audit_days": 730}


def test_audit_retention_below_one_year_is_refused_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={"OBSERVATORY_RETENTION_AUDIT_DAYS": "100"})
    assert "OBSERVATORY_RETENTION_AUDIT_DAYS" in str(info.value) and "365" in str(info.value)
    settings = load_settings(
        env={
            "OBSERVATORY_RETENTION_SPANS_DAYS": "30",
            "OBSERVATORY_RETENTION_INTERVAL_SECONDS": "0",
        }
    )
    assert settings.retention_spans_days == 30 and settings.retention_interval_seconds == 0
    # A hand-edited project value below the minimum never shortens audit retention.
    policy = retention.effective_policy(DEFAULTS, {"retention": {"audit_days": 10}})
    assert policy.audit_days == 365
    cli = subprocess.run(
        [str(BIN / "observatory"), "retention", "run", "--dry-run"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("OBSERVATORY_")},
            "OBSERVATORY_DATA_DIR": str(tmp_path),
            "OBSERVATORY_RETENTION_AUDIT_DAYS": "30",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 2 and "OBSERVATORY_RETENTION_AUDIT_DAYS" in cli.stderr


def test_days_are_counted_from_now(app: App) -> None:
    """The cutoffs in the report are the run's time minus each limit."""
    now = int(datetime(2027, 6, 1, tzinfo=UTC).timestamp()) * SECOND
    report = retention.run_retention(app.state.db, DEFAULTS, dry_run=True, now_ns=now)
    plan = next(p for p in report.projects if p.name == "default")
    assert plan.spans_cutoff_ns == now - 365 * DAY
    assert plan.audit_cutoff == datetime(2027, 6, 1, tzinfo=UTC) - timedelta(days=365)
    assert plan.as_dict()["cutoffs"]["rollups"].startswith("2025-06-01")


def test_partition_drop_never_waits_behind_a_long_reader(
    app_factory: Callable[..., App], pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: a query holding spans (a slow export, say) makes retention fall back to
    batched deletes instead of queueing an exclusive lock in front of ingest."""
    app = app_factory(pg_url)
    db = app.state.db
    now = time.time_ns()
    old_day = datetime.fromtimestamp((now - 400 * DAY) / 1e9, tz=UTC).date()
    with db.write() as conn:
        partitions.ensure_partitions_for(conn, {old_day})
    ingest(app, [llm_span(1, now - 400 * DAY), llm_span(2, now - DAY)])
    monkeypatch.setattr(retention, "DROP_LOCK_TIMEOUT_MS", 200)
    with psycopg.connect(pg_url) as reader:
        reader.execute("SELECT count(*) FROM spans").fetchone()  # holds ACCESS SHARE until commit
        report = retention.run_retention(db, DEFAULTS, now_ns=now)
        assert report.dropped_partitions == []
        assert report.total("spans") == 1  # deleted row by row instead
        # Ingest was not blocked meanwhile.
        ingest(app, [llm_span(3, now - 2 * DAY)])
    assert span_starts(db, 1) == {now - DAY, now - 2 * DAY}
    with db.engine.connect() as conn:
        assert partitions.partition_name(old_day) in partitions.existing_partitions(conn)
    later = retention.run_retention(db, DEFAULTS, now_ns=now)
    assert later.dropped_partitions == [partitions.partition_name(old_day)]
    assert later.total("spans") == 0
