"""End to end: a real Prometheus scrapes a real `observatory serve`; when the server's database
goes away its ingest answers 5xx, the production error-rate rule (same expression, shorter `for`)
fires, and Alertmanager (the production routing) delivers it to a PagerDuty stand-in."""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml

from tests.conftest import Server
from tests.deploy.monitoring_helpers import (
    ReceiverSecrets,
    ThrowawayPostgres,
    alertmanager_test_config,
    fake_receivers,
    find_alert_rule,
    http_json,
    start_alertmanager,
    start_prometheus,
    wait_for,
)

# The production rules under test, with the evaluation delay shortened for the test.
HEALTHY_SERIES = 'http_requests_total{route="/v1/traces",status="200"}'
LIVE_RULES = (("ObservatoryApiHighErrorRate", "critical"),)


def live_rules_file(path: Path) -> Path:
    rules = []
    for alertname, severity in LIVE_RULES:
        rule = find_alert_rule(alertname, severity)
        rules.append(
            {
                "alert": rule["alert"],
                "expr": rule["expr"],  # unchanged
                "for": "2s",
                "labels": rule["labels"],
                "annotations": rule["annotations"],
            }
        )
    path.write_text(yaml.safe_dump({"groups": [{"name": "live", "rules": rules}]}))
    return path


def otlp_json(n: int) -> dict[str, Any]:
    """One LLM span (OTLP/JSON), unique per n."""
    now = time.time_ns()
    attrs = {
        "gen_ai.system": {"stringValue": "openai"},
        "gen_ai.request.model": {"stringValue": "gpt-4o"},
        "gen_ai.usage.input_tokens": {"intValue": "120"},
        "gen_ai.usage.output_tokens": {"intValue": "30"},
    }
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "live-test"}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "monitoring-test"},
                        "spans": [
                            {
                                "traceId": f"{secrets.randbits(64):016x}{n:016x}",
                                "spanId": f"{n + 1:016x}",
                                "name": "chat gpt-4o",
                                "kind": 3,
                                "startTimeUnixNano": str(now - 50_000_000),
                                "endTimeUnixNano": str(now),
                                "attributes": [{"key": k, "value": v} for k, v in attrs.items()],
                            }
                        ],
                    }
                ],
            }
        ]
    }


def prometheus_config(path: Path, rules: Path, server_port: int, am_base: str) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [am_base.removeprefix("http://")]}]}]
        },
        "scrape_configs": [
            {
                # the production job name: the rules aggregate by job
                "job_name": "observatory-api",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{server_port}"]}],
            }
        ],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def alerts(prom_base: str, name: str) -> list[dict[str, Any]]:
    data = http_json(f"{prom_base}/api/v1/alerts")["data"]["alerts"]
    return [a for a in data if a["labels"]["alertname"] == name]


def query(prom_base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{prom_base}/api/v1/query?{httpx.QueryParams(query=promql)}"
    return list(http_json(url)["data"]["result"])


def test_error_rate_alert_fires_on_real_5xx_and_pages(
    server_factory: Callable[..., Server], tmp_path: Path
) -> None:
    pg = ThrowawayPostgres().start()
    stoppers: list[Callable[[], None]] = []
    try:
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE observatory")
        server = server_factory(
            database_url=pg.url("observatory"), env={"OBSERVATORY_LOG_LEVEL": "warning"}
        )
        receiver_secrets = ReceiverSecrets()
        with fake_receivers() as (received, http_base, smtp_port):
            am_config = alertmanager_test_config(
                tmp_path / "secrets", http_base, smtp_port, receiver_secrets
            )
            (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(am_config))
            am, am_base = start_alertmanager(tmp_path / "alertmanager.yml", tmp_path)
            stoppers.append(am.stop)
            rules = live_rules_file(tmp_path / "live-rules.yml")
            config = prometheus_config(tmp_path / "prometheus.yml", rules, server.port, am_base)
            prom, prom_base = start_prometheus(config, tmp_path)
            stoppers.append(prom.stop)

            client = httpx.Client(
                base_url=server.base_url,
                timeout=15,
                headers={"Authorization": f"Bearer {server.admin_key}"},
            )
            stoppers.append(client.close)
            statuses: Counter[int] = Counter()

            def ingest(n: int) -> None:
                try:
                    response = client.post("/v1/traces", json=otlp_json(n))
                except httpx.TransportError:
                    statuses[0] += 1  # connection dropped: no HTTP status
                    return
                statuses[response.status_code] += 1

            # Healthy: the server is scraped, ingest succeeds, the rule stays quiet.
            wait_for(
                lambda: query(prom_base, 'up{job="observatory-api"} == 1'),
                timeout=30,
                what="the server to be scraped",
            )
            for n in range(40):
                ingest(n)
            assert statuses == {200: 40}, statuses
            wait_for(
                lambda: query(prom_base, f"count_over_time({HEALTHY_SERIES}[1m]) >= 3"),
                timeout=30,
                what="three scrapes of the healthy traffic",
            )
            time.sleep(3)  # several rule evaluations with healthy data
            assert alerts(prom_base, "ObservatoryApiHighErrorRate") == []
            assert (
                query(prom_base, 'observatory_db_up{job="observatory-api"}')[0]["value"][1] == "1"
            )

            # The database goes away: ingest answers 5xx until the alert fires.
            pg.stop("immediate")
            n = 1000
            deadline = time.monotonic() + 90
            firing: list[dict[str, Any]] = []
            while time.monotonic() < deadline and not firing:
                for _ in range(10):
                    ingest(n)
                    n += 1
                firing = [
                    a
                    for a in alerts(prom_base, "ObservatoryApiHighErrorRate")
                    if a["state"] == "firing"
                ]
                time.sleep(0.1)
            assert firing, f"no firing alert; statuses {statuses}\n{prom.log()}"
            server_errors = sum(c for s, c in statuses.items() if s >= 500)
            assert server_errors >= 20, statuses
            [alert] = firing
            assert alert["labels"] == {
                "alertname": "ObservatoryApiHighErrorRate",
                "job": "observatory-api",
                "severity": "critical",
            }
            assert float(alert["value"]) > 0.05

            # Prometheus -> Alertmanager -> PagerDuty (and Slack), with the production routing.
            def paged() -> list[dict[str, Any]]:
                return [
                    b
                    for b in received.posts("/pagerduty/v2/enqueue")
                    if "ObservatoryApiHighErrorRate" in b["payload"]["summary"]
                ]

            [event] = wait_for(paged, timeout=60, what=f"the page\n{am.log()}")[:1]
            assert event["routing_key"] == receiver_secrets.pagerduty_routing_key
            assert event["payload"]["severity"] == "critical"
            assert "of observatory-api requests fail with 5xx" in event["payload"]["summary"]
            wait_for(
                lambda: any(
                    "ObservatoryApiHighErrorRate" in str(b)
                    for b in received.posts(receiver_secrets.slack_path)
                ),
                timeout=30,
                what="the Slack message",
            )
    finally:
        for stop in reversed(stoppers):
            stop()
        pg.cleanup()
