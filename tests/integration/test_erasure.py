"""Erasure on request on both databases: exactly the spans of one user id or session id go
(also spans that match only through their trace), with their trace summaries and log records;
everyone else's data stays; the audit entry holds counts and a keyed hash, never the id."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import insert, select

from observatory.store import erasure
from observatory.store import schema as schema_module
from observatory.store.schema import audit_log, spans, traces
from tests.conftest import BIN
from tests.integration.conftest import App
from tests.otlp_builder import (
    BASE_NS,
    SpanSpec,
    agent_trace,
    llm_attributes,
    protobuf_request,
    trace_id,
)

LOGS = getattr(schema_module, "log_records", None)
ALICE = "alice@example.com"


def secret(app: App) -> str:
    return str(app.client.app.state.secret_key)  # type: ignore[attr-defined]


def ingest(app: App, specs: list[SpanSpec], key: str | None = None) -> None:
    response = app.ingest(protobuf_request(specs), key=key)
    assert response.status_code == 200, response.text


def stored(app: App, project_id: int = 1) -> dict[str, tuple[str, str | None, str | None]]:
    """span_id → (trace_id, user_id, session_id) of every stored span of the project."""
    with app.state.db.engine.connect() as conn:
        rows = conn.execute(
            select(spans.c.span_id, spans.c.trace_id, spans.c.user_id, spans.c.session_id).where(
                spans.c.project_id == project_id
            )
        )
        return {r.span_id: (r.trace_id, r.user_id, r.session_id) for r in rows}


def summaries(app: App, project_id: int = 1) -> dict[str, Any]:
    with app.state.db.engine.connect() as conn:
        rows = conn.execute(select(traces).where(traces.c.project_id == project_id))
        return {r.trace_id: r for r in rows}


def log_record(app: App, trace: str, span: str | None, n: int) -> None:
    assert LOGS is not None
    with app.state.db.write() as conn:
        conn.execute(
            insert(LOGS).values(
                project_id=1,
                time_unix_nano=BASE_NS,
                observed_time_unix_nano=BASE_NS,
                trace_id=trace,
                span_id=span,
                severity_number=9,
                body=orjson.dumps({"content": f"prompt of {n}"}).decode(),
                attributes="{}",
                resource_attributes="{}",
                flags=0,
                record_hash=f"{n:032x}",
            )
        )


def scenario(app: App) -> None:
    """Traces 1, 2: alice's (trace 2's children arrive before its root, without the id);
    trace 3: bob's, with one span carrying alice's id; trace 4: carol's; trace 5: no user."""
    ingest(app, agent_trace(1, llm_calls=2, user=ALICE, session="s-alice"))
    root, *children = agent_trace(2, llm_calls=2, user=ALICE, session="s-alice-2")
    ingest(app, children)  # no user or session on these spans …
    ingest(app, [root])  # … only the trace summary learns them from the root
    bob = agent_trace(3, llm_calls=2, user="bob", session="s-bob")
    bob.append(
        SpanSpec(
            3,
            399,
            300,
            "tool call for alice",
            BASE_NS + 3 * 10**9 + 5_000_000,
            attributes={**llm_attributes(), "user.id": ALICE},
        )
    )
    ingest(app, bob)
    ingest(app, agent_trace(4, llm_calls=1, user="carol", session="s-carol"))
    ingest(app, agent_trace(5, llm_calls=1, user=None, session=None))


