"""Data retention: per project and per kind, run by exactly one server of a cluster.

Kinds and what "older than the limit" means for each (``now`` minus the project's days):

* ``spans``: ``start_time_unix_nano`` before the cutoff;
* ``traces`` (summary rows): the whole trace (start and end) before the spans cutoff, so a
  summary goes with the last of its spans;
* ``rollups_1m``, ``rollups_1h`` and their ``_latency`` tables: buckets that end at or before
  the rollups cutoff (a bucket that reaches into the kept range stays);
* ``audit_log``: ``at`` before the audit cutoff (never less than 365 days);
* ``logs``: OTLP log records (``store.logs``), ``time_unix_nano`` before the logs cutoff.

On PostgreSQL whole day partitions of ``spans`` (or TimescaleDB chunks) are dropped, but only
those older than the LONGEST spans retention of any project, because partitions hold every
project's rows; what remains (projects with a shorter retention, rows in the DEFAULT partition,
the partial day at the cutoff) is removed by batched DELETEs, as everything is on SQLite. Each
batch is its own short transaction, so ingest is never blocked for long.

The audit log is append-only (migration ``0003_audit_append_only``): on PostgreSQL a trigger
refuses DELETE unless the transaction set ``observatory.audit_retention`` to ``on`` with
``SET LOCAL``, which only this module does.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Table,
    any_,
    delete,
    func,
    inspect,
    literal_column,
    select,
    text,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from observatory.store import admin, partitions
from observatory.store.engine import Database, cluster_lock
from observatory.store.schema import audit_log, projects, rollups_1m, rollups_1m_latency, spans
from observatory.store.schema import traces as traces_table

if TYPE_CHECKING:
    from observatory.config import Settings

log = logging.getLogger(__name__)

NANOS_PER_SECOND = 1_000_000_000
NANOS_PER_DAY = 86_400 * NANOS_PER_SECOND
# Session-level advisory lock key of the retention job (migrations use 727274).
PG_LOCK_KEY = 727275
BATCH_ROWS = 5000
# How long dropping a partition may wait for its lock (then rows go by batched DELETEs instead).
DROP_LOCK_TIMEOUT_MS = 5000
LOCK_NOT_AVAILABLE = "55P03"
# Log records are deleted through store.logs.delete_logs_before, one time window per transaction.
LOGS_WINDOW_NANOS = 3600 * NANOS_PER_SECOND

POLICY_FIELDS = ("spans_days", "rollups_days", "audit_days", "logs_days")
MIN_DAYS = {"spans_days": 1, "rollups_days": 1, "audit_days": 365, "logs_days": 1}
MAX_DAYS = 36_500
_PARTITION_NAME = re.compile(r"^spans_p[0-9]{8}$")
KINDS = (
    "spans",
    "traces",
    "rollups_1m",
    "rollups_1m_latency",
    "rollups_1h",
    "rollups_1h_latency",
    "audit_log",
    "logs",
)
ROLLUP_BUCKET_SECONDS = {
    "rollups_1m": 60,
    "rollups_1m_latency": 60,
    "rollups_1h": 3600,
    "rollups_1h_latency": 3600,
}
# Kinds whose tables come from other features (migrations 0002 and 0006): used when present.
OPTIONAL_TABLES = {
    "rollups_1h": "rollups_1h",
    "rollups_1h_latency": "rollups_1h_latency",
    "logs": "log_records",
}


class RetentionConfigError(ValueError):
    """A retention override that cannot be used; the message names the field."""


@dataclass(frozen=True)
class RetentionPolicy:
    """Days each kind of data is kept."""

    spans_days: int = 365
    rollups_days: int = 730
    audit_days: int = 365
    logs_days: int = 90

    def as_dict(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in POLICY_FIELDS}


def validate_overrides(raw: Any) -> dict[str, int]:
    """Check a project's retention overrides (``{"spans_days": 30, …}``); None drops a field."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise RetentionConfigError("retention settings must be an object")
    unknown = sorted(set(raw) - set(POLICY_FIELDS))
    if unknown:
        raise RetentionConfigError(
            f"unknown retention setting(s): {', '.join(unknown)}; known: {', '.join(POLICY_FIELDS)}"
        )
    out: dict[str, int] = {}
    for name in POLICY_FIELDS:
        value = raw.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise RetentionConfigError(f"{name}: expected a whole number of days")
        if value < MIN_DAYS[name]:
            if name == "audit_days":
                raise RetentionConfigError(
                    f"audit_days: {value} is below the minimum of 365 days; "
                    "audit logs are kept at least one year"
                )
            raise RetentionConfigError(f"{name}: {value} is below the minimum {MIN_DAYS[name]}")
        if value > MAX_DAYS:
            raise RetentionConfigError(f"{name}: {value} is above the maximum {MAX_DAYS}")
        out[name] = value
    return out


