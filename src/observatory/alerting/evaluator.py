"""Evaluating alert rules: measure, compare, change state, notify — by one server at a time.

Every server (and worker process) runs :func:`alerts_hook`; each round first takes the evaluation
lock (a PostgreSQL advisory lock, a file lock on SQLite) and a server that does not get it skips
the round. State lives in the database, so whichever server evaluates next continues from it:
notifications go out only on a state change (``ok → firing``, ``firing → resolved``), plus an
optional reminder every ``OBSERVATORY_ALERT_RENOTIFY_SECONDS`` while a rule keeps firing.

The state change and its history row are committed before the notifications are sent, so a crash
in between loses that notification rather than sending it twice (at most once); its history row
then still says ``pending``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.engine import Connection

from observatory.alerting.channels import Delivery, Notice, deliver
from observatory.alerting.rules import channel_target, decimal_text
from observatory.store import alerts as store
from observatory.store import queries
from observatory.store.admin import NotFound
from observatory.store.alerts import AlertRule
from observatory.store.engine import Database
from observatory.store.queries import Filters

log = logging.getLogger(__name__)

# Windows up to this long are measured on the spans themselves, to the nanosecond. Longer ones
# use the per-minute rollups (as the analytics API does): the window then starts at the first
# whole minute inside it, so a 1-hour window covers between 59 and 60 minutes.
EXACT_WINDOW_MAX_SECONDS = 300

# Clock differences between servers that evaluation smooths over (see evaluate_rule).
MAX_CLOCK_SKEW_NS = 60 * 1_000_000_000

_COMPARE = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}


def measure(conn: Connection, rule: AlertRule, now_ns: int) -> Decimal | None:
    """The rule's metric over the window ending at ``now_ns``; None when there is no data
    (a latency percentile of a window without LLM calls)."""
    window_ns = rule.window_seconds * 1_000_000_000
    f = Filters(
        start_time=now_ns - window_ns,
        end_time=now_ns,
        model=rule.filters.get("model"),
        provider=rule.filters.get("provider"),
        service=rule.filters.get("service"),
        environment=rule.filters.get("environment"),
        operation=rule.filters.get("operation"),
    )
    if rule.window_seconds <= EXACT_WINDOW_MAX_SECONDS:
        rows = queries._analytics_raw(
            conn, rule.project_id, f, group_by=None, bucket=None, llm_only=True, limit=1
        )
    else:
        rows = queries.analytics(conn, rule.project_id, f, llm_only=True, limit=1)
    total: dict[str, Any] = rows[0] if rows else queries._finish(queries._zero_totals(), 0)
    return metric_value(rule.metric, total)


def metric_value(metric: str, total: dict[str, Any]) -> Decimal | None:
    """Pick the rule's metric out of an analytics total (``queries.analytics`` row)."""
    if metric == "cost_usd":
        return Decimal(total["cost_usd"] or 0)
    if metric == "error_rate":
        return Decimal(repr(round(float(total["error_rate"]), 6)))
    if metric == "tokens":
        return Decimal(int(total["total_tokens"]))
    if metric == "requests":
        return Decimal(int(total["requests"]))
    if metric.startswith("latency_p") and metric.endswith("_ms"):
        value = total["latency_ms"].get(metric[len("latency_") : -len("_ms")])
        if value is None or not total["requests"]:
            return None
        return Decimal(repr(round(float(value), 3)))
    raise ValueError(f"unknown metric {metric!r}")


def breached(rule: AlertRule, value: Decimal | None) -> bool:
    return value is not None and bool(_COMPARE[rule.comparison](value, Decimal(rule.threshold)))


def decide(
    rule: AlertRule, value: Decimal | None, at: datetime, renotify_seconds: int = 0
) -> str | None:
    """The event a measurement causes: ``firing``, ``resolved``, ``reminder`` or None."""
    condition = breached(rule, value)
    if rule.state != "firing":
        return "firing" if condition else None
    if not condition:
        return "resolved"
    if renotify_seconds > 0:
        last = rule.last_notified_at or rule.last_changed_at
        if last is None or (at - last).total_seconds() >= renotify_seconds:
            return "reminder"
    return None


@dataclass
class RoundReport:
    ran: bool  # False: another server held the lock this round
    evaluated: int = 0
    failed: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ran": self.ran,
            "evaluated": self.evaluated,
            "failed": self.failed,
            "events": self.events,
        }


