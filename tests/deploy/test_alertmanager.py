"""Alertmanager: the configuration is valid, routes by severity, keeps secrets in files, and a
real Alertmanager delivers to PagerDuty, Slack and e-mail (loopback stand-ins) and inhibits."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.monitoring_helpers import (
    ALERTMANAGER_CONFIG,
    Received,
    ReceiverSecrets,
    alert_rules,
    alertmanager_test_config,
    fake_receivers,
    http_json,
    load_yaml,
    run,
    start_alertmanager,
    tool,
    wait_for,
)

CONFIG = load_yaml(ALERTMANAGER_CONFIG)


def test_amtool_check_config() -> None:
    result = run([tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG)])
    assert result.returncode == 0, result.stdout
    assert "SUCCESS" in result.stdout
    assert " - 2 receivers" in result.stdout
    assert " - 4 inhibit rules" in result.stdout


def _route(*labels: str) -> str:
    result = run(
        [
            tool("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_CONFIG}",
            *labels,
        ]
    )
    assert result.returncode == 0, result.stdout
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=PostgresDown"], "critical"),
        (["severity=warning", "alertname=HostDiskSpaceLow"], "warning"),
        (["severity=info", "alertname=Something"], "warning"),
        (["alertname=NoSeverity"], "warning"),
    ],
)
def test_routing_by_severity(labels: list[str], receiver: str) -> None:
    assert _route(*labels) == receiver


def test_every_prometheus_alert_routes_to_its_severity_receiver() -> None:
    for rule in alert_rules():
        severity = rule["labels"]["severity"]
        assert _route(f"alertname={rule['alert']}", f"severity={severity}") == severity, rule[
            "alert"
        ]


def test_receivers_and_secrets() -> None:
    receivers = {r["name"]: r for r in CONFIG["receivers"]}
    critical, warning = receivers["critical"], receivers["warning"]
    # critical -> PagerDuty + Slack; warning -> Slack + e-mail
    assert set(critical) == {"name", "pagerduty_configs", "slack_configs"}
    assert set(warning) == {"name", "slack_configs", "email_configs"}
    assert (
        critical["pagerduty_configs"][0]["routing_key_file"] == "/run/secrets/pagerduty_routing_key"
    )
    for receiver in (critical, warning):
        assert receiver["slack_configs"][0]["api_url_file"] == "/run/secrets/slack_webhook_url"
    assert CONFIG["global"]["smtp_auth_password_file"] == "/run/secrets/smtp_password"
    # No secret value is written into the file itself.
    text = yaml.safe_dump(CONFIG)
    for key in (
        "smtp_auth_password:",
        "api_url:",
        "routing_key:",
        "service_key:",
        "slack_api_url:",
        "smtp_auth_secret:",
    ):
        assert key not in text, key
    for receiver in CONFIG["receivers"]:
        for configs in receiver.values():
            for cfg in configs if isinstance(configs, list) else []:
                assert cfg.get("send_resolved") is True, receiver["name"]


def test_critical_inhibits_warning_of_the_same_alert() -> None:
    rules = CONFIG["inhibit_rules"]
    by_severity = [r for r in rules if r.get("source_matchers") == ['severity="critical"']]
    assert len(by_severity) == 1
    assert by_severity[0]["target_matchers"] == ['severity="warning"']
    assert {"alertname", "instance", "job"} <= set(by_severity[0]["equal"])


# --- a real Alertmanager with loopback stand-ins for PagerDuty, Slack and SMTP ------------------


@pytest.fixture(scope="module")
def live_alertmanager(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Received, ReceiverSecrets]]:
    workdir = tmp_path_factory.mktemp("alertmanager")
    secrets = ReceiverSecrets()
    with fake_receivers() as (received, http_base, smtp_port):
        config = alertmanager_test_config(workdir / "secrets", http_base, smtp_port, secrets)
        path = workdir / "alertmanager.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        check = run([tool("amtool"), "check-config", str(path)])
        assert check.returncode == 0, check.stdout
        proc, base = start_alertmanager(path, workdir)
        try:
            yield base, received, secrets
        finally:
            proc.stop()


def _post(base: str, *alerts: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    payload = [
        {
            "labels": a["labels"],
            "annotations": a.get("annotations", {}),
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=10)).isoformat(),
        }
        for a in alerts
    ]
    http_json(f"{base}/api/v2/alerts", payload, method="POST")


def _mentions(body: dict[str, Any], text: str) -> bool:
    return text in json.dumps(body)


def test_critical_alert_pages_and_posts_and_inhibits_its_warning(live_alertmanager: Any) -> None:
    base, received, secrets = live_alertmanager
    labels = {"alertname": "ObservatoryApiHighErrorRate", "job": "observatory-api"}
    _post(
        base,
        {
            "labels": {**labels, "severity": "critical"},
            "annotations": {
                "summary": "9% of observatory-api requests fail with 5xx",
                "description": "More than 5%.",
                "runbook": "docs/MONITORING.md#x",
            },
        },
        {
            "labels": {**labels, "severity": "warning"},
            "annotations": {
                "summary": "9% (warning)",
                "description": "More than 1%.",
                "runbook": "docs/MONITORING.md#x",
            },
        },
    )

    events = wait_for(
        lambda: [
            b
            for b in received.posts("/pagerduty/v2/enqueue")
            if _mentions(b, "ObservatoryApiHighErrorRate")
        ],
        timeout=30,
        what="the PagerDuty event",
    )
    [event] = events
    assert event["routing_key"] == secrets.pagerduty_routing_key  # read from the secret file
    assert event["event_action"] == "trigger"
    assert event["payload"]["severity"] == "critical"
    assert "9% of observatory-api requests fail with 5xx" in event["payload"]["summary"]

    slack = wait_for(
        lambda: [
            b
            for b in received.posts(secrets.slack_path)
            if _mentions(b, "ObservatoryApiHighErrorRate")
        ],
        timeout=30,
        what="the Slack message",
    )
    assert "CRITICAL" in slack[0]["attachments"][0]["title"]

    # The warning twin is inhibited: Alertmanager reports it suppressed, and it reaches nobody.
    def warning_state() -> dict[str, Any] | None:
        alerts = http_json(f"{base}/api/v2/alerts?filter=alertname=ObservatoryApiHighErrorRate")
        return next((a["status"] for a in alerts if a["labels"]["severity"] == "warning"), None)

    status = wait_for(
        lambda: (s := warning_state()) and s["inhibitedBy"] and s,
        timeout=15,
        what="the inhibited warning",
    )
    assert status["state"] == "suppressed"
    # Give a (wrongly) uninhibited warning group time to flush (group_wait is 1 s here).
    wait_for(lambda: len(received.posts(secrets.slack_path)) >= 1, timeout=5)
    time.sleep(3)
    assert not any(_mentions(b, "9% (warning)") for b in received.posts(secrets.slack_path))
    assert not any("ObservatoryApiHighErrorRate" in m["data"] for m in received.all_mails())
    assert (
        len(
            [
                b
                for b in received.posts("/pagerduty/v2/enqueue")
                if _mentions(b, "ObservatoryApiHighErrorRate")
            ]
        )
        == 1
    )


def test_warning_alert_posts_and_mails_but_does_not_page(live_alertmanager: Any) -> None:
    base, received, secrets = live_alertmanager
    _post(
        base,
        {
            "labels": {
                "alertname": "HostDiskSpaceLow",
                "severity": "warning",
                "instance": "h1:9100",
                "mountpoint": "/data",
            },
            "annotations": {
                "summary": "Only 10.0% free on /data (h1:9100)",
                "description": "Less than 15% free.",
                "runbook": "docs/MONITORING.md#hostdiskspacelow",
            },
        },
    )
    mails = wait_for(
        lambda: [m for m in received.all_mails() if "HostDiskSpaceLow" in m["data"]],
        timeout=30,
        what="the alert e-mail",
    )
    mail = mails[0]
    user, password = mail["auth"]
    assert user == CONFIG["global"]["smtp_auth_username"]
    assert password == secrets.smtp_password  # read from the secret file
    assert mail["rcpt"] == [f"<{CONFIG['receivers'][1]['email_configs'][0]['to']}>"]
    message = email.message_from_string(mail["data"], policy=email.policy.default)
    assert message["Subject"] == "[FIRING] warning HostDiskSpaceLow (1)"
    body = message.get_body(("html", "plain"))
    assert body is not None and "Only 10.0% free on /data" in _decoded(body)

    slack = wait_for(
        lambda: [b for b in received.posts(secrets.slack_path) if _mentions(b, "HostDiskSpaceLow")],
        timeout=30,
        what="the Slack message",
    )
    attachment = slack[0]["attachments"][0]
    assert "WARNING HostDiskSpaceLow" in attachment["title"]
    assert attachment["text"] == (
        "*Only 10.0% free on /data (h1:9100)*\nLess than 15% free.\n"
        "Runbook: docs/MONITORING.md#hostdiskspacelow\n"
    )
    assert not any(
        _mentions(b, "HostDiskSpaceLow") for b in received.posts("/pagerduty/v2/enqueue")
    )


def _decoded(part: Any) -> str:
    content = part.get_content()
    if isinstance(content, bytes):
        return content.decode(errors="replace")
    try:
        return base64.b64decode(content, validate=True).decode(errors="replace")
    except ValueError:
        return str(content)


def test_secret_files_are_read_at_delivery_time(tmp_path: Path) -> None:
    """The test configuration keeps the production secret paths' file names, only in another
    directory, and never contains the secret values."""
    secrets = ReceiverSecrets()
    config = alertmanager_test_config(tmp_path, "http://127.0.0.1:1", 2, secrets)
    text = yaml.safe_dump(config)
    for value in (secrets.smtp_password, secrets.pagerduty_routing_key, secrets.slack_path):
        assert value not in text
    assert f"{tmp_path}/pagerduty_routing_key" in text
    assert f"{tmp_path}/slack_webhook_url" in text
    assert f"{tmp_path}/smtp_password" in text
