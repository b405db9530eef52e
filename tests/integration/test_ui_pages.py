"""Web UI pages without a browser, on SQLite and PostgreSQL: every page renders the demo data,
one project's data never shows in another's pages, untrusted content is escaped, admin actions
are audited."""

from __future__ import annotations

import html
import re
import time
from decimal import Decimal

from observatory import demo
from observatory.store import admin
from tests.integration.conftest import App
from tests.integration.test_ui_auth import csrf_from, login
from tests.otlp_builder import SpanSpec, llm_attributes, protobuf_request

XSS_PROMPT = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'


def ingest_demo(app: App, key: str | None = None, traces: int = 40) -> list[demo.DemoTrace]:
    generated = demo.build_traces(traces, 2, seed=11)
    for offset in range(0, len(generated), 20):
        response = app.ingest(demo.encode(generated[offset : offset + 20]), key=key)
        assert response.status_code == 200, response.text
    return generated


def other_project(app: App) -> str:
    response = app.client.post(
        "/api/v1/admin/projects", json={"name": "other"}, headers=app.headers()
    )
    assert response.status_code == 201, response.text
    return str(response.json()["admin_key"])


def ingest_one(app: App, key: str, trace_hex: str, prompt: str, **attrs: str) -> None:
    now = time.time_ns() - 60 * 10**9
    specs = [
        SpanSpec(
            trace=1,
            span=1,
            name="other-agent",
            start_ns=now,
            duration_ms=900,
            trace_hex=trace_hex,
            span_hex="1" * 16,
            attributes=dict(attrs),
        ),
        SpanSpec(
            trace=1,
            span=2,
            parent=1,
            name="chat gpt-4o",
            start_ns=now + 10**6,
            duration_ms=700,
            trace_hex=trace_hex,
            span_hex="2" * 16,
            attributes=llm_attributes(**{"gen_ai.input.messages": prompt}),
        ),
    ]
    # The child's parent is span 1 of this trace.
    body = protobuf_request(specs, {"service.name": "other-svc"})
    response = app.ingest(body, key=key)
    assert response.status_code == 200, response.text