def evaluate_rule(
    db: Database,
    rule_id: int,
    delivery: Delivery,
    renotify_seconds: int = 0,
    clock: Callable[[], int] = time.time_ns,
) -> dict[str, Any] | None:
    """Evaluate one rule (the caller holds the evaluation lock); returns the event, if any.

    ``clock`` gives the current time in unix nanoseconds (tests pass a fixed one).
    """
    with db.write() as conn:
        try:
            rule = store.get_rule(conn, rule_id, for_update=True)
        except NotFound:
            return None  # deleted since the round started
        if not rule.enabled:
            return None
        now_ns = clock()
        if rule.last_evaluated_at is not None:
            # Never measure at an earlier moment than the previous evaluation did: a server whose
            # clock lags a little must not undo what one whose clock leads decided. (A clock that
            # was far ahead once must not hold every later round in the future.)
            last_ns = int(rule.last_evaluated_at.timestamp() * 1e9)
            if 0 < last_ns - now_ns <= MAX_CLOCK_SKEW_NS:
                now_ns = last_ns
        at = datetime.fromtimestamp(now_ns / 1e9, tz=UTC)
        value = measure(conn, rule, now_ns)
        value_text = decimal_text(value) if value is not None else None
        event = decide(rule, value, at, renotify_seconds)
        if event is None:
            store.record_value(conn, rule.rule_id, value_text, at)
            return None
        pending = [
            {"channel": c.get("type"), "target": channel_target(c), "outcome": "pending"}
            for c in rule.channels
        ]
        event_id = store.record_transition(conn, rule, event, value_text, at, pending)
    outcomes = deliver(Notice(event, rule, value_text, at), delivery)
    with db.write() as conn:
        store.set_outcomes(conn, event_id, outcomes)
    log.info(
        "alert rule %s: %s",
        rule.name,
        event,
        extra={
            "rule_id": rule.rule_id,
            "project_id": rule.project_id,
            "alert_state": event,
            "value": value_text,
            "threshold": rule.threshold,
        },
    )
    return {
        "event_id": event_id,
        "rule_id": rule.rule_id,
        "project": rule.project_name,
        "name": rule.name,
        "state": event,
        "value": value_text,
        "threshold": rule.threshold,
        "at": at.isoformat(),
        "notifications": outcomes,
    }


def run_round(
    db: Database,
    delivery: Delivery,
    renotify_seconds: int = 0,
    clock: Callable[[], int] = time.time_ns,
) -> RoundReport:
    """Evaluate every enabled rule of every project once, if this process gets the lock."""
    with store.evaluation_lock(db) as acquired:
        if not acquired:
            return RoundReport(ran=False)
        report = RoundReport(ran=True)
        with db.engine.connect() as conn:
            rule_ids = [r.rule_id for r in store.list_rules(conn, enabled_only=True)]
        for rule_id in rule_ids:
            try:
                event = evaluate_rule(db, rule_id, delivery, renotify_seconds, clock)
            except Exception:
                # One broken rule (or a database hiccup) must not stop the others.
                report.failed += 1
                log.warning("alert rule %s could not be evaluated", rule_id, exc_info=True)
                continue
            report.evaluated += 1
            if event is not None:
                report.events.append(event)
        return report


def send_test(rule: AlertRule, delivery: Delivery) -> list[dict[str, Any]]:
    """Send a ``test`` notice to every channel of the rule (not recorded in the history)."""
    return deliver(Notice("test", rule, rule.last_value, datetime.now(tz=UTC)), delivery)


async def alerts_hook(app: Any) -> None:
    """Evaluate alert rules every ``OBSERVATORY_ALERT_INTERVAL_SECONDS`` (0 disables it)."""
    st = app.state.obs
    interval = st.settings.alert_interval_seconds
    if interval <= 0:
        log.info("alert evaluation is disabled (OBSERVATORY_ALERT_INTERVAL_SECONDS=0)")
        return
    delivery = Delivery.from_settings(st.settings)
    renotify = st.settings.alert_renotify_seconds
    loop = asyncio.get_running_loop()
    next_at = loop.time() + interval
    while True:
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        try:
            await asyncio.to_thread(run_round, st.db, delivery, renotify)
        except Exception:
            log.warning("alert evaluation round failed; trying again next round", exc_info=True)
        # A fixed schedule, so rounds do not drift; a round that overran skips missed slots.
        next_at += interval
        while next_at <= loop.time():
            next_at += interval