def effective_policy(
    defaults: RetentionPolicy, project_settings: Mapping[str, Any]
) -> RetentionPolicy:
    """The defaults with the project's overrides (``settings["retention"]``) applied.

    Values are validated when saved; a bad stored value (edited by hand) falls back to the
    default for that field rather than stopping retention, and audit never goes below 365 days.
    """
    raw = project_settings.get("retention")
    values = defaults.as_dict()
    if isinstance(raw, Mapping):
        for name in POLICY_FIELDS:
            value = raw.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                if MIN_DAYS[name] <= value <= MAX_DAYS:
                    values[name] = value
                else:
                    log.warning(
                        "project retention %s=%r is out of range; using the default", name, value
                    )
    values["audit_days"] = max(values["audit_days"], MIN_DAYS["audit_days"])
    return RetentionPolicy(**values)


def project_overrides(conn: Connection, project_id: int) -> dict[str, int]:
    """The retention overrides stored in a project's settings (possibly empty)."""
    project = admin.get_project(conn, project_id=project_id)
    raw = project.settings.get("retention")
    if not isinstance(raw, Mapping):
        return {}
    return {k: v for k, v in raw.items() if k in POLICY_FIELDS and isinstance(v, int)}


def set_project_overrides(conn: Connection, project_id: int, overrides: Mapping[str, int]) -> None:
    """Replace the project's retention overrides, leaving its other settings as they are."""
    clean = validate_overrides(overrides)
    # Lock the row: other settings (redaction, sampling, …) are updated the same way.
    row = conn.execute(
        select(projects.c.settings).where(projects.c.project_id == project_id).with_for_update()
    ).first()
    if row is None:
        raise admin.NotFound(f"project {project_id} does not exist")
    settings = orjson.loads(row[0] or "{}")
    if clean:
        settings["retention"] = clean
    else:
        settings.pop("retention", None)
    admin.update_project_settings(conn, project_id, settings)


# --- the plan ----------------------------------------------------------------------------------


@dataclass
class ProjectPlan:
    """One project's policy, cutoffs and what was (or would be) deleted."""

    project_id: int | None  # None: audit entries that belong to no project
    name: str
    policy: RetentionPolicy
    spans_cutoff_ns: int
    rollups_cutoff_s: int
    audit_cutoff: datetime
    logs_cutoff_ns: int
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))

    def as_dict(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "name": self.name,
            "policy": self.policy.as_dict(),
            "cutoffs": {
                "spans": _iso_ns(self.spans_cutoff_ns),
                "rollups": _iso_ns(self.rollups_cutoff_s * NANOS_PER_SECOND),
                "audit_log": self.audit_cutoff.isoformat(),
                "logs": _iso_ns(self.logs_cutoff_ns),
            },
            "counts": dict(self.counts),
        }