def test_every_page_renders_the_demo_data(app: App) -> None:
    traces = ingest_demo(app)
    login(app.client, app.admin_key)
    overview = app.client.get("/", params={"range": "7d"})
    assert overview.status_code == 200
    assert "Top models" in overview.text and "support-agent" in overview.text
    assert 'id="chart-data"' in overview.text
    for path in ("/?range=15m", "/?range=1h", "/?range=30d", "/?environment=production"):
        assert app.client.get(path).status_code == 200, path
    custom = app.client.get("/", params={"start": "2020-01-01T00:00", "end": "2020-01-02T00:00"})
    assert custom.status_code == 200 and "Custom range" in custom.text
    bad = app.client.get("/", params={"range": "forever"})
    assert bad.status_code == 200 and "Unknown time range" in bad.text

    listing = app.client.get("/traces", params={"range": "7d", "limit": 100})
    assert listing.status_code == 200
    shown = set(re.findall(r'href="/traces/([0-9a-f]{32})"', listing.text))
    assert shown == {t.trace_id for t in traces}
    errors_only = app.client.get("/traces", params={"range": "7d", "status": "error"})
    failing = {t.trace_id for t in traces if any(s.error for s in t.spans)}
    assert set(re.findall(r'href="/traces/([0-9a-f]{32})"', errors_only.text)) <= failing
    by_cost = app.client.get("/traces", params={"range": "7d", "sort": "cost", "order": "asc"})
    assert 'aria-sort="ascending"' in by_cost.text
    page_one = app.client.get("/traces", params={"range": "7d", "limit": 25})
    next_link = re.search(r'href="([^"]*cursor=[^"]*)" *>Next page', page_one.text)
    assert next_link, "no next page link"
    page_two = app.client.get(html.unescape(next_link.group(1)))
    assert page_two.status_code == 200 and "First page" in page_two.text
    assert "no longer valid" not in page_two.text
    first_ids = set(re.findall(r'href="/traces/([0-9a-f]{32})"', page_one.text))
    second_ids = set(re.findall(r'href="/traces/([0-9a-f]{32})"', page_two.text))
    assert len(first_ids) == 25 and second_ids and not first_ids & second_ids
    rows = app.client.get("/traces/rows", params={"range": "7d"})
    assert rows.status_code == 200 and "<tr" in rows.text and "<html" not in rows.text

    agent = next(t for t in traces if t.service == "support-agent" and len(t.spans) >= 4)
    detail = app.client.get(f"/traces/{agent.trace_id}")
    assert detail.status_code == 200
    assert "invoke_agent support-agent" in detail.text and "wf-row" in detail.text
    llm = next(s for s in agent.spans if s.name.startswith("chat") and not s.error)
    panel = app.client.get(
        f"/traces/{agent.trace_id}/spans/{llm.span_id}", headers={"HX-Request": "true"}
    )
    assert panel.status_code == 200
    assert "Output" in panel.text and "gen_ai.input.messages" in panel.text
    assert "Northwind" in panel.text  # the system prompt, rendered as a message
    assert app.client.get(f"/traces/{'f' * 32}").status_code == 404
    assert app.client.get("/traces/not-an-id").status_code == 404

    session_id = agent.spans[0].attributes["session.id"]
    sessions = app.client.get("/sessions", params={"range": "7d"})
    assert sessions.status_code == 200 and session_id in sessions.text
    conversation = app.client.get(f"/sessions/{session_id}")
    assert conversation.status_code == 200
    assert agent.spans[0].attributes["input.value"] in html.unescape(conversation.text)
    user = agent.spans[0].attributes["user.id"]
    users = app.client.get("/users", params={"range": "7d", "sort": "traces"})
    assert users.status_code == 200 and user in users.text
    assert app.client.get(f"/users/{user}").status_code == 200
    for empty, listing_path in (("/sessions/", "/sessions"), ("/users/", "/users")):
        response = app.client.get(empty, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == listing_path
    models = app.client.get("/models", params={"range": "7d"})
    assert models.status_code == 200
    assert "gpt-4o-2024-08-06" in models.text and "catalogue" in models.text
    assert app.client.get("/settings").status_code == 200


def test_one_projects_data_never_appears_in_anothers_pages(app: App) -> None:
    traces = ingest_demo(app, traces=20)
    other_key = other_project(app)
    ingest_one(app, other_key, "b" * 32, "hello from the other project", **{"user.id": "zed"})
    login(app.client, other_key)
    secrets_of_default = {t.trace_id for t in traces}
    secrets_of_default |= {
        str(t.spans[0].attributes.get(name))
        for t in traces
        for name in ("user.id", "session.id")
        if t.spans[0].attributes.get(name)
    }
    secrets_of_default |= set(demo.SERVICES)
    for path in (
        "/?range=30d",
        "/traces?range=30d&limit=100",
        "/sessions?range=30d",
        "/users?range=30d",
        "/models?range=30d",
        "/settings",
    ):
        page = app.client.get(path)
        assert page.status_code == 200, path
        leaked = [s for s in secrets_of_default if s in page.text]
        assert not leaked, (path, leaked[:3])
    assert "zed" in app.client.get("/users?range=30d").text
    # Direct links into the default project answer "not found".
    assert app.client.get(f"/traces/{traces[0].trace_id}").status_code == 404
    session_id = next(
        t.spans[0].attributes["session.id"] for t in traces if "session.id" in t.spans[0].attributes
    )
    assert app.client.get(f"/sessions/{session_id}").status_code == 404
    span = traces[0].spans[-1]
    panel = app.client.get(
        f"/traces/{traces[0].trace_id}/spans/{span.span_id}", headers={"HX-Request": "true"}
    )
    assert panel.status_code == 404
    user_page = app.client.get(f"/users/{traces[0].spans[0].attributes['user.id']}")
    assert traces[0].trace_id not in user_page.text
    # And the other way round.
    app.client.cookies.clear()
    login(app.client, app.admin_key)
    assert "b" * 32 not in app.client.get("/traces?range=30d&limit=100").text
    assert app.client.get(f"/traces/{'b' * 32}").status_code == 404


def test_prompts_are_escaped_not_rendered(app: App) -> None:
    ingest_one(app, app.admin_key, "c" * 32, XSS_PROMPT, **{"session.id": "s-xss"})
    login(app.client, app.admin_key)
    for path in (f"/traces/{'c' * 32}?span={'2' * 16}", "/sessions/s-xss"):
        page = app.client.get(path)
        assert page.status_code == 200
        assert "<script>window.__xss" not in page.text
        assert "<img src=x" not in page.text
        assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in page.text or (
            "&lt;script&gt;" in page.text
        ), path


def test_admin_actions_from_the_ui_are_audited(app: App) -> None:
    login(app.client, app.admin_key)
    token = csrf_from(app.client.get("/settings").text)
    created = app.client.post(
        "/settings/keys",
        data={"role": "ingest", "name": "ci", "expires_in_days": "30", "csrf_token": token},
    )
    assert created.status_code == 201
    secret = re.search(r'id="new-secret">(obs_[^<]+)<', created.text)
    assert secret, "the new key is shown once"
    assert app.client.get("/settings").text.count(secret.group(1)) == 0  # and only once
    with app.state.db.read() as conn:
        key = next(k for k in admin.list_keys(conn) if k.name == "ci")
    assert key.expires_at is not None
    revoked = app.client.post(f"/settings/keys/{key.key_id}/revoke", data={"csrf_token": token})
    assert revoked.status_code == 200 and "was revoked" in revoked.text
    assert app.ingest(b"", key=secret.group(1)).status_code == 401
    saved = app.client.post(
        "/settings/prices",
        data={
            "csrf_token": token,
            "provider": "openai",
            "model": "gpt-4o",
            "input_usd_per_mtok": "1.5",
            "output_usd_per_mtok": "6",
        },
    )
    assert saved.status_code == 200 and "price was saved" in saved.text
    with app.state.db.read() as conn:
        price = admin.list_prices(conn, 1)[0]
    assert (price.model, price.input_usd_per_mtok) == ("gpt-4o", Decimal("1.5"))
    invalid = app.client.post(
        "/settings/prices",
        data={
            "csrf_token": token,
            "model": "x",
            "input_usd_per_mtok": "-1",
            "output_usd_per_mtok": "a",
        },
    )
    assert invalid.status_code == 422 and "between 0 and 1,000,000" in invalid.text
    deleted = app.client.post(
        f"/settings/prices/{price.price_id}/delete", data={"csrf_token": token}
    )
    assert deleted.status_code == 200 and "was removed" in deleted.text
    project = app.client.post("/settings/projects", data={"csrf_token": token, "name": "team-b"})
    assert project.status_code == 201 and "team-b created" in project.text
    clash = app.client.post("/settings/projects", data={"csrf_token": token, "name": "team-b"})
    assert clash.status_code == 409
    with app.state.db.read() as conn:
        actions = [(a["action"], a["outcome"]) for a in admin.list_audit(conn, 1, limit=100)]
    for expected in (
        ("key.create", "ok"),
        ("key.revoke", "ok"),
        ("price.set", "ok"),
        ("price.delete", "ok"),
        ("project.create", "ok"),
        ("project.create", "conflict"),
    ):
        assert expected in actions, expected
