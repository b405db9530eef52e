"""In-app alerts end to end on real server processes: spend passes a threshold, a local webhook
receiver, a Slack-compatible receiver and a local SMTP server (aiosmtpd) each get exactly one
firing and one resolved notification; two servers on one database notify once per change."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import Server
from tests.integration.alert_receivers import SmtpReceiver, WebhookReceiver, wait_for
from tests.otlp_builder import SpanSpec, llm_attributes, now_ns, protobuf_request

WINDOW_SECONDS = 5
# Rounds that must pass quietly after the resolution (at one round per second).
QUIET_SECONDS = 4


def alert_env(smtp: SmtpReceiver | None = None) -> dict[str, str]:
    env = {"OBSERVATORY_ALERT_INTERVAL_SECONDS": "1", "OBSERVATORY_ALERT_TIMEOUT_SECONDS": "5"}
    if smtp is not None:
        env.update(
            OBSERVATORY_SMTP_HOST="127.0.0.1",
            OBSERVATORY_SMTP_PORT=str(smtp.port),
            OBSERVATORY_SMTP_STARTTLS="false",
            OBSERVATORY_SMTP_FROM="alerts@observatory.test",
        )
    return env


def create_rule(server: Server, channels: list[dict[str, Any]]) -> int:
    with server.client() as client:
        response = client.post(
            "/api/v1/alerts/rules",
            json={
                "name": "spend",
                "metric": "cost_usd",
                "comparison": ">",
                "threshold": "0.01",
                "window_seconds": WINDOW_SECONDS,
                "channels": channels,
            },
        )
    assert response.status_code == 201, response.text
    return int(response.json()["rule_id"])


def spend(server: Server) -> None:
    """Three gpt-4o calls (0.0075 USD each, 0.0225 together) starting now."""
    start = now_ns()
    specs = [
        SpanSpec(7, n, None, "chat gpt-4o", start + n * 1_000_000, attributes=llm_attributes())
        for n in (1, 2, 3)
    ]
    response = httpx.post(
        f"{server.base_url}/v1/traces",
        content=protobuf_request(specs),
        headers={
            "Authorization": f"Bearer {server.admin_key}",
            "Content-Type": "application/x-protobuf",
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text


def states(bodies: list[dict[str, Any]]) -> list[str]:
    return [b["state"] for b in bodies]


def subjects(smtp: SmtpReceiver) -> list[str]:
    return [str(m["Subject"]).split(":")[0] for m in smtp.received()]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_spend_alert_fires_and_resolves_once_per_channel(
    backend: str,
    request: pytest.FixtureRequest,
    server_factory: Callable[..., Server],
    webhook_receiver: WebhookReceiver,
    smtp_receiver: SmtpReceiver,
) -> None:
    database_url = request.getfixturevalue("fresh_pg_url") if backend == "postgresql" else None
    server = server_factory(database_url=database_url, env=alert_env(smtp_receiver))
    hook = webhook_receiver
    rule_id = create_rule(
        server,
        [
            {"type": "webhook", "url": hook.url + "/hook"},
            {"type": "slack", "url": hook.url + "/slack"},
            {"type": "email", "to": ["oncall@example.com"]},
        ],
    )
    time.sleep(2)  # a couple of rounds with no spend: nothing is sent
    assert hook.requests == [] and smtp_receiver.received() == []

    spend(server)
    wait_for(
        lambda: len(hook.requests) >= 2 and len(smtp_receiver.received()) >= 1,
        15,
        "the firing notifications",
    )
    wait_for(
        lambda: len(hook.requests) >= 4 and len(smtp_receiver.received()) >= 2,
        WINDOW_SECONDS + 15,
        "the resolved notifications",
    )
    time.sleep(QUIET_SECONDS)  # more rounds: no repeats

    webhook = hook.bodies("/hook")
    assert states(webhook) == ["firing", "resolved"]
    assert webhook[0]["value"] == "0.0225" and webhook[0]["threshold"] == "0.01"
    assert webhook[0]["rule"]["rule_id"] == rule_id
    assert webhook[0]["project"]["name"] == "default"
    assert webhook[0]["link"].startswith(server.base_url + "/?range=")
    assert webhook[1]["value"] == "0"
    slack = hook.bodies("/slack")
    assert [s["text"].split(":")[0] for s in slack] == ["FIRING", "RESOLVED"]
    assert all(s["blocks"] for s in slack)
    assert subjects(smtp_receiver) == ["[LLM Observatory] FIRING", "[LLM Observatory] RESOLVED"]
    first_mail = smtp_receiver.received()[0]
    assert first_mail["From"] == "alerts@observatory.test"
    assert first_mail["X-Envelope-To"] == "oncall@example.com"
    assert len(hook.requests) == 4

    with server.client() as client:
        history = client.get(f"/api/v1/alerts/rules/{rule_id}/history").json()["data"]
        rule = client.get(f"/api/v1/alerts/rules/{rule_id}").json()
        metrics = client.get("/metrics").text
    assert [h["state"] for h in history] == ["resolved", "firing"]
    assert all(n["outcome"] == "sent" for h in history for n in h["notifications"])
    assert rule["state"] == "ok" and rule["last_value"] == "0"
    for channel in ("webhook", "slack", "email"):
        line = f'observatory_alert_notifications_total{{channel="{channel}",outcome="sent"}} 2.0'
        assert line in metrics, channel


def test_two_servers_on_one_postgresql_notify_once(
    fresh_pg_url: str, server_factory: Callable[..., Server], webhook_receiver: WebhookReceiver
) -> None:
    servers = [server_factory(database_url=fresh_pg_url, env=alert_env()) for _ in range(2)]
    hook = webhook_receiver
    create_rule(servers[1], [{"type": "webhook", "url": hook.url + "/hook"}])
    spend(servers[0])
    wait_for(lambda: len(hook.requests) >= 1, 15, "the firing notification")
    wait_for(lambda: len(hook.requests) >= 2, WINDOW_SECONDS + 15, "the resolved notification")
    time.sleep(QUIET_SECONDS)
    assert states(hook.bodies("/hook")) == ["firing", "resolved"]
    assert all(s.process.poll() is None for s in servers)
    # Across both servers, two notifications were sent in all.
    sent = 0
    for server in servers:
        with server.client() as client:
            text = client.get("/metrics").text
        for line in text.splitlines():
            if line.startswith('observatory_alert_notifications_total{channel="webhook"'):
                sent += int(float(line.rsplit(" ", 1)[1]))
    assert sent == 2
