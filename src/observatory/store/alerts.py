"""Alert rules, their evaluation state and history, and the evaluator's cluster-wide lock."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from observatory.store.admin import Conflict, NotFound, aware, now
from observatory.store.engine import Database, cluster_lock
from observatory.store.schema import alert_events, alert_rules, projects

# Session-level advisory lock key of the alert evaluator (migrations 727274, retention 727275).
PG_LOCK_KEY = 727276

# The definition columns a rule is created or replaced with (the rest is evaluation state).
DEFINITION = (
    "name",
    "metric",
    "comparison",
    "threshold",
    "window_seconds",
    "filters",
    "channels",
    "enabled",
)


@dataclass
class AlertRule:
    rule_id: int
    project_id: int
    project_name: str
    name: str
    metric: str
    comparison: str
    threshold: str
    window_seconds: int
    filters: dict[str, str] = field(default_factory=dict)
    channels: list[dict[str, Any]] = field(default_factory=list)
    enabled: bool = True
    created_at: datetime | None = None
    updated_at: datetime | None = None
    state: str = "ok"
    last_value: str | None = None
    last_evaluated_at: datetime | None = None
    last_changed_at: datetime | None = None
    last_notified_at: datetime | None = None


def _rule(row: RowMapping) -> AlertRule:
    return AlertRule(
        rule_id=row["rule_id"],
        project_id=row["project_id"],
        project_name=row["project_name"],
        name=row["name"],
        metric=row["metric"],
        comparison=row["comparison"],
        threshold=row["threshold"],
        window_seconds=int(row["window_seconds"]),
        filters=orjson.loads(row["filters"] or "{}"),
        channels=orjson.loads(row["channels"] or "[]"),
        enabled=bool(row["enabled"]),
        created_at=aware(row["created_at"]),
        updated_at=aware(row["updated_at"]),
        state=row["state"],
        last_value=row["last_value"],
        last_evaluated_at=aware(row["last_evaluated_at"]),
        last_changed_at=aware(row["last_changed_at"]),
        last_notified_at=aware(row["last_notified_at"]),
    )


def _select() -> Any:
    return select(alert_rules, projects.c.name.label("project_name")).join(
        projects, projects.c.project_id == alert_rules.c.project_id
    )


def _values(definition: dict[str, Any]) -> dict[str, Any]:
    values = {name: definition[name] for name in DEFINITION}
    values["filters"] = orjson.dumps(values["filters"], option=orjson.OPT_SORT_KEYS).decode()
    values["channels"] = orjson.dumps(values["channels"]).decode()
    values["threshold"] = str(values["threshold"])
    return values


def count_rules(conn: Connection, project_id: int) -> int:
    query = select(func.count()).where(alert_rules.c.project_id == project_id)
    return int(conn.execute(query).scalar_one())


def create_rule(conn: Connection, project_id: int, definition: dict[str, Any]) -> AlertRule:
    """Create a rule from a validated definition (see ``alerting.rules.RuleIn``)."""
    at = now()
    try:
        with conn.begin_nested():
            result = conn.execute(
                insert(alert_rules).values(
                    project_id=project_id,
                    created_at=at,
                    updated_at=at,
                    state="ok",
                    **_values(definition),
                )
            )
    except IntegrityError as exc:
        raise Conflict(f"an alert rule named {definition['name']!r} already exists") from exc
    rule_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
    return get_rule(conn, int(rule_id or 0), project_id)


def get_rule(
    conn: Connection, rule_id: int, project_id: int | None = None, *, for_update: bool = False
) -> AlertRule:
    """One rule; ``for_update`` locks its row until the transaction ends (PostgreSQL), so an
    edit made during an evaluation waits for it instead of being overwritten."""
    query = _select().where(alert_rules.c.rule_id == rule_id)
    if project_id is not None:
        query = query.where(alert_rules.c.project_id == project_id)
    if for_update and conn.dialect.name == "postgresql":
        query = query.with_for_update(of=alert_rules)
    row = conn.execute(query).mappings().first()
    if row is None:
        raise NotFound(f"alert rule {rule_id} does not exist")
    return _rule(row)


def list_rules(
    conn: Connection, project_id: int | None = None, *, enabled_only: bool = False
) -> list[AlertRule]:
    query = _select().order_by(alert_rules.c.project_id, alert_rules.c.rule_id)
    if project_id is not None:
        query = query.where(alert_rules.c.project_id == project_id)
    if enabled_only:
        query = query.where(alert_rules.c.enabled.is_(True))
    return [_rule(r) for r in conn.execute(query).mappings()]


def replace_rule(
    conn: Connection, rule_id: int, project_id: int, definition: dict[str, Any]
) -> AlertRule:
    """Replace a rule's definition. Its state is kept (an edited firing rule resolves through
    the next evaluation, with a notification); a disabled rule goes back to ``ok`` silently."""
    values = _values(definition)
    values["updated_at"] = now()
    if not definition["enabled"]:
        values["state"] = "ok"
    try:
        with conn.begin_nested():
            result = conn.execute(
                update(alert_rules)
                .where(alert_rules.c.rule_id == rule_id, alert_rules.c.project_id == project_id)
                .values(**values)
            )
    except IntegrityError as exc:
        raise Conflict(f"an alert rule named {definition['name']!r} already exists") from exc
    if result.rowcount == 0:
        raise NotFound(f"alert rule {rule_id} does not exist")
    return get_rule(conn, rule_id, project_id)


def delete_rule(conn: Connection, rule_id: int, project_id: int | None = None) -> AlertRule:
    """Delete a rule and its history; returns the rule as it was."""
    rule = get_rule(conn, rule_id, project_id)
    conn.execute(delete(alert_events).where(alert_events.c.rule_id == rule_id))
    conn.execute(delete(alert_rules).where(alert_rules.c.rule_id == rule_id))
    return rule


# --- evaluation state and history ---------------------------------------------------------------


def record_value(conn: Connection, rule_id: int, value: str | None, at: datetime) -> None:
    """An evaluation that changed nothing: remember the value and the time."""
    conn.execute(
        update(alert_rules)
        .where(alert_rules.c.rule_id == rule_id)
        .values(last_value=value, last_evaluated_at=at)
    )


def record_transition(
    conn: Connection,
    rule: AlertRule,
    event_state: str,
    value: str | None,
    at: datetime,
    notifications: list[dict[str, Any]],
) -> int:
    """Store a state change (``firing``/``resolved``) or a ``reminder`` and its history row.

    Returns the event id; the notifications' outcomes are filled in by :func:`set_outcomes`.
    """
    new_state = "ok" if event_state == "resolved" else "firing"
    values: dict[str, Any] = {
        "last_value": value,
        "last_evaluated_at": at,
        "state": new_state,
        "last_notified_at": at,
    }
    if event_state != "reminder":
        values["last_changed_at"] = at
    conn.execute(update(alert_rules).where(alert_rules.c.rule_id == rule.rule_id).values(**values))
    result = conn.execute(
        insert(alert_events).values(
            rule_id=rule.rule_id,
            project_id=rule.project_id,
            at=at,
            state=event_state,
            value=value,
            threshold=rule.threshold,
            notifications=orjson.dumps(notifications).decode(),
        )
    )
    return int(result.inserted_primary_key[0]) if result.inserted_primary_key else 0


def set_outcomes(conn: Connection, event_id: int, notifications: list[dict[str, Any]]) -> None:
    conn.execute(
        update(alert_events)
        .where(alert_events.c.event_id == event_id)
        .values(notifications=orjson.dumps(notifications).decode())
    )


def list_events(
    conn: Connection,
    rule_id: int | None = None,
    project_id: int | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """History entries, newest first."""
    query = select(alert_events).order_by(alert_events.c.event_id.desc()).limit(limit)
    if rule_id is not None:
        query = query.where(alert_events.c.rule_id == rule_id)
    if project_id is not None:
        query = query.where(alert_events.c.project_id == project_id)
    if before_id is not None:
        query = query.where(alert_events.c.event_id < before_id)
    out = []
    for row in conn.execute(query).mappings():
        item = {str(k): v for k, v in row.items()}  # keys are str subclasses
        item["at"] = (aware(item["at"]) or now()).isoformat()
        item["notifications"] = orjson.loads(item["notifications"] or "[]")
        out.append(item)
    return out


# --- the evaluator's lock -----------------------------------------------------------------------


@contextlib.contextmanager
def evaluation_lock(db: Database) -> Iterator[bool]:
    """Try to become the one evaluator of this round: yields True when this caller holds the lock.

    See ``cluster_lock``: held for the whole round, it also excludes other processes on the same
    machine when the database is SQLite.
    """
    with cluster_lock(db, PG_LOCK_KEY, "alerts") as acquired:
        yield acquired
