"""Authorisation matrix: every endpoint of the OpenAPI document by every kind of key."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from observatory.model import Role
from observatory.store import admin
from observatory.store.engine import Database
from tests.conftest import Server, start_server
from tests.otlp_builder import agent_trace, protobuf_request, trace_id

FAKE_IDS = {"trace_id": trace_id(1), "section": "redaction", "format": "jsonl"}


def needed_role(method: str, path: str) -> Role:
    if path.startswith("/v1/"):
        return Role.INGEST
    if path.startswith("/api/v1/admin/"):
        return Role.ADMIN
    if path.startswith("/api/v1/alerts") and method != "GET":
        return Role.ADMIN
    return Role.READ


def fill(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: FAKE_IDS.get(m.group(1), "1"), path)


def _make_keys(server: Server) -> dict[str, object]:
    """A trace to read, another project's admin key, a key of every role, a revoked and an
    expired key."""
    with server.client() as client:
        assert (
            client.post(
                "/v1/traces",
                content=protobuf_request(agent_trace(1, 1)),
                headers={"Content-Type": "application/x-protobuf"},
            ).status_code
            == 200
        )
        other = client.post("/api/v1/admin/projects", json={"name": "other"}).json()["admin_key"]
    db = Database(f"sqlite:///{server.data_dir / 'observatory.db'}")
    try:
        with db.write() as conn:
            pid = admin.get_project(conn, name="default").project_id
            made = {role.value: admin.create_key(conn, pid, role)[1] for role in Role}
            revoked, revoked_secret = admin.create_key(conn, pid, Role.ADMIN)
            admin.revoke_key(conn, revoked.key_id)
            _, expired = admin.create_key(
                conn, pid, Role.ADMIN, expires_at=datetime.now(UTC) - timedelta(days=1)
            )
    finally:
        db.dispose()
    return {"other": other, "revoked": revoked_secret, "expired": expired, **made}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    server = start_server(
        tmp_path_factory.mktemp("authz"),
        env={"OBSERVATORY_RATE_LIMIT_KEY_REQUESTS_PER_MINUTE": "0"},
    )
    try:
        yield {"server": server, **_make_keys(server)}
    finally:
        server.stop()


def operations(server: Server) -> list[tuple[str, str]]:
    with server.client() as client:
        doc = client.get("/openapi.json").json()
    return [
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    ]


def test_every_endpoint_refuses_bad_keys_and_weak_roles(keys: dict[str, object]) -> None:
    server: Server = keys["server"]  # type: ignore[assignment]
    ops = operations(server)
    assert len(ops) >= 15
    seen = []
    import httpx

    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for method, path in ops:
            url = fill(path)
            role = needed_role(method, path)
            cases: dict[str, object] = {
                "none": None,
                "wrong": "obs_" + "x" * 40,
                "revoked": keys["revoked"],
                "expired": keys["expired"],
                "ingest": keys["ingest"],
                "read": keys["read"],
                "admin": keys["admin"],
                "other": keys["other"],
            }
            if path.startswith("/health/"):
                # Public by design: load balancers and orchestrators probe them without keys.
                assert client.get(url).status_code in (200, 503)
                continue
            for name, key in cases.items():
                if method == "DELETE" and name in ("admin", "other"):
                    continue  # do not delete real objects mid-matrix
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                if path.startswith("/v1/"):
                    headers["Content-Type"] = "application/x-protobuf"
                    response = client.request(method, url, headers=headers, content=b"")
                else:
                    response = client.request(
                        method,
                        url,
                        headers=headers,
                        json={} if method in ("POST", "PUT", "PATCH") else None,
                    )
                status = response.status_code
                if name in ("none", "wrong", "revoked", "expired"):
                    expected = {401}
                elif name == "other":
                    expected = set(range(200, 500)) - {401, 403}
                else:
                    allowed = Role(str(name)).allows(role)
                    expected = set(range(200, 500)) - {401, 403} if allowed else {403}
                assert status in expected, (method, path, name, status, response.text[:200])
                seen.append((method, path, name, status))
    # Another project's key never reaches this project's trace.
    with server.client(key=str(keys["other"])) as client:
        assert client.get(f"/api/v1/traces/{trace_id(1)}").status_code == 404
    logs = server.logs()
    for secret in ("revoked", "expired", "ingest", "read", "admin", "other"):
        assert str(keys[secret]) not in logs, f"the {secret} key appears in the server log"
    assert len(seen) > 100
    _ = Callable