@dataclass
class RetentionReport:
    """What a run deleted, or with ``dry_run`` what it would delete."""

    dry_run: bool
    ran: bool  # False: another run held the lock, nothing was done
    now_ns: int
    projects: list[ProjectPlan] = field(default_factory=list)
    dropped_partitions: list[str] = field(default_factory=list)
    logs_supported: bool = False
    complete: bool = True  # False when the run failed or was stopped half way

    def total(self, kind: str) -> int:
        return sum(p.counts.get(kind, 0) for p in self.projects)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "ran": self.ran,
            "now": _iso_ns(self.now_ns),
            "projects": [p.as_dict() for p in self.projects],
            "dropped_partitions": list(self.dropped_partitions),
            "logs_supported": self.logs_supported,
            "complete": self.complete,
            "totals": {kind: self.total(kind) for kind in KINDS},
        }


def _iso_ns(value: int) -> str:
    return datetime.fromtimestamp(value / NANOS_PER_SECOND, tz=UTC).isoformat()


def _plan(project_id: int | None, name: str, policy: RetentionPolicy, now_ns: int) -> ProjectPlan:
    spans_cutoff = now_ns - policy.spans_days * NANOS_PER_DAY
    rollups_cutoff = (now_ns - policy.rollups_days * NANOS_PER_DAY) // NANOS_PER_SECOND
    audit_cutoff = datetime.fromtimestamp(now_ns / NANOS_PER_SECOND, tz=UTC) - timedelta(
        days=policy.audit_days
    )
    logs_cutoff = now_ns - policy.logs_days * NANOS_PER_DAY
    return ProjectPlan(
        project_id, name, policy, spans_cutoff, rollups_cutoff, audit_cutoff, logs_cutoff
    )


def make_plans(conn: Connection, defaults: RetentionPolicy, now_ns: int) -> list[ProjectPlan]:
    """One plan per project, plus one (last) for audit entries of no project."""
    plans = [
        _plan(p.project_id, p.name, effective_policy(defaults, p.settings), now_ns)
        for p in admin.list_projects(conn)
    ]
    plans.append(_plan(None, "", effective_policy(defaults, {}), now_ns))
    return plans


# --- conditions per kind -----------------------------------------------------------------------


def _project_is(column: Any, project_id: int | None) -> ColumnElement[bool]:
    return column.is_(None) if project_id is None else column == project_id  # type: ignore[no-any-return]


def _conditions(
    plan: ProjectPlan, kind: str, tables: Mapping[str, Table]
) -> tuple[Table, list[ColumnElement[bool]]] | None:
    """The table and the condition selecting ``kind`` rows of ``plan`` older than the limit."""
    pid = plan.project_id
    table = tables.get(kind)
    if table is None:
        return None
    if kind == "audit_log":
        return table, [_project_is(table.c.project_id, pid), table.c.at < plan.audit_cutoff]
    if pid is None:
        return None
    if kind == "spans":
        return table, [
            table.c.project_id == pid,
            table.c.start_time_unix_nano < plan.spans_cutoff_ns,
        ]
    if kind == "traces":
        return table, [
            table.c.project_id == pid,
            table.c.start_time_unix_nano < plan.spans_cutoff_ns,
            table.c.end_time_unix_nano < plan.spans_cutoff_ns,
        ]
    if kind in ROLLUP_BUCKET_SECONDS:
        # A bucket goes once it ends at or before the cutoff: nothing within the limit is lost.
        return table, [
            table.c.project_id == pid,
            table.c.bucket_start_unix_s <= plan.rollups_cutoff_s - ROLLUP_BUCKET_SECONDS[kind],
        ]
    if kind == "logs":
        return table, [
            table.c.project_id == pid,
            table.c.time_unix_nano < plan.logs_cutoff_ns,
        ]
    return None


