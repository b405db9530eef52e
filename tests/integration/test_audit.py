"""The audit log on both databases: an entry for every kind of action (admin action, refused
authentication, export, erasure, retention deletion), filters, the CLI, and append-only
guarantees: no API route changes it and the database refuses UPDATE (and DELETE outside the
retention job on PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError

from observatory.store import retention
from observatory.store.schema import audit_log
from tests.conftest import BIN
from tests.integration.conftest import App
from tests.otlp_builder import SpanSpec, agent_trace, llm_attributes, protobuf_request

DAY = 86_400 * 10**9


def actions(app: App, **params: str) -> list[tuple[str, str]]:
    data = app.get("/api/v1/admin/audit", params={"limit": "1000", **params}).json()["data"]
    return [(e["action"], e["outcome"]) for e in data]


def test_every_kind_of_action_is_audited_and_filterable(app: App) -> None:
    started = datetime.now(tz=UTC) - timedelta(seconds=1)
    # An admin action.
    read_key = app.create_key("read")
    # Refused authentications: no key, an unknown key, a key without the role.
    assert app.client.get("/api/v1/traces").status_code == 401
    assert app.get("/api/v1/traces", key="obs_not_a_key").status_code == 401
    assert app.get("/api/v1/admin/keys", key=read_key).status_code == 403
    # An export.
    now = time.time_ns()
    assert (
        app.ingest(
            protobuf_request(
                [
                    *agent_trace(1, llm_calls=1, start_ns=now - 400 * DAY),
                    SpanSpec(2, 2, None, "chat", now - DAY, attributes=llm_attributes()),
                ]
            )
        ).status_code
        == 200
    )
    assert (
        app.get("/api/v1/export/spans", key=read_key, params={"format": "csv"}).status_code == 200
    )
    # An erasure.
    erased = app.client.post(
        "/api/v1/admin/erasure", json={"session_id": "session-1"}, headers=app.headers()
    )
    assert erased.status_code == 200 and erased.json()["deleted"]["spans"] == 2
    # A retention deletion.
    assert (
        app.ingest(protobuf_request([SpanSpec(3, 3, None, "old", now - 500 * DAY)])).status_code
        == 200
    )
    report = retention.run_retention(app.state.db, retention.RetentionPolicy())
    assert report.total("spans") == 1

    seen = set(actions(app))
    for expected in (
        ("project.bootstrap", "ok"),
        ("key.create", "ok"),
        ("auth.refused", "forbidden"),
        ("export", "ok"),
        ("data.erase", "ok"),
        ("retention.delete", "ok"),
    ):
        assert expected in seen, expected
    # Who, what, which object, from where, when, outcome.
    export_entry = app.get("/api/v1/admin/audit", params={"action": "export"}).json()["data"][0]
    assert export_entry["actor"] == read_key[:12] and export_entry["key_id"] is not None
    assert export_entry["object_type"] == "spans" and export_entry["object_id"] == "csv"
    assert export_entry["remote_addr"] == "testclient"
    assert datetime.fromisoformat(export_entry["at"]) >= started
    forbidden = app.get(
        "/api/v1/admin/audit", params={"action": "auth.refused", "outcome": "forbidden"}
    ).json()["data"]
    assert len(forbidden) == 1 and forbidden[0]["object_id"] == "GET /api/v1/admin/keys"

    # Filters: action, outcome, since; pagination by before_id.
    assert set(actions(app, action="auth.refused")) == {("auth.refused", "forbidden")}, (
        "refusals without a known key belong to no project"
    )
    assert actions(app, outcome="forbidden") == [("auth.refused", "forbidden")]
    future = (datetime.now(tz=UTC) + timedelta(hours=1)).isoformat()
    assert actions(app, since=future) == []
    assert len(actions(app, since=started.isoformat())) == len(actions(app))
    assert app.get("/api/v1/admin/audit", params={"since": "yesterday"}).status_code == 422
    first_two = app.get("/api/v1/admin/audit", params={"limit": "2"}).json()["data"]
    rest = app.get(
        "/api/v1/admin/audit", params={"before_id": str(first_two[-1]["audit_id"])}
    ).json()["data"]
    assert rest and rest[0]["audit_id"] < first_two[-1]["audit_id"]
    # Refused authentications without a known key are kept too, under no project.
    with app.state.db.engine.connect() as conn:
        unscoped = conn.execute(
            select(audit_log.c.outcome, audit_log.c.object_id).where(
                audit_log.c.project_id.is_(None), audit_log.c.action == "auth.refused"
            )
        ).all()
    assert sorted(unscoped) == [
        ("missing_key", "GET /api/v1/traces"),
        ("unknown_key", "GET /api/v1/traces"),
    ]


def all_routes(routes: list[Any]) -> Iterator[Any]:
    """Every route, also inside included routers (newer FastAPI wraps them)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from all_routes(list(inner.routes))
        else:
            yield route