def test_erasing_a_user_removes_exactly_their_spans(app: App) -> None:
    scenario(app)
    before = stored(app)
    assert before[f"{201:016x}"][1] is None  # matches only through its trace
    assert summaries(app)[trace_id(2)].user_id == ALICE
    if LOGS is not None:
        log_record(app, trace_id(1), f"{101:016x}", 1)
        log_record(app, trace_id(2), None, 2)
        log_record(app, trace_id(3), f"{399:016x}", 3)
        log_record(app, trace_id(3), f"{300:016x}", 4)
        log_record(app, trace_id(4), f"{401:016x}", 5)
    bob_before = summaries(app)[trace_id(3)]
    assert bob_before.span_count == 4

    response = app.client.post(
        "/api/v1/admin/erasure", json={"user_id": ALICE}, headers=app.headers()
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["deleted"] == {"spans": 7, "traces": 2, "logs": 3 if LOGS is not None else 0}
    assert body["subject"] == "user_id" and body["subject_hash"].startswith("hmac-sha256:")

    after = stored(app)
    gone = set(before) - set(after)
    assert gone == {s for s, (t, u, _) in before.items() if t in (trace_id(1), trace_id(2))} | {
        f"{399:016x}"
    }
    assert all(before[s] == after[s] for s in after)  # the others are untouched
    assert not [s for s, (_, u, _) in after.items() if u == ALICE]
    assert {t for t, _, _ in after.values()} == {trace_id(3), trace_id(4), trace_id(5)}
    left = summaries(app)
    assert set(left) == {trace_id(3), trace_id(4), trace_id(5)}
    bob_after = left[trace_id(3)]
    # Bob's trace lost alice's span: its summary is recomputed from what remains.
    assert bob_after.span_count == 3 and bob_after.llm_call_count == 2
    assert bob_after.input_tokens == bob_before.input_tokens - 1000
    assert bob_after.user_id == "bob" and bob_after.root_span_name == "agent"
    assert left[trace_id(4)].span_count == 2
    if LOGS is not None:
        with app.state.db.engine.connect() as conn:
            remaining = {r[0] for r in conn.execute(select(LOGS.c.record_hash))}
        assert remaining == {f"{4:032x}", f"{5:032x}"}
    # The API agrees: alice's traces are gone, bob's and carol's are there.
    assert app.get(f"/api/v1/traces/{trace_id(1)}").status_code == 404
    assert app.get(f"/api/v1/traces/{trace_id(3)}").json()["trace"]["span_count"] == 3

    # Audited with counts and a keyed hash; the raw id appears nowhere in the audit log.
    entries = app.get("/api/v1/admin/audit", params={"action": "data.erase"}).json()["data"]
    assert len(entries) == 1
    entry = entries[0]
    assert entry["outcome"] == "ok" and entry["object_type"] == "user_id"
    assert entry["object_id"] == body["subject_hash"]
    assert entry["details"]["spans"] == 7 and entry["details"]["traces"] == 2
    expected_hash = erasure.subject_hash(secret(app), "user_id", ALICE)
    assert entry["details"]["subject_hash"] == expected_hash
    with app.state.db.engine.connect() as conn:
        audit_text = repr([tuple(r) for r in conn.execute(select(audit_log))])
    assert "data.erase" in audit_text and ALICE not in audit_text

    # Erasure is idempotent.
    again = app.client.post("/api/v1/admin/erasure", json={"user_id": ALICE}, headers=app.headers())
    assert again.json()["deleted"] == {"spans": 0, "traces": 0, "logs": 0}


def test_erasing_a_session(app: App) -> None:
    scenario(app)
    before = stored(app)
    response = app.client.post(
        "/api/v1/admin/erasure", json={"session_id": "s-alice-2"}, headers=app.headers()
    )
    assert response.status_code == 200, response.text
    assert response.json()["deleted"]["spans"] == 3
    assert response.json()["deleted"]["traces"] == 1
    after = stored(app)
    assert set(before) - set(after) == {s for s, (t, _, _) in before.items() if t == trace_id(2)}
    assert trace_id(1) in summaries(app)


def test_erasure_is_per_project_and_admin_only(app: App) -> None:
    scenario(app)
    created = app.client.post(
        "/api/v1/admin/projects", json={"name": "other"}, headers=app.headers()
    )
    other_key = created.json()["admin_key"]
    other_id = created.json()["project_id"]
    ingest(app, agent_trace(1, llm_calls=1, user=ALICE), key=other_key)
    read_key = app.create_key("read")
    denied = app.client.post(
        "/api/v1/admin/erasure", json={"user_id": ALICE}, headers=app.headers(read_key)
    )
    assert denied.status_code == 403
    for bad in ({}, {"user_id": ALICE, "session_id": "s"}, {"user_id": ""}, {"email": ALICE}):
        response = app.client.post("/api/v1/admin/erasure", json=bad, headers=app.headers())
        assert response.status_code == 422, bad
    done = app.client.post(
        "/api/v1/admin/erasure", json={"user_id": ALICE}, headers=app.headers(other_key)
    )
    assert done.json()["deleted"]["spans"] == 2
    assert stored(app, other_id) == {}
    assert len([s for s in stored(app).values() if s[1] == ALICE]) == 5  # project 1 untouched


def test_cli_erase(app_factory: Any, tmp_path: Path) -> None:
    app = app_factory(f"sqlite:///{tmp_path / 'erase.db'}")
    scenario(app)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVATORY_")}
    env.update(
        OBSERVATORY_DATA_DIR=str(app.settings.data_dir),
        OBSERVATORY_DATABASE_URL=app.settings.database_url,
    )
    result = subprocess.run(
        [str(BIN / "observatory"), "erase", "--project", "default", "--user-id", ALICE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "7 spans" in result.stdout and ALICE not in result.stdout
    assert not [s for s in stored(app).values() if s[1] == ALICE]
    entries = app.get("/api/v1/admin/audit", params={"action": "data.erase"}).json()["data"]
    assert entries[0]["actor"] == "cli" and entries[0]["details"]["spans"] == 7
    # The CLI and the server share the data directory, hence the key: the hashes agree.
    expected = erasure.subject_hash(secret(app), "user_id", ALICE)
    assert entries[0]["object_id"] == expected
    usage = subprocess.run(
        [str(BIN / "observatory"), "erase", "--project", "default"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert usage.returncode == 2


def test_erasure_in_many_small_batches(app: App) -> None:
    """Batches of one: whole traces one by one, and single spans streamed from one scan while
    each is deleted in its own transaction."""
    scenario(app)
    extra = [
        SpanSpec(
            3,
            390 + i,
            300,
            "for alice",
            BASE_NS + 3 * 10**9 + i * 1_000_000,
            attributes={**llm_attributes(), "user.id": ALICE},
        )
        for i in range(1, 4)
    ]
    ingest(app, extra)
    before = stored(app)
    result = erasure.erase(app.state.db, 1, user_id=ALICE, batch_rows=1)
    assert result.as_dict()["spans"] == 10
    after = stored(app)
    assert not [s for s in after.values() if s[1] == ALICE]
    assert len(before) - len(after) == 10
    assert summaries(app)[trace_id(3)].span_count == 3  # bob's trace keeps bob's spans
    assert erasure.erase(app.state.db, 1, user_id=ALICE, batch_rows=1).as_dict() == {
        "spans": 0,
        "traces": 0,
        "logs": 0,
    }