def _tables(conn: Connection) -> dict[str, Table]:
    """The table of each kind, leaving out optional ones this build or database lacks."""
    tables: dict[str, Table] = {
        "spans": spans,
        "traces": traces_table,
        "rollups_1m": rollups_1m,
        "rollups_1m_latency": rollups_1m_latency,
        "audit_log": audit_log,
    }
    schema = importlib.import_module("observatory.store.schema")
    inspector = inspect(conn)
    for kind, name in OPTIONAL_TABLES.items():
        table = getattr(schema, name, None)
        if isinstance(table, Table) and inspector.has_table(table.name):
            tables[kind] = table
    return tables


def _count(conn: Connection, table: Table, cond: list[ColumnElement[bool]]) -> int:
    return int(conn.execute(select(func.count()).select_from(table).where(*cond)).scalar_one())


# --- logs (another module's table) -------------------------------------------------------------


@dataclass(frozen=True)
class _LogsSupport:
    table: Table
    delete_before: Callable[[Connection, int, int], int]


def _logs_support(tables: Mapping[str, Table]) -> _LogsSupport | None:
    """``store.logs.delete_logs_before`` and its table, when this build and database have them."""
    table = tables.get("logs")
    if table is None:
        return None
    try:
        module = importlib.import_module("observatory.store.logs")
    except ImportError:
        return None
    delete_before = getattr(module, "delete_logs_before", None)
    if delete_before is None:
        return None
    return _LogsSupport(table, delete_before)


# --- locking -----------------------------------------------------------------------------------


@contextlib.contextmanager
def retention_lock(db: Database) -> Iterator[bool]:
    """Try to become the one retention runner: yields True when this caller holds the lock.

    See ``cluster_lock``: held for the whole run.
    """
    with cluster_lock(db, PG_LOCK_KEY, "retention") as acquired:
        yield acquired


# --- deleting ----------------------------------------------------------------------------------


def delete_batch(
    conn: Connection, table: Table, cond: list[ColumnElement[bool]], batch_rows: int
) -> int:
    """Delete up to about ``batch_rows`` rows matching ``cond``; return how many went.

    PostgreSQL: ``ctid = ANY(ARRAY(SELECT ctid … LIMIT n))`` (a TID scan; on a partitioned table
    ctids repeat across partitions, and the repeated condition keeps it to rows that qualify).
    SQLite: ``rowid IN (SELECT rowid … LIMIT n)``. Fewer than ``batch_rows`` means none are left.
    """
    predicate: ColumnElement[bool]
    if conn.dialect.name == "postgresql":
        ctid: ColumnElement[Any] = literal_column("ctid")
        sub = select(ctid).select_from(table).where(*cond).limit(batch_rows)
        predicate = ctid == any_(func.array(sub.scalar_subquery()))
    else:
        rowid: ColumnElement[Any] = literal_column("rowid")
        predicate = rowid.in_(select(rowid).select_from(table).where(*cond).limit(batch_rows))
    result = conn.execute(delete(table).where(*cond, predicate))
    return max(int(result.rowcount), 0)


class RetentionInterrupted(RuntimeError):
    """The run was asked to stop (server shutdown) between two batches."""


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise RetentionInterrupted("retention run stopped before it finished")


def _delete_all(
    db: Database,
    table: Table,
    cond: list[ColumnElement[bool]],
    counts: dict[str, int],
    kind: str,
    batch_rows: int,
    stop: threading.Event | None,
) -> None:
    while True:
        _check(stop)
        with db.write() as conn:
            if kind == "audit_log" and conn.dialect.name == "postgresql":
                # The append-only trigger lets the retention job (and only it) delete.
                conn.execute(text("SET LOCAL observatory.audit_retention = 'on'"))
            deleted = delete_batch(conn, table, cond, batch_rows)
        counts[kind] += deleted
        if deleted < batch_rows:
            return


