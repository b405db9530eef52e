"""Data-governance commands: ``retention run``, ``audit list``, ``export`` and ``erase``."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

EXPORT_FORMATS = ("csv", "jsonl", "parquet")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", help="overrides OBSERVATORY_DATABASE_URL")
    p.add_argument("--data-dir", help="overrides OBSERVATORY_DATA_DIR")


def _open_database(args: argparse.Namespace) -> tuple[Any, Any]:
    from observatory.cli import _migrated, _settings

    settings = _settings(args)
    return settings, _migrated(settings)


def _project_id(conn: Any, name: str) -> int:
    from observatory.store import admin

    return admin.get_project(conn, name=name).project_id


# --- retention ---------------------------------------------------------------------------------


def cmd_retention(args: argparse.Namespace) -> int:
    from observatory.store import retention

    settings, db = _open_database(args)
    try:
        report = retention.run_retention(
            db, retention.defaults_from_settings(settings), dry_run=args.dry_run, actor="cli"
        )
    finally:
        db.dispose()
    if args.json:
        print(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
        return 0
    if not report.ran:
        print("skipped: another retention run holds the lock (nothing was deleted)")
        return 0
    print(_retention_table(report))
    return 0


def _width(kind: str) -> int:
    return max(len(kind), 8)


def _retention_table(report: Any) -> str:
    from observatory.store.retention import KINDS

    verb = "would delete (dry run, nothing deleted)" if report.dry_run else "deleted"
    moment = datetime.fromtimestamp(report.now_ns / 1e9, tz=UTC)
    lines = [f"retention at {moment:%Y-%m-%d %H:%M}Z: {verb}"]
    header = f"{'PROJECT':<24} {'DAYS s/r/a/l':<16}" + "".join(
        f" {k.upper():>{_width(k)}}" for k in KINDS
    )
    lines.append(header)
    for plan in report.projects:
        name = plan.name if plan.project_id is not None else "(no project)"
        p = plan.policy
        days = f"{p.spans_days}/{p.rollups_days}/{p.audit_days}/{p.logs_days}"
        counts = "".join(f" {plan.counts.get(k, 0):>{_width(k)}}" for k in KINDS)
        lines.append(f"{name[:24]:<24} {days:<16}{counts}")
    if report.dropped_partitions:
        verb = "would drop" if report.dry_run else "dropped"
        lines.append(f"partitions {verb}: {', '.join(report.dropped_partitions)}")
    if not report.logs_supported:
        lines.append("logs: no log table in this database; nothing to do")
    return "\n".join(lines)


# --- audit -------------------------------------------------------------------------------------


def cmd_audit(args: argparse.Namespace) -> int:
    from observatory.store import admin

    _, db = _open_database(args)
    since = _parse_time(args.since, "--since") if args.since else None
    try:
        with db.read() as conn:
            project_id = _project_id(conn, args.project) if args.project else None
            names = {p.project_id: p.name for p in admin.list_projects(conn)}
            rows = admin.list_audit(
                conn,
                project_id,
                args.limit,
                action=args.action,
                outcome=args.outcome,
                since=datetime.fromtimestamp(since / 1e9, tz=UTC) if since is not None else None,
            )
    except admin.NotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        db.dispose()
    if args.json:
        # Column names arrive as SQLAlchemy's str subclass, which orjson refuses as keys.
        print(orjson.dumps([{str(k): v for k, v in r.items()} for r in rows]).decode())
        return 0
    print(
        f"{'ID':>6}  {'AT (UTC)':<19}  {'PROJECT':<12} {'ACTOR':<14} {'ACTION':<26} "
        f"{'OUTCOME':<12} {'OBJECT':<28} FROM"
    )
    for row in rows:
        at = datetime.fromisoformat(row["at"]).astimezone(UTC)
        obj = f"{row['object_type']}:{row['object_id']}" if row["object_type"] else ""
        project = names.get(row["project_id"], "") if row["project_id"] is not None else "-"
        print(
            f"{row['audit_id']:>6}  {at:%Y-%m-%d %H:%M:%S}  {project[:12]:<12} "
            f"{row['actor'][:14]:<14} {row['action'][:26]:<26} {row['outcome'][:12]:<12} "
            f"{obj[:28]:<28} {row['remote_addr']}"
        )
    return 0


# --- export ------------------------------------------------------------------------------------


class _UsageError(ValueError):
    pass


def _parse_time(value: str, name: str) -> int:
    from fastapi import HTTPException

    from observatory.api.params import parse_time

    try:
        return parse_time(value, name)
    except HTTPException as exc:
        raise _UsageError(str(exc.detail)) from exc


def _filters(args: argparse.Namespace) -> Any:
    import time

    from fastapi import HTTPException

    from observatory.api.params import parse_decimal, parse_range
    from observatory.store.queries import Filters

    try:
        f = Filters(
            service=args.service,
            provider=args.provider,
            model=args.model,
            operation=args.operation,
            status=args.status,
            user_id=args.user_id,
            session_id=args.session_id,
            environment=args.environment,
            name=args.name,
            min_cost=parse_decimal(args.min_cost, "--min-cost"),
            max_cost=parse_decimal(args.max_cost, "--max-cost"),
        )
        if args.range:
            f.start_time = time.time_ns() - parse_range(args.range)
    except HTTPException as exc:
        raise _UsageError(str(exc.detail)) from exc
    if args.start:
        f.start_time = _parse_time(args.start, "--start")
    if args.end:
        f.end_time = _parse_time(args.end, "--end")
    for item in args.attribute or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise _UsageError("--attribute looks like --attribute gen_ai.request.model=gpt-4o")
        f.attributes[name] = value
    return f


def cmd_export(args: argparse.Namespace) -> int:
    from observatory.api.governance import describe_filters
    from observatory.app import secret_key
    from observatory.store import admin, export

    try:
        filters = _filters(args)
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings, db = _open_database(args)
    try:
        with db.write() as conn:
            try:
                project_id = _project_id(conn, args.project)
            except admin.NotFound as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            admin.record_audit(
                conn,
                action="export",
                outcome="ok",
                actor="cli",
                project_id=project_id,
                object_type="spans",
                object_id=args.format,
                details={
                    "format": args.format,
                    "filters": describe_filters(filters, secret_key(settings)),
                    "output": "stdout" if not args.output else "file",
                },
            )
        chunks = export.export_spans(db, project_id, filters, args.format)
        if args.output:
            _write_file(Path(args.output), chunks)
        else:
            out = sys.stdout.buffer
            for chunk in chunks:
                out.write(chunk)
            out.flush()
    finally:
        db.dispose()
    return 0


def _write_file(path: Path, chunks: Any) -> None:
    """Write to ``<path>.partial`` and rename at the end: a file at ``path`` is complete."""
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


# --- erase -------------------------------------------------------------------------------------


def cmd_erase(args: argparse.Namespace) -> int:
    from observatory.app import secret_key
    from observatory.store import admin, erasure

    settings, db = _open_database(args)
    subject = "user_id" if args.user_id is not None else "session_id"
    value = args.user_id if args.user_id is not None else args.session_id
    digest = erasure.subject_hash(secret_key(settings), subject, value)
    try:
        with db.read() as conn:
            try:
                project_id = _project_id(conn, args.project)
            except admin.NotFound as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
        outcome, counts = "error", dict[str, int]()
        try:
            result = erasure.erase(db, project_id, user_id=args.user_id, session_id=args.session_id)
            outcome, counts = "ok", result.as_dict()
        finally:
            with db.write() as conn:
                admin.record_audit(
                    conn,
                    action="data.erase",
                    outcome=outcome,
                    actor="cli",
                    project_id=project_id,
                    object_type=subject,
                    object_id=digest,
                    details={"subject": subject, "subject_hash": digest, **counts},
                )
    finally:
        db.dispose()
    print(
        f"erased {subject} (audit hash {digest}): {counts['spans']} spans, "
        f"{counts['traces']} trace summaries, {counts['logs']} log records"
    )
    return 0


# --- wiring ------------------------------------------------------------------------------------


def register(sub: Any) -> None:
    """Add the governance commands to the ``observatory`` parser's subcommands."""
    retention = sub.add_parser("retention", help="delete data older than the retention limits")
    rsub = retention.add_subparsers(dest="action", required=True)
    run = rsub.add_parser(
        "run", help="apply retention now (one run at a time across servers and commands)"
    )
    run.add_argument(
        "--dry-run", action="store_true", help="only count what would be deleted, per project"
    )
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    _common(run)
    retention.set_defaults(func=cmd_retention)

    audit = sub.add_parser("audit", help="read the audit log")
    asub = audit.add_subparsers(dest="action_name", required=True)
    al = asub.add_parser("list", help="audit entries, newest first")
    al.add_argument("--project", help="only this project (default: all)")
    al.add_argument("--action", help="only this action, e.g. key.create, export, data.erase")
    al.add_argument("--outcome", help="only this outcome, e.g. ok, forbidden")
    al.add_argument("--since", help="from this time (ISO 8601 or unix seconds)")
    al.add_argument("--limit", type=int, default=100, help="most entries shown (default 100)")
    al.add_argument("--json", action="store_true", help="print JSON")
    _common(al)
    # ``--action`` is a filter here; the subcommand's name is kept in ``action_name``.
    audit.set_defaults(func=cmd_audit)

    exp = sub.add_parser("export", help="export a project's spans as CSV, JSON Lines or Parquet")
    exp.add_argument("--project", required=True)
    exp.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    exp.add_argument("--output", help="file to write (default: standard output)")
    exp.add_argument("--start", help="start time, inclusive (ISO 8601 or unix seconds)")
    exp.add_argument("--end", help="end time, exclusive (ISO 8601 or unix seconds)")
    exp.add_argument("--range", help="relative range ending now: 15m, 24h, 30d")
    for flag in (
        "service",
        "provider",
        "model",
        "operation",
        "user-id",
        "session-id",
        "environment",
        "name",
        "min-cost",
        "max-cost",
    ):
        exp.add_argument(f"--{flag}")
    exp.add_argument("--status", choices=("ok", "error"))
    exp.add_argument(
        "--attribute", action="append", help="attribute equality KEY=VALUE (repeatable)"
    )
    _common(exp)
    exp.set_defaults(func=cmd_export)

    erase = sub.add_parser(
        "erase", help="delete every span of a user id or a session id (right to erasure)"
    )
    erase.add_argument("--project", required=True)
    who = erase.add_mutually_exclusive_group(required=True)
    who.add_argument("--user-id")
    who.add_argument("--session-id")
    _common(erase)
    erase.set_defaults(func=cmd_erase)