def test_no_route_can_change_the_audit_log(app: App) -> None:
    routes = [
        r
        for r in all_routes(app.client.app.routes)  # type: ignore[attr-defined]
        if "audit" in (getattr(r, "path", "") or "")
    ]
    assert [r.path for r in routes] == ["/api/v1/admin/audit"]
    for route in routes:
        assert set(route.methods) <= {"GET", "HEAD"}, (route.path, route.methods)
    for method in ("PUT", "PATCH", "DELETE", "POST"):
        response = app.client.request(method, "/api/v1/admin/audit", headers=app.headers())
        assert response.status_code == 405, method
        one = app.client.request(method, "/api/v1/admin/audit/1", headers=app.headers())
        assert one.status_code in (404, 405), method
    doc = app.client.get("/openapi.json").json()
    for path, operations in doc["paths"].items():
        if "audit" in path:
            assert set(operations) == {"get"}, path


def test_the_database_refuses_to_alter_audit_entries(app: App) -> None:
    db = app.state.db
    assert app.get("/api/v1/admin/keys").status_code == 200
    app.create_key("read")
    with db.engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(audit_log)).scalar_one()
    assert count >= 2
    with pytest.raises(DBAPIError) as info, db.write() as conn:
        conn.execute(update(audit_log).values(outcome="forged"))
    assert "append-only" in str(info.value)
    with pytest.raises(DBAPIError), db.write() as conn:
        conn.execute(update(audit_log).where(audit_log.c.audit_id == 1).values(actor="someone"))
    with db.engine.connect() as conn:
        assert (
            conn.execute(
                select(func.count()).select_from(audit_log).where(audit_log.c.outcome == "forged")
            ).scalar_one()
            == 0
        )
    if db.is_postgres:
        # DELETE and TRUNCATE are refused too, unless the retention job's setting is on.
        with pytest.raises(DBAPIError) as deleting, db.write() as conn:
            conn.execute(delete(audit_log))
        assert "append-only" in str(deleting.value)
        with pytest.raises(DBAPIError), db.write() as conn:
            conn.execute(text("TRUNCATE audit_log"))
        with pytest.raises(DBAPIError), db.write() as conn:
            # The retention setting allows DELETE only, never UPDATE.
            conn.execute(text("SET LOCAL observatory.audit_retention = 'on'"))
            conn.execute(update(audit_log).values(outcome="forged"))
        with db.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(audit_log)).scalar_one() == count
        old = datetime.now(tz=UTC) - timedelta(days=400)
        with db.write() as conn:
            conn.execute(
                insert(audit_log).values(at=old, action="test.old", outcome="ok", details="{}")
            )
        with db.write() as conn:
            conn.execute(text("SET LOCAL observatory.audit_retention = 'on'"))
            deleted = conn.execute(delete(audit_log).where(audit_log.c.action == "test.old"))
        assert deleted.rowcount == 1
        # The setting is transaction-local: the next transaction is refused again.
        with pytest.raises(DBAPIError), db.write() as conn:
            conn.execute(delete(audit_log))


def test_cli_audit_list(app_factory: Callable[..., App], tmp_path: Path) -> None:
    # The CLI shares the store code with the API (tested on both databases): SQLite suffices.
    app = app_factory(f"sqlite:///{tmp_path / 'audit.db'}")
    app.create_key("read")
    assert app.get("/api/v1/traces", key="obs_unknown_key_for_cli").status_code == 401
    created = app.client.post(
        "/api/v1/admin/projects", json={"name": "other"}, headers=app.headers()
    )
    other_key = created.json()["admin_key"]
    assert (
        app.client.post(
            "/api/v1/admin/keys", json={"role": "ingest"}, headers=app.headers(other_key)
        ).status_code
        == 201
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVATORY_")}
    env.update(
        OBSERVATORY_DATA_DIR=str(app.settings.data_dir),
        OBSERVATORY_DATABASE_URL=app.settings.database_url,
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "observatory"), "audit", "list", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    listing = cli("--project", "default", "--action", "key.create", "--limit", "5", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = orjson.loads(listing.stdout)
    assert [r["action"] for r in rows] == ["key.create"] and rows[0]["project_id"] == 1
    everything = cli("--limit", "50")
    assert everything.returncode == 0
    lines = everything.stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "AT", "(UTC)"]
    assert any("other" in line and "key.create" in line for line in lines)
    assert any("auth.refused" in line and "unknown_key" in line for line in lines)
    limited = cli("--limit", "1", "--json")
    assert len(orjson.loads(limited.stdout)) == 1
    missing = cli("--project", "nope")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
