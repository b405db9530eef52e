"""Alert rules without a database: the state machine, metric extraction, message formats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from observatory.alerting.channels import Delivery, Notice, email_message, link, slack_payload
from observatory.alerting.evaluator import decide, metric_value
from observatory.alerting.rules import parse_window, redact_url, window_text
from observatory.store.alerts import AlertRule

AT = datetime(2026, 1, 1, tzinfo=UTC)


def rule(**changes: object) -> AlertRule:
    values: dict[str, object] = {
        "rule_id": 1,
        "project_id": 1,
        "project_name": "shop",
        "name": "spend <today> & more",
        "metric": "cost_usd",
        "comparison": ">",
        "threshold": "5",
        "window_seconds": 3600,
    }
    values.update(changes)
    return AlertRule(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("state", "comparison", "value", "expected"),
    [
        ("ok", ">", Decimal("5.01"), "firing"),
        ("ok", ">", Decimal(5), None),
        ("ok", ">=", Decimal(5), "firing"),
        ("ok", "<", Decimal(0), "firing"),
        ("ok", "<=", Decimal("5.000001"), None),
        ("firing", ">", Decimal(6), None),
        ("firing", ">", Decimal(5), "resolved"),
        ("firing", "<", None, "resolved"),  # no data never holds a condition
        ("ok", "<", None, None),
    ],
)
def test_decide_notifies_only_on_changes(
    state: str, comparison: str, value: Decimal | None, expected: str | None
) -> None:
    assert decide(rule(state=state, comparison=comparison), value, AT) == expected


def test_reminders_only_when_asked_and_due() -> None:
    firing = rule(state="firing", last_notified_at=AT - timedelta(seconds=30))
    assert decide(firing, Decimal(9), AT, renotify_seconds=0) is None
    assert decide(firing, Decimal(9), AT, renotify_seconds=60) is None
    assert decide(firing, Decimal(9), AT, renotify_seconds=30) == "reminder"


def test_metric_values_from_an_analytics_total() -> None:
    total = {
        "requests": 4,
        "errors": 1,
        "error_rate": 0.25,
        "total_tokens": 1234,
        "cost_usd": "0.0000001",
        "latency_ms": {"p50": 12.34567, "p90": None, "p95": 20.0, "p99": 25.0},
    }
    assert metric_value("cost_usd", total) == Decimal("0.0000001")
    assert metric_value("error_rate", total) == Decimal("0.25")
    assert metric_value("tokens", total) == 1234
    assert metric_value("requests", total) == 4
    assert metric_value("latency_p50_ms", total) == Decimal("12.346")
    assert metric_value("latency_p90_ms", total) is None
    assert metric_value("latency_p95_ms", {**total, "requests": 0}) is None
    with pytest.raises(ValueError, match="unknown metric"):
        metric_value("vibes", total)


def test_windows_and_redaction() -> None:
    assert [parse_window(t) for t in ("90", "90s", "5m", "1h", "2d")] == [90, 90, 300, 3600, 172800]
    for bad in ("", "1w", "-5", "5 minutes"):
        with pytest.raises(ValueError, match="not a window"):
            parse_window(bad)
    assert [window_text(s) for s in (5, 300, 7200, 86400)] == ["5s", "5m", "2h", "1d"]
    assert redact_url("https://hooks.slack.com/services/T/B/X") == "https://hooks.slack.com/…"
    assert redact_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080"
    assert redact_url("http://[::1]:9/x?token=1") == "http://[::1]:9/…"


def test_messages_escape_and_link() -> None:
    delivery = Delivery(base_url="https://obs.example", smtp_from="alerts@obs.example")
    notice = Notice("firing", rule(filters={"environment": "prod", "model": "gpt-4o"}), "7.5", AT)
    assert link(notice, delivery) == "https://obs.example/?range=1h&environment=prod"
    slack = slack_payload(notice, delivery)
    assert slack["text"].startswith("FIRING: spend <today> & more — cost_usd is 7.5, > 5")
    assert "spend &lt;today&gt; &amp; more" in slack["blocks"][0]["text"]["text"]
    message = email_message(notice, ["a@example.com", "b@example.com"], delivery)
    assert message["To"] == "a@example.com, b@example.com"
    assert message["From"] == "alerts@obs.example"
    assert message["Subject"].startswith("[LLM Observatory] FIRING: spend <today>")
    assert "Filters:   environment=prod, model=gpt-4o" in message.get_content()