def _delete_logs(
    db: Database, support: _LogsSupport, plan: ProjectPlan, stop: threading.Event | None
) -> None:
    assert plan.project_id is not None
    t = support.table.c
    while True:
        _check(stop)
        with db.write() as conn:
            oldest = conn.execute(
                select(func.min(t.time_unix_nano)).where(
                    t.project_id == plan.project_id, t.time_unix_nano < plan.logs_cutoff_ns
                )
            ).scalar()
            if oldest is None:
                return
            upto = min(int(oldest) + LOGS_WINDOW_NANOS, plan.logs_cutoff_ns)
            deleted = int(support.delete_before(conn, plan.project_id, upto))
        plan.counts["logs"] += deleted


def _partition_day(name: str) -> date | None:
    if not _PARTITION_NAME.match(name):
        return None
    try:
        return datetime.strptime(name[len("spans_p") :], "%Y%m%d").date()
    except ValueError:
        return None


def _partitions_before(conn: Connection, cutoff_day: date) -> list[str]:
    """Day partitions that ``partitions.drop_partitions_before(conn, cutoff_day)`` drops."""
    out = []
    for name in sorted(partitions.existing_partitions(conn)):
        day = _partition_day(name)
        if day is not None and day + timedelta(days=1) <= cutoff_day:
            out.append(name)
    return out


def _global_spans_cutoff(plans: list[ProjectPlan]) -> int | None:
    """The oldest spans cutoff of any project: whole partitions may go only before it."""
    cutoffs = [p.spans_cutoff_ns for p in plans if p.project_id is not None]
    return min(cutoffs) if cutoffs else None


def _drop_whole_partitions(
    db: Database, plans: list[ProjectPlan], report: RetentionReport, dry_run: bool
) -> None:
    """PostgreSQL: drop day partitions (or TimescaleDB chunks) older than every project's limit.

    Counts per project are taken from the partitions in the transaction that drops them. A dry
    run only lists the names (the per-project counts already include their rows).
    """
    cutoff_ns = _global_spans_cutoff(plans)
    if cutoff_ns is None:
        return
    cutoff_day = datetime.fromtimestamp(cutoff_ns / NANOS_PER_SECOND, tz=UTC).date()
    try:
        counts, dropped = _drop_in_transaction(db, cutoff_day, dry_run)
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
            raise
        # A long query (a slow export's cursor, say) holds spans; the batched deletes below
        # remove the same rows without the exclusive lock, and the next run drops the rest.
        log.warning("retention could not lock spans to drop partitions; deleting in batches")
        return
    report.dropped_partitions.extend(dropped)
    if dry_run:
        return
    for plan in plans:
        if plan.project_id is not None:
            plan.counts["spans"] += counts.get(plan.project_id, 0)


