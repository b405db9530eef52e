"""``observatory``: the one command-line entry point."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from observatory import __version__
from observatory.config import REGISTRY, ConfigError, Settings, load_settings
from observatory.model import Role

# Settings a CLI flag may override, by flag name.
SERVE_FLAGS = ("host", "port", "workers", "database_url", "role", "data_dir")


COMMON_FLAGS = ("database_url", "data_dir")


def _settings(args: argparse.Namespace, flags: tuple[str, ...] = COMMON_FLAGS) -> Settings:
    overrides = {name: getattr(args, name, None) for name in flags}
    return load_settings(overrides)


def _database(settings: Settings) -> Any:
    from observatory.store.engine import Database

    return Database(settings.database_url, None, pool_size=2)


def _migrated(settings: Settings) -> Any:
    from observatory.store.engine import migrate

    db = _database(settings)
    if settings.auto_migrate:
        migrate(db)
    return db


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from observatory.app import _print_banner, bootstrap
    from observatory.logs import setup_logging

    settings = _settings(args, SERVE_FLAGS)
    setup_logging(settings.log_level, settings.log_format)
    # Migrate and bootstrap once here, before any worker starts, so workers never race.
    db = _migrated(settings)
    key = bootstrap(db, settings)
    db.dispose()
    if key is None and sys.stdout.isatty():
        # Like Jupyter, show the way in at every start while the initial key file is there.
        key_file = settings.data_dir / "initial-admin-key"
        if key_file.is_file():
            key = key_file.read_text().strip() or None
    if key:
        _print_banner(settings, key)
    # Workers re-read settings from the environment: pass the flags on.
    for name in SERVE_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            os.environ[f"OBSERVATORY_{name.upper()}"] = str(value)
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        import tempfile

        metrics_dir = tempfile.mkdtemp(prefix="observatory-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    uvicorn.run(
        "observatory.cli:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        access_log=False,
        log_config=None,
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=15,
        timeout_graceful_shutdown=30,
        loop="uvloop",
        http="httptools",
    )
    return 0


def app_from_env() -> Any:
    """Application factory for uvicorn workers (settings from the environment)."""
    from observatory.app import create_app
    from observatory.logs import setup_logging

    settings = load_settings()
    setup_logging(settings.log_level, settings.log_format)
    return create_app(settings)


def cmd_migrate(args: argparse.Namespace) -> int:
    from observatory.store.engine import migrate

    settings = _settings(args)
    db = _database(settings)
    revision = migrate(db)
    print(f"database at revision {revision}")
    return 0


def cmd_rollups(args: argparse.Namespace) -> int:
    from observatory.store import cube

    db = _migrated(_settings(args))
    result = cube.compact(db)
    if result.skipped:
        print("another process is compacting the rollup cube; try again later", file=sys.stderr)
        return 1
    print(f"rollup cube: rebuilt {result.hours} hours in {result.seconds:.1f} s")
    return 0


def cmd_projects(args: argparse.Namespace) -> int:
    from observatory.store import admin

    settings = _settings(args)
    db = _migrated(settings)
    if args.action == "create":
        try:
            with db.write() as conn:
                project = admin.create_project(conn, args.name)
                admin.record_audit(
                    conn,
                    action="project.create",
                    outcome="ok",
                    actor="cli",
                    project_id=project.project_id,
                    object_type="project",
                    object_id=str(project.project_id),
                    details={"name": args.name},
                )
        except admin.Conflict as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"created project {project.name} (id {project.project_id})")
        return 0
    with db.read() as conn:
        rows = admin.list_projects(conn)
    if args.json:
        print(
            orjson.dumps(
                [
                    {
                        "project_id": p.project_id,
                        "name": p.name,
                        "created_at": p.created_at.isoformat(),
                    }
                    for p in rows
                ]
            ).decode()
        )
    else:
        print(f"{'ID':>4}  {'NAME':<32} CREATED")
        for p in rows:
            print(f"{p.project_id:>4}  {p.name:<32} {p.created_at:%Y-%m-%d %H:%M}")
    return 0


def _project_id(conn: Any, name: str) -> int:
    from observatory.store import admin

    return admin.get_project(conn, name=name).project_id


def cmd_keys(args: argparse.Namespace) -> int:
    from observatory.store import admin

    settings = _settings(args)
    db = _migrated(settings)
    try:
        if args.action == "create":
            expires = None
            if args.expires_in_days:
                expires = datetime.now(tz=UTC) + timedelta(days=args.expires_in_days)
            with db.write() as conn:
                project_id = _project_id(conn, args.project)
                key, secret = admin.create_key(
                    conn, project_id, Role(args.role), args.name or "", expires
                )
                admin.record_audit(
                    conn,
                    action="key.create",
                    outcome="ok",
                    actor="cli",
                    project_id=project_id,
                    object_type="key",
                    object_id=str(key.key_id),
                    details={"role": args.role},
                )
            print(secret)
            return 0
        if args.action == "revoke":
            with db.write() as conn:
                key = admin.revoke_key(conn, args.key_id)
                admin.record_audit(
                    conn,
                    action="key.revoke",
                    outcome="ok",
                    actor="cli",
                    project_id=key.project_id,
                    object_type="key",
                    object_id=str(args.key_id),
                )
            print(f"revoked key {args.key_id} ({key.key_prefix}…)")
            return 0
        with db.read() as conn:
            keys = admin.list_keys(conn, _project_id(conn, args.project) if args.project else None)
    except admin.NotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'ID':>4}  {'PROJECT':<16} {'ROLE':<7} {'PREFIX':<14} {'NAME':<20} STATE")
    for k in keys:
        state = (
            "revoked"
            if k.revoked_at
            else ("expired" if k.expires_at and k.expires_at <= datetime.now(tz=UTC) else "active")
        )
        print(
            f"{k.key_id:>4}  {k.project_name:<16} {k.role.value:<7} "
            f"{k.key_prefix + '…':<14} {k.name[:20]:<20} {state}"
        )
    return 0


def cmd_prices(args: argparse.Namespace) -> int:
    from observatory.store import admin

    settings = _settings(args)
    db = _migrated(settings)
    try:
        if args.action == "set":
            try:
                values = [
                    Decimal(v) if v is not None else None
                    for v in (args.input, args.output, args.cache_read, args.cache_write)
                ]
            except InvalidOperation:
                print(
                    "error: prices must be decimal numbers (USD per million tokens)",
                    file=sys.stderr,
                )
                return 2
            with db.write() as conn:
                project_id = _project_id(conn, args.project)
                price = admin.set_price(
                    conn,
                    project_id,
                    args.provider or "",
                    args.model,
                    values[0] or Decimal(0),
                    values[1] or Decimal(0),
                    values[2],
                    values[3],
                )
                admin.record_audit(
                    conn,
                    action="price.set",
                    outcome="ok",
                    actor="cli",
                    project_id=project_id,
                    object_type="price",
                    object_id=str(price.price_id),
                    details={"model": args.model, "provider": args.provider or ""},
                )
            print(f"price {price.price_id} set for {args.model}")
            return 0
        with db.read() as conn:
            prices = admin.list_prices(conn, _project_id(conn, args.project))
    except admin.NotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'ID':>4}  {'PROVIDER':<12} {'MODEL':<32} {'IN/MTOK':>10} {'OUT/MTOK':>10}")
    for p in prices:
        print(
            f"{p.price_id:>4}  {p.provider or '*':<12} {p.model:<32} "
            f"{p.input_usd_per_mtok:>10} {p.output_usd_per_mtok:>10}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from observatory import demo

    parser = argparse.ArgumentParser(
        prog="observatory", description="LLM Observatory server and tools."
    )
    parser.add_argument("--version", action="version", version=f"observatory {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--database-url", help="overrides OBSERVATORY_DATABASE_URL")
        p.add_argument("--data-dir", help="overrides OBSERVATORY_DATA_DIR")

    serve = sub.add_parser("serve", help="run the server (API, OTLP endpoint, UI)")
    common(serve)
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--workers", type=int, help="server processes (default 1)")
    serve.add_argument(
        "--role", choices=("api", "collector"), help="api (everything) or collector (ingest only)"
    )
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    common(migrate)
    migrate.set_defaults(func=cmd_migrate)

    projects = sub.add_parser("projects", help="create and list projects")
    psub = projects.add_subparsers(dest="action", required=True)
    pc = psub.add_parser("create", help="create a project")
    pc.add_argument("name")
    common(pc)
    pl = psub.add_parser("list", help="list projects")
    pl.add_argument("--json", action="store_true")
    common(pl)
    projects.set_defaults(func=cmd_projects)

    keys = sub.add_parser("keys", help="create, list and revoke API keys")
    ksub = keys.add_subparsers(dest="action", required=True)
    kc = ksub.add_parser("create", help="create a key and print it (only the key) on stdout")
    kc.add_argument("--project", required=True)
    kc.add_argument("--role", required=True, choices=[r.value for r in Role])
    kc.add_argument("--name", default="")
    kc.add_argument("--expires-in-days", type=int)
    common(kc)
    kl = ksub.add_parser("list", help="list keys")
    kl.add_argument("--project")
    common(kl)
    kr = ksub.add_parser("revoke", help="revoke a key by id")
    kr.add_argument("key_id", type=int)
    common(kr)
    keys.set_defaults(func=cmd_keys)

    prices = sub.add_parser(
        "prices", help="custom model prices of a project (USD per million tokens)"
    )
    prsub = prices.add_subparsers(dest="action", required=True)
    ps = prsub.add_parser("set", help="set the price of a model")
    ps.add_argument("--project", required=True)
    ps.add_argument("--model", required=True)
    ps.add_argument("--provider", default="")
    ps.add_argument("--input", required=True, help="USD per million input tokens")
    ps.add_argument("--output", required=True, help="USD per million output tokens")
    ps.add_argument("--cache-read")
    ps.add_argument("--cache-write")
    common(ps)
    pls = prsub.add_parser("list", help="list custom prices")
    pls.add_argument("--project", required=True)
    common(pls)
    prices.set_defaults(func=cmd_prices)

    rollups = sub.add_parser("rollups", help="maintain the dashboard rollups")
    rsub = rollups.add_subparsers(dest="action", required=True)
    rc = rsub.add_parser(
        "compact",
        help="build the pre-merged hourly latency histograms (the cube) of every changed hour "
        "now, instead of waiting for the server's compaction rounds",
    )
    common(rc)
    rollups.set_defaults(func=cmd_rollups)

    settings_cmd = sub.add_parser(
        "settings", help="print every setting with its environment variable"
    )
    settings_cmd.set_defaults(func=cmd_settings)
    from observatory import cli_governance

    cli_governance.register(sub)
    demo.register(sub)
    from observatory import cli_alerts

    cli_alerts.register(sub)
    return parser


def cmd_settings(args: argparse.Namespace) -> int:
    for s in REGISTRY:
        default = "(generated)" if s.secret and s.default is None else s.default
        print(f"{s.env:<40} default {default!s:<24} {s.doc}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "database_url") is False:
        args.database_url = None
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
