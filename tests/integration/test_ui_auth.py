"""Web UI sign-in without a browser: redirects, the session cookie, CSRF, sign-out, login links."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest
from fastapi.testclient import TestClient

from observatory import app as app_module
from observatory.store import admin
from tests.integration.conftest import App

PAGES = ["/", "/traces", "/traces/" + "a" * 32, "/sessions", "/users", "/models", "/settings"]


@pytest.fixture
def ui(app_factory: Callable[..., App], tmp_path: Path) -> App:
    return app_factory(f"sqlite:///{tmp_path / 'ui.db'}")


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def login(client: TestClient, key: str, **headers: str) -> None:
    form = client.get("/login")
    assert form.status_code == 200
    response = client.post(
        "/login",
        data={"key": key, "csrf_token": csrf_from(form.text), "next": "/"},
        headers=headers,
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/"


def audit_actions(ui: App) -> list[tuple[str, str]]:
    with ui.state.db.read() as conn:
        return [(a["action"], a["outcome"]) for a in admin.list_audit(conn, None, limit=200)]


def test_pages_without_a_session_redirect_to_login(ui: App) -> None:
    for path in PAGES:
        response = ui.client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        location = response.headers["location"]
        assert location.startswith("/login"), (path, location)
    assert (
        ui.client.get("/traces?status=error", follow_redirects=False).headers["location"]
        == "/login?next=%2Ftraces%3Fstatus%3Derror"
    )
    # An API key in a header is not a UI session.
    response = ui.client.get("/", headers=ui.headers(), follow_redirects=False)
    assert response.status_code == 303
    # htmx requests (live refresh, span panel) are told where to go instead.
    response = ui.client.get("/traces/rows", headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.headers["hx-redirect"].startswith("/login")


def test_login_sets_a_hardened_cookie_without_the_key(ui: App) -> None:
    login(ui.client, ui.admin_key)
    cookie = ui.client.cookies.get("obs_session")
    assert cookie and ui.admin_key not in cookie and admin.hash_key(ui.admin_key) not in cookie
    page = ui.client.get("/")
    assert page.status_code == 200 and "Overview" in page.text
    assert page.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # Check the Set-Cookie attributes on a fresh sign-in, behind a TLS-terminating proxy.
    ui.client.cookies.clear()
    form = ui.client.get("/login")
    response = ui.client.post(
        "/login",
        data={"key": ui.admin_key, "csrf_token": csrf_from(form.text)},
        headers={"X-Forwarded-Proto": "https"},
        follow_redirects=False,
    )
    set_cookie = next(
        v for k, v in response.headers.multi_items() if k == "set-cookie" and "obs_session=" in v
    )
    assert "HttpOnly" in set_cookie
    assert "SameSite=strict" in set_cookie or "SameSite=Strict" in set_cookie
    assert "Secure" in set_cookie
    assert "Path=/" in set_cookie
    plain = ui.client.post(
        "/login",
        data={"key": ui.admin_key, "csrf_token": csrf_from(ui.client.get("/login").text)},
        follow_redirects=False,
    )
    plain_cookie = next(v for k, v in plain.headers.multi_items() if "obs_session=" in v)
    assert "Secure" not in plain_cookie  # plain HTTP on a laptop must still work
    assert ("ui.login", "ok") in audit_actions(ui)


def test_tampered_or_foreign_cookies_are_refused(ui: App) -> None:
    login(ui.client, ui.admin_key)
    good = ui.client.cookies.get("obs_session")
    assert good is not None
    version, key_id, issued, sid, mac = good.split(".")
    forged = [
        f"{version}.{int(key_id) + 1}.{issued}.{sid}.{mac}",  # another key id
        f"{version}.{key_id}.{int(issued) + 1}.{sid}.{mac}",  # edited time
        f"{version}.{key_id}.{issued}.{sid}.{mac[:-2]}AA",  # bad signature
        "v1.1.1.x.y",
        "garbage",
    ]
    for value in forged:
        ui.client.cookies.clear()
        ui.client.cookies.set("obs_session", value)
        assert ui.client.get("/", follow_redirects=False).status_code == 303, value


def test_bad_keys_cannot_sign_in_and_are_audited(ui: App) -> None:
    ingest_key = ui.create_key("ingest")
    for key, status, text in (
        ("obs_not_a_real_key_at_all", 401, "not valid"),
        (ingest_key, 403, "only send traces"),
    ):
        form = ui.client.get("/login")
        response = ui.client.post(
            "/login",
            data={"key": key, "csrf_token": csrf_from(form.text)},
            follow_redirects=False,
        )
        assert response.status_code == status
        assert text in response.text
        assert "obs_session" not in response.headers.get("set-cookie", "")
    actions = audit_actions(ui)
    assert ("ui.login", "invalid_key") in actions
    assert ("ui.login", "ingest_only") in actions


def test_login_form_needs_its_csrf_token(ui: App) -> None:
    ui.client.get("/login")
    response = ui.client.post(
        "/login", data={"key": ui.admin_key, "csrf_token": "forged"}, follow_redirects=False
    )
    assert response.status_code == 403
    assert "obs_session" not in response.headers.get("set-cookie", "")
    # A token from a page served to somebody else (another CSRF cookie) does not fit either.
    other = TestClient(ui.client.app)
    token = csrf_from(other.get("/login").text)
    response = ui.client.post(
        "/login", data={"key": ui.admin_key, "csrf_token": token}, follow_redirects=False
    )
    assert response.status_code == 403


def test_state_changing_forms_need_csrf_and_same_origin(ui: App) -> None:
    login(ui.client, ui.admin_key)
    token = csrf_from(ui.client.get("/settings").text)
    with ui.state.db.read() as conn:
        before = len(admin.list_keys(conn))
    for data, headers in (
        ({"role": "read"}, {}),
        ({"role": "read", "csrf_token": "x" * 43}, {}),
        ({"role": "read", "csrf_token": token}, {"Origin": "https://evil.example"}),
    ):
        response = ui.client.post("/settings/keys", data=data, headers=headers)
        assert response.status_code == 403, data
    with ui.state.db.read() as conn:
        assert len(admin.list_keys(conn)) == before
    for path in ("/settings/keys/1/revoke", "/settings/prices", "/settings/projects", "/logout"):
        assert ui.client.post(path, data={"csrf_token": "nope"}).status_code == 403, path
    ok = ui.client.post(
        "/settings/keys",
        data={"role": "read", "name": "dash", "csrf_token": token},
        headers={"Origin": "http://testserver"},
    )
    assert ok.status_code == 201
    assert re.search(r"obs_[A-Za-z0-9_-]{30,}", ok.text)


def test_sign_out_ends_the_session_even_for_a_copied_cookie(ui: App) -> None:
    login(ui.client, ui.admin_key)
    copied = ui.client.cookies.get("obs_session")
    token = csrf_from(ui.client.get("/").text)
    response = ui.client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?signed_out=1"
    assert (
        'obs_session=""' in response.headers["set-cookie"]
        or "Max-Age=0" in response.headers["set-cookie"]
    )
    assert ui.client.get("/", follow_redirects=False).status_code == 303
    ui.client.cookies.set("obs_session", copied or "")
    assert ui.client.get("/", follow_redirects=False).status_code == 303
    assert ("ui.logout", "ok") in audit_actions(ui)


def test_revoking_the_key_ends_its_sessions(ui: App) -> None:
    read_key = ui.create_key("read")
    login(ui.client, read_key)
    assert ui.client.get("/traces").status_code == 200
    # A read key sees the pages but not the settings.
    assert ui.client.get("/settings").status_code == 403
    with ui.state.db.read() as conn:
        key_id = next(k.key_id for k in admin.list_keys(conn) if k.role.value == "read")
    assert ui.client.delete(f"/api/v1/admin/keys/{key_id}", headers=ui.headers()).status_code == 200
    ui.client.app.state.ui_key_cache.forget()  # other processes wait out the 5 s cache
    assert ui.client.get("/traces", follow_redirects=False).status_code == 303


def test_login_link_from_the_banner_works_once(ui: App, capsys: pytest.CaptureFixture[str]) -> None:
    with mock.patch.object(app_module.sys.stdout, "isatty", return_value=True):
        app_module._print_banner(ui.settings, ui.admin_key)
    printed = capsys.readouterr().out
    match = re.search(r"(http://\S+/login\?token=\S+)", printed)
    assert match, printed
    path = match.group(1).split("8000", 1)[1]
    assert ui.admin_key not in path
    first = ui.client.get(path, follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/"
    assert ui.client.get("/", follow_redirects=False).status_code == 200
    ui.client.cookies.clear()
    again = ui.client.get(path, follow_redirects=False)
    assert again.status_code == 400
    assert "already used" in again.text
    broken = ui.client.get(path[:-3] + "xyz", follow_redirects=False)
    assert broken.status_code == 400
    actions = audit_actions(ui)
    assert ("ui.login_link", "ok") in actions and ("ui.login_link", "already_used") in actions


def test_login_redirects_only_to_local_paths(ui: App) -> None:
    for target, expected in (
        ("/traces?status=error", "/traces?status=error"),
        ("https://evil.example/", "/"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
    ):
        ui.client.cookies.clear()
        form = ui.client.get("/login", params={"next": target})
        response = ui.client.post(
            "/login",
            data={"key": ui.admin_key, "csrf_token": csrf_from(form.text), "next": target},
            follow_redirects=False,
        )
        assert response.headers["location"] == expected, target