def _drop_in_transaction(
    db: Database, cutoff_day: date, dry_run: bool
) -> tuple[dict[int, int], list[str]]:
    counts: dict[int, int] = {}
    with db.write() as conn:
        # Dropping a partition needs an exclusive lock on spans: never queue ingest behind it.
        conn.execute(text(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT_MS}ms'"))
        if partitions.is_hypertable(conn):
            day_ns = partitions.day_bounds_nanos(cutoff_day)[0]
            for project_id, count in conn.execute(
                select(spans.c.project_id, func.count())
                .where(spans.c.start_time_unix_nano < day_ns)
                .group_by(spans.c.project_id)
            ):
                counts[int(project_id)] = int(count)
            dropped = [f"timescaledb chunks before {cutoff_day}"] if counts else []
            if not dry_run and counts:
                conn.execute(
                    text("SELECT drop_chunks('spans', older_than => CAST(:c AS BIGINT))"),
                    {"c": day_ns},
                )
        else:
            dropped = _partitions_before(conn, cutoff_day)
            if not dry_run:
                for name in dropped:
                    # The name comes from pg_class and matched ^spans_p[0-9]{8}$.
                    for project_id, count in conn.execute(
                        text(f"SELECT project_id, count(*) FROM {name} GROUP BY project_id")
                    ):
                        counts[int(project_id)] = counts.get(int(project_id), 0) + int(count)
                actual = partitions.drop_partitions_before(conn, cutoff_day)
                if sorted(actual) != dropped:
                    log.warning("retention dropped partitions %s, expected %s", actual, dropped)
                    dropped = sorted(actual)
    return counts, dropped


def run_retention(
    db: Database,
    defaults: RetentionPolicy,
    *,
    dry_run: bool = False,
    now_ns: int | None = None,
    actor: str = "system",
    batch_rows: int = BATCH_ROWS,
    stop: threading.Event | None = None,
) -> RetentionReport:
    """Apply (or with ``dry_run`` only count) retention for every project.

    Returns a report with ``ran=False`` and nothing done when another run (in this or another
    process or server) holds the lock. Each project with deletions gets an audit entry
    ``retention.delete`` with the counts, also when the run fails or is stopped (``stop`` is
    checked between batches; :class:`RetentionInterrupted` is raised then) half way.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    with retention_lock(db) as acquired:
        if not acquired:
            log.info("another retention run holds the lock; skipping")
            return RetentionReport(dry_run=dry_run, ran=False, now_ns=now_ns)
        with db.write() as conn:
            plans = make_plans(conn, defaults, now_ns)
            tables = _tables(conn)
        logs = _logs_support(tables)
        if logs is None:
            tables.pop("logs", None)
        report = RetentionReport(dry_run=dry_run, ran=True, now_ns=now_ns, projects=plans)
        report.logs_supported = logs is not None
        if dry_run:
            _count_all(db, report, tables)
            return report
        try:
            _delete_everything(db, report, tables, logs, batch_rows, stop)
        except BaseException:
            report.complete = False
            raise
        finally:
            _audit(db, report, actor)
        return report


def _count_all(db: Database, report: RetentionReport, tables: Mapping[str, Table]) -> None:
    with db.engine.connect() as conn:
        for plan in report.projects:
            for kind in KINDS:
                found = _conditions(plan, kind, tables)
                if found is not None:
                    plan.counts[kind] = _count(conn, *found)
    if db.is_postgres:
        _drop_whole_partitions(db, report.projects, report, dry_run=True)


def _delete_everything(
    db: Database,
    report: RetentionReport,
    tables: Mapping[str, Table],
    logs: _LogsSupport | None,
    batch_rows: int,
    stop: threading.Event | None,
) -> None:
    if db.is_postgres:
        _drop_whole_partitions(db, report.projects, report, dry_run=False)
    for plan in report.projects:
        for kind in KINDS:
            if kind == "logs":
                if logs is not None and plan.project_id is not None:
                    _delete_logs(db, logs, plan, stop)
                continue
            found = _conditions(plan, kind, tables)
            if found is not None:
                table, cond = found
                _delete_all(db, table, cond, plan.counts, kind, batch_rows, stop)


def _audit(db: Database, report: RetentionReport, actor: str) -> None:
    with db.write() as conn:
        for plan in report.projects:
            dropped = report.dropped_partitions if plan.project_id is None else []
            if not any(plan.counts.values()) and not dropped:
                continue
            details: dict[str, Any] = {
                "counts": {k: v for k, v in plan.counts.items() if v},
                "policy": plan.policy.as_dict(),
                "cutoffs": plan.as_dict()["cutoffs"],
            }
            if dropped:
                details["dropped_partitions"] = dropped
            admin.record_audit(
                conn,
                action="retention.delete",
                outcome="ok" if report.complete else "incomplete",
                project_id=plan.project_id,
                actor=actor,
                object_type="project" if plan.project_id is not None else "database",
                object_id=str(plan.project_id) if plan.project_id is not None else "",
                details=details,
            )


def defaults_from_settings(settings: Settings) -> RetentionPolicy:
    """The global retention policy (``OBSERVATORY_RETENTION_*_DAYS``)."""
    return RetentionPolicy(
        spans_days=settings.retention_spans_days,
        rollups_days=settings.retention_rollups_days,
        audit_days=settings.retention_audit_days,
        logs_days=settings.retention_logs_days,
    )
