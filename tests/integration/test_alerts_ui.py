"""The Alerts page of the web UI: rules with state and history for every signed-in key, CSRF-
protected forms for admins to create, test and delete rules, escaping, audit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from observatory.alerting.channels import Delivery
from observatory.alerting.evaluator import run_round
from observatory.store import admin
from tests.integration.alert_receivers import WebhookReceiver
from tests.integration.conftest import App
from tests.integration.test_ui_auth import csrf_from, login
from tests.otlp_builder import BASE_NS, SpanSpec, llm_attributes, protobuf_request

SECRET_PATH = "/services/T1/B1/secret-token"


@pytest.fixture
def ui(app_factory: Callable[..., App], tmp_path: Path) -> App:
    return app_factory(f"sqlite:///{tmp_path / 'ui.db'}", alert_interval_seconds=0)


def form(**changes: str) -> dict[str, str]:
    data = {
        "name": "spend",
        "metric": "cost_usd",
        "comparison": ">",
        "threshold": "0.01",
        "window": "5m",
        "model": "gpt-4o",
        "provider": "",
        "service": "",
        "environment": "",
        "webhook_url": "",
        "slack_url": "",
        "email_to": "ops@example.com",
    }
    data.update(changes)
    return data


def test_admin_creates_tests_and_deletes_rules(ui: App, webhook_receiver: WebhookReceiver) -> None:
    client = ui.client
    assert client.get("/alerts", follow_redirects=False).status_code == 303  # no session
    login(client, ui.admin_key)
    page = client.get("/alerts")
    assert page.status_code == 200 and "No alert rules yet" in page.text
    token = csrf_from(page.text)

    # Without the CSRF token, or from another origin, nothing is created.
    assert client.post("/alerts/rules", data=form()).status_code == 403
    foreign = client.post(
        "/alerts/rules",
        data={**form(), "csrf_token": token},
        headers={"Origin": "https://evil.example"},
    )
    assert foreign.status_code == 403

    bad = client.post(
        "/alerts/rules", data={**form(threshold="-1", name="kept"), "csrf_token": token}
    )
    assert bad.status_code == 422 and "threshold" in bad.text
    assert 'value="kept"' in bad.text  # the form keeps what was typed
    bad_window = client.post("/alerts/rules", data={**form(window="soon"), "csrf_token": token})
    assert bad_window.status_code == 422 and "is not a window" in bad_window.text

    created = client.post(
        "/alerts/rules",
        data={
            **form(
                name="<b>spend</b>",
                webhook_url=webhook_receiver.url + "/ui",
                slack_url=webhook_receiver.url + SECRET_PATH,
            ),
            "csrf_token": token,
        },
        follow_redirects=False,
    )  # fmt: skip
    assert created.status_code == 303, created.text
    page = client.get("/alerts")
    assert "&lt;b&gt;spend&lt;/b&gt;" in page.text and "<b>spend</b>" not in page.text
    assert "cost_usd &gt; 0.01 over 5m (model=gpt-4o)" in page.text
    assert SECRET_PATH in page.text  # admins see the full URL
    duplicate = client.post(
        "/alerts/rules", data={**form(name="<b>spend</b>"), "csrf_token": token}
    )
    assert duplicate.status_code == 409 and "already exists" in duplicate.text

    rules = client.get("/api/v1/alerts/rules", headers=ui.headers()).json()["data"]
    rule = rules[0]
    assert rule["window_seconds"] == 300 and rule["filters"] == {"model": "gpt-4o"}
    assert [c["type"] for c in rule["channels"]] == ["webhook", "slack", "email"]

    tested = client.post(f"/alerts/rules/{rule['rule_id']}/test", data={"csrf_token": token})
    assert tested.status_code == 200 and "Test notification" in tested.text
    assert [b["state"] for b in webhook_receiver.bodies("/ui")] == ["test"]
    assert [b["text"][:4] for b in webhook_receiver.bodies(SECRET_PATH)] == ["TEST"]
    assert "email ops@example.com: <strong>not_configured</strong>" in tested.text

    # A firing rule shows its state and its history.
    specs = [SpanSpec(1, n, None, "chat", BASE_NS + n, attributes=llm_attributes()) for n in (1, 2)]
    assert ui.ingest(protobuf_request(specs)).status_code == 200
    delivery = Delivery(base_url="http://ui.example", timeout_seconds=5)
    run_round(ui.state.db, delivery, clock=lambda: BASE_NS + 10**9)
    page = client.get("/alerts")
    assert "1 firing" in page.text and "0.015" in page.text
    assert "webhook sent" in page.text

    deleted = client.post(
        f"/alerts/rules/{rule['rule_id']}/delete",
        data={"csrf_token": token},
        follow_redirects=False,
    )
    assert deleted.status_code == 303
    assert "No alert rules yet" in client.get("/alerts").text
    missing = client.post(f"/alerts/rules/{rule['rule_id']}/delete", data={"csrf_token": token})
    assert missing.status_code == 404

    with ui.state.db.read() as conn:
        entries = admin.list_audit(conn, None, limit=100)
    via_ui = {(a["action"], a["outcome"]) for a in entries if a["details"].get("via") == "ui"}
    assert {
        ("alert_rule.create", "ok"),
        ("alert_rule.test", "failed"),
        ("alert_rule.delete", "ok"),
    } <= via_ui


def test_read_keys_see_rules_but_cannot_change_them(ui: App) -> None:
    response = ui.client.post(
        "/api/v1/alerts/rules",
        headers=ui.headers(),
        json={
            "name": "errors",
            "metric": "error_rate",
            "threshold": "0.1",
            "window_seconds": 3600,
            "channels": [{"type": "slack", "url": "http://127.0.0.1:9" + SECRET_PATH}],
        },
    )
    assert response.status_code == 201, response.text
    rule_id = response.json()["rule_id"]
    reader = TestClient(ui.client.app)
    login(reader, ui.create_key("read"))
    page = reader.get("/alerts")
    assert page.status_code == 200 and "error_rate &gt; 0.1 over 1h" in page.text
    assert SECRET_PATH not in page.text and "http://127.0.0.1:9/…" in page.text
    assert "Create an alert rule" not in page.text
    token = csrf_from(page.text)  # the sign-out form's token
    for path in (
        "/alerts/rules",
        f"/alerts/rules/{rule_id}/delete",
        f"/alerts/rules/{rule_id}/test",
    ):
        refused = reader.post(path, data={**form(), "csrf_token": token})
        assert refused.status_code == 403, path
    assert ui.client.get(f"/api/v1/alerts/rules/{rule_id}", headers=ui.headers()).status_code == 200
