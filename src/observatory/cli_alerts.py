"""``observatory alerts list|create|delete|history|evaluate``: in-app alert rules from the shell."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", help="overrides OBSERVATORY_DATABASE_URL")
    p.add_argument("--data-dir", help="overrides OBSERVATORY_DATA_DIR")


def _open(args: argparse.Namespace) -> tuple[Any, Any]:
    from observatory.cli import _migrated, _settings

    settings = _settings(args)
    return settings, _migrated(settings)


def _print_json(value: Any) -> None:
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def cmd_list(args: argparse.Namespace) -> int:
    from observatory.alerting.rules import describe, rule_json
    from observatory.store import admin
    from observatory.store import alerts as store

    _, db = _open(args)
    try:
        with db.read() as conn:
            project_id = admin.get_project(conn, name=args.project).project_id
            rules = store.list_rules(conn, project_id)
    except admin.NotFound as exc:
        return _fail(str(exc))
    finally:
        db.dispose()
    if args.json:
        _print_json([rule_json(r, reveal=True) for r in rules])
        return 0
    print(f"{'ID':>4}  {'NAME':<24} {'STATE':<8} {'ON':<3} {'VALUE':>12}  RULE")
    for r in rules:
        print(
            f"{r.rule_id:>4}  {r.name[:24]:<24} {r.state:<8} {'yes' if r.enabled else 'no':<3} "
            f"{(r.last_value or '-')[:12]:>12}  {describe(r)}"
        )
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from observatory.alerting.rules import RuleIn, audit_details, parse_window
    from observatory.store import admin
    from observatory.store import alerts as store

    channels: list[dict[str, Any]] = [{"type": "webhook", "url": u} for u in args.webhook]
    channels += [{"type": "slack", "url": u} for u in args.slack]
    channels += [{"type": "email", "to": a} for a in args.email]
    filters = {
        name: getattr(args, name)
        for name in ("model", "provider", "service", "environment", "operation")
        if getattr(args, name)
    }
    try:
        body = RuleIn.model_validate(
            {
                "name": args.name,
                "metric": args.metric,
                "comparison": args.comparison,
                "threshold": args.threshold,
                "window_seconds": parse_window(args.window),
                "filters": filters,
                "channels": channels,
                "enabled": not args.disabled,
            }
        )
    except (ValidationError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'rule'}: {e['msg']}" for e in exc.errors()
            )
        else:
            problems = str(exc)
        return _fail(problems, 2)
    definition = body.definition()
    _, db = _open(args)
    try:
        with db.write() as conn:
            project_id = admin.get_project(conn, name=args.project).project_id
            rule = store.create_rule(conn, project_id, definition)
            admin.record_audit(
                conn,
                action="alert_rule.create",
                outcome="ok",
                actor="cli",
                project_id=project_id,
                object_type="alert_rule",
                object_id=str(rule.rule_id),
                details=audit_details(definition),
            )
    except (admin.NotFound, admin.Conflict) as exc:
        return _fail(str(exc))
    finally:
        db.dispose()
    print(f"created alert rule {rule.rule_id} ({rule.name})")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from observatory.store import admin
    from observatory.store import alerts as store

    _, db = _open(args)
    try:
        with db.write() as conn:
            rule = store.delete_rule(conn, args.rule_id)
            admin.record_audit(
                conn,
                action="alert_rule.delete",
                outcome="ok",
                actor="cli",
                project_id=rule.project_id,
                object_type="alert_rule",
                object_id=str(rule.rule_id),
                details={"name": rule.name},
            )
    except admin.NotFound as exc:
        return _fail(str(exc))
    finally:
        db.dispose()
    print(f"deleted alert rule {rule.rule_id} ({rule.name})")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from observatory.store import admin
    from observatory.store import alerts as store

    _, db = _open(args)
    try:
        with db.read() as conn:
            store.get_rule(conn, args.rule_id)
            events = store.list_events(conn, args.rule_id, limit=args.limit)
    except admin.NotFound as exc:
        return _fail(str(exc))
    finally:
        db.dispose()
    if args.json:
        _print_json(events)
        return 0
    print(f"{'AT':<20} {'STATE':<9} {'VALUE':>14} {'THRESHOLD':>12}  NOTIFICATIONS")
    for e in events:
        sent = ", ".join(f"{n['channel']}:{n['outcome']}" for n in e["notifications"]) or "-"
        print(
            f"{e['at'][:19]:<20} {e['state']:<9} {(e['value'] or '-')[:14]:>14} "
            f"{e['threshold'][:12]:>12}  {sent}"
        )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from observatory.alerting.channels import Delivery
    from observatory.alerting.evaluator import run_round

    settings, db = _open(args)
    try:
        report = run_round(db, Delivery.from_settings(settings), settings.alert_renotify_seconds)
    finally:
        db.dispose()
    if args.json:
        _print_json(report.as_dict())
        return 0 if report.failed == 0 else 1
    if not report.ran:
        print("skipped: another server is evaluating the alert rules right now")
        return 0
    print(f"evaluated {report.evaluated} rule(s), {report.failed} failed")
    for e in report.events:
        sent = ", ".join(f"{n['channel']}:{n['outcome']}" for n in e["notifications"]) or "-"
        print(f"  {e['project']}/{e['name']}: {e['state']} (value {e['value']}) → {sent}")
    return 0 if report.failed == 0 else 1


def register(sub: Any) -> None:
    """Add ``alerts`` and its subcommands to the ``observatory`` parser."""
    from observatory.alerting import COMPARISONS, METRICS

    alerts = sub.add_parser("alerts", help="in-app alert rules (docs/ALERTS.md)")
    asub = alerts.add_subparsers(dest="action", required=True)

    al = asub.add_parser("list", help="list a project's alert rules and their state")
    al.add_argument("--project", required=True)
    al.add_argument("--json", action="store_true")
    _common(al)
    al.set_defaults(func=cmd_list)

    ac = asub.add_parser("create", help="create an alert rule")
    ac.add_argument("--project", required=True)
    ac.add_argument("--name", required=True)
    ac.add_argument("--metric", required=True, choices=METRICS)
    ac.add_argument("--comparison", default=">", choices=COMPARISONS)
    ac.add_argument("--threshold", required=True, help="decimal number (USD for cost_usd)")
    ac.add_argument("--window", required=True, help="seconds, or 30s, 5m, 1h, 1d")
    for name in ("model", "provider", "service", "environment", "operation"):
        ac.add_argument(f"--{name}", help=f"only LLM calls with this {name}")
    ac.add_argument("--webhook", action="append", default=[], help="JSON webhook URL")
    ac.add_argument("--slack", action="append", default=[], help="Slack-compatible webhook URL")
    ac.add_argument("--email", action="append", default=[], help="comma-separated addresses")
    ac.add_argument("--disabled", action="store_true", help="create the rule switched off")
    _common(ac)
    ac.set_defaults(func=cmd_create)

    ad = asub.add_parser("delete", help="delete an alert rule and its history")
    ad.add_argument("rule_id", type=int)
    _common(ad)
    ad.set_defaults(func=cmd_delete)

    ah = asub.add_parser("history", help="state changes of a rule, newest first")
    ah.add_argument("rule_id", type=int)
    ah.add_argument("--limit", type=int, default=50)
    ah.add_argument("--json", action="store_true")
    _common(ah)
    ah.set_defaults(func=cmd_history)

    ae = asub.add_parser(
        "evaluate", help="evaluate every rule once now and send notifications for changes"
    )
    ae.add_argument("--json", action="store_true")
    _common(ae)
    ae.set_defaults(func=cmd_evaluate)
