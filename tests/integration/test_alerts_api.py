"""The alert-rule API, evaluation and CLI on both databases: validation, CRUD, roles, audit,
state changes with a fixed clock, the evaluation lock, test notifications."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import delete

from observatory import cli
from observatory.alerting.channels import Delivery
from observatory.alerting.evaluator import run_round
from observatory.model import Role
from observatory.store import admin
from observatory.store import alerts as alert_store
from observatory.store.engine import Database
from observatory.store.schema import alert_events, alert_rules
from tests.conftest import BIN, free_port
from tests.integration.alert_receivers import SmtpReceiver, WebhookReceiver
from tests.integration.conftest import App
from tests.otlp_builder import BASE_NS, SpanSpec, llm_attributes, protobuf_request

RULES = "/api/v1/alerts/rules"
SECRET_PATH = "/services/T000/B000/very-secret-token"
S = 1_000_000_000


def rule_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "spend",
        "metric": "cost_usd",
        "comparison": ">",
        "threshold": "0.01",
        "window_seconds": 5,
        "filters": {"model": "gpt-4o"},
        "channels": [
            {"type": "webhook", "url": "https://hooks.example.com" + SECRET_PATH},
            {"type": "email", "to": "ops@example.com, oncall@example.com"},
        ],
    }
    body.update(changes)
    return body


@pytest.fixture(params=["sqlite", "postgresql"])
def quiet_app(
    request: pytest.FixtureRequest, app_factory: Callable[..., App], tmp_path: Path
) -> Iterator[App]:
    """The app on SQLite and on PostgreSQL, without the background evaluator (tests drive it).

    The PostgreSQL database is shared by the tests of this module (creating one per test is
    slow): each test after the first works in a project of its own, and the alert tables are
    emptied after every test, since an evaluation round covers every project.
    """
    url = f"sqlite:///{tmp_path / 'alerts.db'}"
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
    app = app_factory(url, alert_interval_seconds=0)
    if app.client.app.state.initial_admin_key is None:  # type: ignore[attr-defined]
        with app.state.db.write() as conn:
            project = admin.create_project(conn, f"p{secrets.token_hex(4)}")
            _, app.admin_key = admin.create_key(conn, project.project_id, Role.ADMIN, "test")
    yield app
    with app.state.db.write() as conn:
        conn.execute(delete(alert_events))
        conn.execute(delete(alert_rules))


def post(app: App, body: dict[str, Any], key: str | None = None) -> Any:
    return app.client.post(RULES, json=body, headers=app.headers(key))


def test_create_read_replace_delete_with_audit(quiet_app: App) -> None:
    app = quiet_app
    created = post(app, rule_body())
    assert created.status_code == 201, created.text
    rule = created.json()
    assert rule["threshold"] == "0.01" and rule["state"] == "ok" and rule["enabled"] is True
    assert rule["filters"] == {"model": "gpt-4o"}
    assert rule["channels"][1] == {"type": "email", "to": ["ops@example.com", "oncall@example.com"]}
    assert rule["channels"][0]["url"].endswith(SECRET_PATH)  # admins see the whole URL
    rule_id = rule["rule_id"]
    listed = app.get(RULES).json()["data"]
    assert [r["rule_id"] for r in listed] == [rule_id]
    assert app.get(f"{RULES}/{rule_id}").json()["name"] == "spend"

    replaced = app.client.put(
        f"{RULES}/{rule_id}",
        json=rule_body(threshold="1E+2", comparison=">=", filters={}, channels=[]),
        headers=app.headers(),
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["threshold"] == "100" and replaced.json()["comparison"] == ">="
    assert replaced.json()["channels"] == [] and replaced.json()["filters"] == {}
    assert post(app, rule_body()).status_code == 409  # the name is taken
    other = post(app, rule_body(name="other")).json()["rule_id"]
    clash = app.client.put(f"{RULES}/{other}", json=rule_body(), headers=app.headers())
    assert clash.status_code == 409

    deleted = app.client.delete(f"{RULES}/{rule_id}", headers=app.headers())
    assert deleted.status_code == 200 and deleted.json() == {"deleted": rule_id}
    assert app.get(f"{RULES}/{rule_id}").status_code == 404
    assert app.client.delete(f"{RULES}/{rule_id}", headers=app.headers()).status_code == 404
    assert app.get(f"{RULES}/{rule_id}/history").status_code == 404

    audit = app.get("/api/v1/admin/audit", params={"limit": 50}).json()["data"]
    actions = [(a["action"], a["outcome"]) for a in audit if a["object_type"] == "alert_rule"]
    for expected in (
        ("alert_rule.create", "ok"),
        ("alert_rule.create", "conflict"),
        ("alert_rule.update", "ok"),
        ("alert_rule.update", "conflict"),
        ("alert_rule.delete", "ok"),
    ):
        assert expected in actions, expected
    # Webhook URLs can be credentials: never in the audit log.
    assert SECRET_PATH not in orjson.dumps(audit).decode()
    create = next(a for a in audit if a["action"] == "alert_rule.create" and a["outcome"] == "ok")
    assert create["details"]["channels"][0] == {
        "type": "webhook",
        "url": "https://hooks.example.com/…",
    }


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"metric": "cost"}, "metric"),
    ({"comparison": "=="}, "comparison"),
    ({"threshold": "-1"}, "threshold"),
    ({"threshold": "NaN"}, "threshold"),
    ({"threshold": "0.00000000001"}, "threshold"),
    ({"threshold": "1e16"}, "threshold"),
    ({"threshold": True}, "threshold"),
    ({"window_seconds": 0}, "window_seconds"),
    ({"window_seconds": "5"}, "window_seconds"),
    ({"window_seconds": 5.5}, "window_seconds"),
    ({"window_seconds": 40 * 86400}, "window_seconds"),
    ({"metric": "error_rate", "threshold": "2"}, "error_rate"),
    ({"name": ""}, "name"),
    ({"name": "a\nb"}, "name"),
    ({"name": "x" * 129}, "name"),
    ({"enabled": "yes"}, "enabled"),
    ({"colour": "red"}, "colour"),
    ({"filters": {"user": "u1"}}, "user"),
    ({"filters": {"model": ""}}, "model"),
    ({"channels": [{"type": "webhook", "url": "ftp://example.com/x"}]}, "http"),
    ({"channels": [{"type": "slack", "url": "javascript:alert(1)"}]}, "http"),
    ({"channels": [{"type": "webhook", "url": "http:///nohost"}]}, "host"),
    ({"channels": [{"type": "webhook", "url": "http://example.com:99999/"}]}, "port"),
    ({"channels": [{"type": "webhook", "url": "http://exa mple.com/"}]}, "spaces"),
    ({"channels": [{"type": "webhook"}]}, "url"),
    ({"channels": [{"type": "webhook", "url": "http://a.example", "to": ["x@y.z"]}]}, "url"),
    ({"channels": [{"type": "email", "url": "http://example.com"}]}, "to"),
    (
        {"channels": [{"type": "email", "to": "ops@example.com\r\nBcc: evil@example.com"}]},
        "e-mail",
    ),
    ({"channels": [{"type": "email", "to": "not-an-address"}]}, "e-mail"),
    ({"channels": [{"type": "pager", "url": "http://example.com"}]}, "type"),
    ({"channels": [{"type": "email", "to": "a@example.com"}] * 11}, "channels"),
]


def test_invalid_rules_are_refused_and_change_nothing(quiet_app: App) -> None:
    rule_id = post(quiet_app, rule_body()).json()["rule_id"]
    before = quiet_app.get(RULES).json()["data"]
    for changes, fragment in INVALID:
        response = post(quiet_app, {**rule_body(name="new"), **changes})
        assert response.status_code == 422, (changes, response.text)
        assert fragment in response.text, (changes, response.text)
        replaced = quiet_app.client.put(
            f"{RULES}/{rule_id}", json=rule_body(**changes), headers=quiet_app.headers()
        )
        assert replaced.status_code == 422, (changes, replaced.text)
    assert quiet_app.get(RULES).json()["data"] == before


def test_roles_and_project_isolation(quiet_app: App) -> None:
    app = quiet_app
    rule_id = post(app, rule_body()).json()["rule_id"]
    read_key = app.create_key("read")
    ingest_key = app.create_key("ingest")
    listed = app.get(RULES, key=read_key)
    assert listed.status_code == 200
    # A read key sees where notifications go, but not the secret part of a webhook URL.
    channel = listed.json()["data"][0]["channels"][0]
    assert channel == {"type": "webhook", "url": "https://hooks.example.com/…"}
    assert SECRET_PATH not in app.get(f"{RULES}/{rule_id}", key=read_key).text
    assert app.get(f"{RULES}/{rule_id}/history", key=read_key).status_code == 200
    assert app.get(RULES, key=ingest_key).status_code == 403
    assert app.get(RULES, key="obs_wrong").status_code == 401
    assert post(app, rule_body(name="x"), key=read_key).status_code == 403
    for method, path in (
        ("PUT", f"{RULES}/{rule_id}"),
        ("DELETE", f"{RULES}/{rule_id}"),
        ("POST", f"{RULES}/{rule_id}/test"),
    ):
        response = app.client.request(method, path, json=rule_body(), headers=app.headers(read_key))
        assert response.status_code == 403, (method, path)
    refused = app.get("/api/v1/admin/audit", params={"action": "auth.refused"}).json()["data"]
    assert any(a["object_id"] == f"POST {RULES}" and a["outcome"] == "forbidden" for a in refused)

    other = app.client.post(
        "/api/v1/admin/projects", json={"name": f"o{secrets.token_hex(4)}"}, headers=app.headers()
    )
    other_key = other.json()["admin_key"]
    assert app.get(RULES, key=other_key).json()["data"] == []
    assert app.get(f"{RULES}/{rule_id}", key=other_key).status_code == 404
    gone = app.client.delete(f"{RULES}/{rule_id}", headers=app.headers(other_key))
    assert gone.status_code == 404
    assert app.get(f"{RULES}/{rule_id}").status_code == 200
    # Rule names are per project.
    assert post(app, rule_body(), key=other_key).status_code == 201
    assert app.get(f"{RULES}/0").status_code == 422


def llm_span(n: int, start_ns: int, **kwargs: Any) -> SpanSpec:
    attrs = kwargs.pop("attributes", None) or llm_attributes()
    return SpanSpec(900, n, None, "chat", start_ns, attributes=attrs, **kwargs)


def delivery_for(receiver: WebhookReceiver, smtp: SmtpReceiver | None = None) -> Delivery:
    return Delivery(
        base_url="http://observatory.example",
        timeout_seconds=5,
        smtp_host="127.0.0.1" if smtp else None,
        smtp_port=smtp.port if smtp else 25,
        smtp_starttls=False,
    )


def test_state_changes_are_notified_once_with_a_fixed_clock(
    quiet_app: App, webhook_receiver: WebhookReceiver, smtp_receiver: SmtpReceiver
) -> None:
    app = quiet_app
    hook = webhook_receiver
    body = rule_body(
        threshold="0.01",
        channels=[
            {"type": "webhook", "url": hook.url + "/hook"},
            {"type": "slack", "url": hook.url + "/slack"},
            {"type": "email", "to": "ops@example.com"},
        ],
    )
    rule_id = post(app, body).json()["rule_id"]
    # Two gpt-4o calls (0.0075 USD each) and one other model that the filter leaves out.
    specs = [
        llm_span(1, BASE_NS),
        llm_span(2, BASE_NS + S),
        llm_span(3, BASE_NS + S, attributes=llm_attributes("gpt-4o-mini", input_tokens=10**7)),
    ]
    assert app.ingest(protobuf_request(specs)).status_code == 200
    db: Database = app.state.db
    delivery = delivery_for(hook, smtp_receiver)

    def at(offset_s: float) -> Any:
        return run_round(db, delivery, clock=lambda: BASE_NS + int(offset_s * S))

    first = at(0.5)  # one call in the window: 0.0075 is not > 0.01
    assert first.ran and first.evaluated == 1 and first.events == []
    assert app.get(f"{RULES}/{rule_id}").json()["last_value"] == "0.0075"
    firing = at(2)
    assert [e["state"] for e in firing.events] == ["firing"]
    assert firing.events[0]["value"] == "0.015"
    assert {n["outcome"] for n in firing.events[0]["notifications"]} == {"sent"}
    assert at(3).events == [] and at(4.5).events == []  # still firing: no repeat
    resolved = at(5.5)  # the first call left the 5 s window: 0.0075 again
    assert [e["state"] for e in resolved.events] == ["resolved"]
    assert resolved.events[0]["value"] == "0.0075"
    assert at(20).events == []

    hooks = hook.bodies("/hook")
    assert [h["state"] for h in hooks] == ["firing", "resolved"]
    assert hooks[0]["value"] == "0.015" and hooks[0]["threshold"] == "0.01"
    project = app.get(f"{RULES}/{rule_id}").json()["project"]
    assert hooks[0]["rule"]["name"] == "spend" and hooks[0]["project"]["name"] == project
    assert hooks[0]["window_seconds"] == 5
    assert hooks[0]["link"] == "http://observatory.example/?range=15m"
    slack = hook.bodies("/slack")
    assert len(slack) == 2 and slack[0]["text"].startswith("FIRING: spend")
    assert slack[1]["text"].startswith("RESOLVED: spend") and slack[0]["blocks"]
    mails = smtp_receiver.received()
    assert [m["Subject"].split(":")[0] for m in mails] == [
        "[LLM Observatory] FIRING",
        "[LLM Observatory] RESOLVED",
    ]
    assert mails[0]["X-Envelope-To"] == "ops@example.com"

    history = app.get(f"{RULES}/{rule_id}/history").json()["data"]
    assert [h["state"] for h in history] == ["resolved", "firing"]
    assert [n["channel"] for n in history[1]["notifications"]] == ["webhook", "slack", "email"]
    assert all(n["outcome"] == "sent" for h in history for n in h["notifications"])
    rule = app.get(f"{RULES}/{rule_id}").json()
    assert rule["state"] == "ok" and rule["last_value"] == "0"
    metrics = app.client.get("/metrics").text
    assert 'observatory_alert_notifications_total{channel="email",outcome="sent"}' in metrics


def test_metrics_comparisons_and_long_windows(
    quiet_app: App, webhook_receiver: WebhookReceiver
) -> None:
    app = quiet_app
    channels = [{"type": "webhook", "url": webhook_receiver.url + "/hook"}]
    definitions = {
        "errors": {"metric": "error_rate", "threshold": "0.5", "comparison": ">="},
        "slow": {"metric": "latency_p95_ms", "threshold": "1000"},
        "tokens": {"metric": "tokens", "threshold": "3000", "comparison": ">="},
        "quiet": {"metric": "requests", "threshold": "1", "comparison": "<"},
        "hourly": {"metric": "cost_usd", "threshold": "0.02", "window_seconds": 3600},
        "other-env": {"metric": "requests", "threshold": "0", "filters": {"environment": "prod"}},
    }
    for name, changes in definitions.items():
        body = rule_body(name=name, filters={}, channels=channels, window_seconds=60)
        body.update(changes)
        assert post(app, body).status_code == 201, name
    specs = [
        llm_span(1, BASE_NS, duration_ms=2000.0, error=True),
        llm_span(2, BASE_NS + S, duration_ms=3000.0),
        llm_span(3, BASE_NS + 2 * S, duration_ms=2500.0),
    ]
    assert app.ingest(protobuf_request(specs)).status_code == 200
    delivery = delivery_for(webhook_receiver)
    report = run_round(app.state.db, delivery, clock=lambda: BASE_NS + 30 * S)
    assert report.evaluated == len(definitions) and report.failed == 0
    states = {e["name"]: e["value"] for e in report.events}
    # error rate 1/3 < 0.5; p95 ≈ 3000 ms; 4500 tokens; 3 requests; 0.0225 USD in the hour
    # (read from the per-minute rollups); no calls from environment prod.
    assert set(states) == {"slow", "tokens", "hourly"}
    assert abs(Decimal(states["slow"]) - 3000) < 150
    assert states["tokens"] == "4500" and states["hourly"] == "0.0225"
    # Much later nothing is in the 60 s windows: "quiet" fires, the others resolve; the hourly
    # rule still sees its calls.
    later = run_round(app.state.db, delivery, clock=lambda: BASE_NS + 300 * S)
    assert sorted((e["name"], e["state"]) for e in later.events) == [
        ("quiet", "firing"),
        ("slow", "resolved"),
        ("tokens", "resolved"),
    ]
    rules = {r["name"]: r for r in app.get(RULES).json()["data"]}
    assert rules["slow"]["last_value"] is None  # no calls: no latency, not a zero
    assert rules["hourly"]["state"] == "firing"


def test_disabling_and_reminders(quiet_app: App, webhook_receiver: WebhookReceiver) -> None:
    app = quiet_app
    channels = [{"type": "webhook", "url": webhook_receiver.url + "/hook"}]
    body = rule_body(metric="requests", threshold="0", filters={}, channels=channels)
    rule_id = post(app, body).json()["rule_id"]
    assert app.ingest(protobuf_request([llm_span(1, BASE_NS)])).status_code == 200
    delivery = delivery_for(webhook_receiver)
    db = app.state.db
    assert run_round(db, delivery, 60, clock=lambda: BASE_NS + S).events[0]["state"] == "firing"
    assert run_round(db, delivery, 60, clock=lambda: BASE_NS + 2 * S).events == []
    # Reminders every 60 s while firing (the window is long enough here).
    long_body = {**body, "window_seconds": 300}
    assert (
        app.client.put(f"{RULES}/{rule_id}", json=long_body, headers=app.headers()).status_code
        == 200
    )
    reminder = run_round(db, delivery, 60, clock=lambda: BASE_NS + 62 * S)
    assert [e["state"] for e in reminder.events] == ["reminder"]
    assert run_round(db, delivery, 60, clock=lambda: BASE_NS + 70 * S).events == []
    # Disabled: back to ok without a notification, and not evaluated.
    disabled = app.client.put(
        f"{RULES}/{rule_id}", json={**long_body, "enabled": False}, headers=app.headers()
    )
    assert disabled.json()["state"] == "ok"
    assert run_round(db, delivery, 60, clock=lambda: BASE_NS + 80 * S).evaluated == 0
    assert [b["state"] for b in webhook_receiver.bodies("/hook")] == ["firing", "reminder"]


def test_one_evaluator_at_a_time(quiet_app: App, webhook_receiver: WebhookReceiver) -> None:
    app = quiet_app
    channels = [{"type": "webhook", "url": webhook_receiver.url + "/hook"}]
    post(app, rule_body(metric="requests", threshold="0", filters={}, channels=channels))
    assert app.ingest(protobuf_request([llm_span(1, BASE_NS)])).status_code == 200
    # A second Database object stands for another server on the same database.
    other = Database(app.settings.database_url)
    try:
        with alert_store.evaluation_lock(app.state.db) as held:
            assert held
            skipped = run_round(other, delivery_for(webhook_receiver), clock=lambda: BASE_NS + S)
            assert not skipped.ran and skipped.events == []
        ran = run_round(other, delivery_for(webhook_receiver), clock=lambda: BASE_NS + S)
        assert ran.ran and [e["state"] for e in ran.events] == ["firing"]
    finally:
        other.dispose()
    assert len(webhook_receiver.bodies("/hook")) == 1


def test_test_notifications_and_failing_channels(
    quiet_app: App, app_factory: Callable[..., App], webhook_receiver: WebhookReceiver
) -> None:
    app = quiet_app
    closed_port = free_port()
    channels = [
        {"type": "webhook", "url": webhook_receiver.url + "/hook"},
        {"type": "webhook", "url": f"http://127.0.0.1:{closed_port}/x"},
        {"type": "email", "to": "ops@example.com"},  # no OBSERVATORY_SMTP_HOST
    ]
    rule_id = post(app, rule_body(channels=channels)).json()["rule_id"]
    response = app.client.post(f"{RULES}/{rule_id}/test", headers=app.headers())
    assert response.status_code == 200, response.text
    outcomes = [n["outcome"] for n in response.json()["notifications"]]
    assert outcomes == ["sent", "failed", "not_configured"]
    assert [b["state"] for b in webhook_receiver.bodies("/hook")] == ["test"]
    # A failing receiver (HTTP 500) is a failed delivery, not an error of the endpoint.
    webhook_receiver.status = 500
    again = app.client.post(f"{RULES}/{rule_id}/test", headers=app.headers()).json()
    assert again["notifications"][0]["outcome"] == "failed"
    assert again["notifications"][0]["error"] == "HTTP 500"
    audit = app.get("/api/v1/admin/audit", params={"action": "alert_rule.test"}).json()["data"]
    assert {a["outcome"] for a in audit} == {"failed"}
    assert app.get(f"{RULES}/{rule_id}/history").json()["data"] == []  # tests are not history

    url = app.settings.database_url
    guarded = app_factory(url, alert_interval_seconds=0, alert_webhook_block_private=True)
    # Same database: the first app's admin key works here too.
    guarded_id = post(guarded, rule_body(name="g", channels=channels[:1]), key=app.admin_key)
    blocked = guarded.client.post(
        f"{RULES}/{guarded_id.json()['rule_id']}/test", headers=guarded.headers(app.admin_key)
    ).json()
    assert blocked["notifications"][0]["outcome"] == "blocked"
    assert "127.0.0.1" in blocked["notifications"][0]["error"]
    assert len(webhook_receiver.bodies("/hook")) == 2  # the blocked one never arrived


def test_cli(
    tmp_path: Path,
    webhook_receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import os

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OBSERVATORY_")},
        "OBSERVATORY_DATA_DIR": str(tmp_path),
    }
    # Through the installed console script once (this also migrates the new database) ...
    created = subprocess.run(
        [str(BIN / "observatory"), "alerts", "create", "--project", "default", "--name", "always",
         "--metric", "requests", "--comparison", ">=", "--threshold", "0", "--window", "5m",
         "--model", "gpt-4o", "--webhook", webhook_receiver.url + "/cli"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert created.returncode == 1 and "project 'default' does not exist" in created.stderr
    # ... then in this process, which is much faster.
    for name in [k for k in os.environ if k.startswith("OBSERVATORY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OBSERVATORY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OBSERVATORY_AUTO_MIGRATE", "false")

    def run(*args: str) -> tuple[int, str, str]:
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    assert run("projects", "create", "shop")[0] == 0
    code, _, err = run(
        "alerts", "create", "--project", "shop", "--name", "x", "--metric", "cost_usd",
        "--threshold", "-3", "--window", "1h",
    )  # fmt: skip
    assert code == 2 and "threshold" in err
    code, out, err = run(
        "alerts", "create", "--project", "shop", "--name", "always", "--metric", "requests",
        "--comparison", ">=", "--threshold", "0", "--window", "5m", "--model", "gpt-4o",
        "--webhook", webhook_receiver.url + "/cli",
    )  # fmt: skip
    assert code == 0 and "created alert rule" in out, err
    rules = orjson.loads(run("alerts", "list", "--project", "shop", "--json")[1])
    assert rules[0]["name"] == "always" and rules[0]["window_seconds"] == 300
    assert rules[0]["filters"] == {"model": "gpt-4o"}
    assert rules[0]["channels"] == [{"type": "webhook", "url": webhook_receiver.url + "/cli"}]
    rule_id = rules[0]["rule_id"]
    assert "requests >= 0 over 5m (model=gpt-4o)" in run("alerts", "list", "--project", "shop")[1]
    code, out, _ = run("alerts", "evaluate")
    assert code == 0 and "evaluated 1 rule(s), 0 failed" in out
    assert "shop/always: firing (value 0) → webhook:sent" in out
    assert [b["state"] for b in webhook_receiver.bodies("/cli")] == ["firing"]
    assert "evaluated 1 rule(s)" in run("alerts", "evaluate")[1]  # no change, no notification
    assert len(webhook_receiver.bodies("/cli")) == 1
    history = orjson.loads(run("alerts", "history", str(rule_id), "--json")[1])
    assert [h["state"] for h in history] == ["firing"]
    assert [n["outcome"] for n in history[0]["notifications"]] == ["sent"]
    code, out, _ = run("alerts", "delete", str(rule_id))
    assert code == 0 and "deleted alert rule" in out
    code, _, err = run("alerts", "delete", str(rule_id))
    assert code == 1 and "does not exist" in err
    db = Database(f"sqlite:///{tmp_path / 'observatory.db'}")
    try:
        with db.read() as conn:
            actions = {(a["action"], a["actor"]) for a in admin.list_audit(conn, None)}
    finally:
        db.dispose()
    assert {("alert_rule.create", "cli"), ("alert_rule.delete", "cli")} <= actions
