"""``python -m deploy.local up|down|status [--dir DIR]``: the loopback production stack by hand."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deploy.local.postgres import DB
from deploy.local.stack import SENTINELS, Stack, StackError

DEFAULT_DIR = Path("/tmp/llm-observatory-stack")  # noqa: S108 - loopback test bed, root-owned


def describe(stack: Stack) -> str:
    """What a person needs to use the running stack."""
    p = stack.ports
    primary, standby = stack.primary, stack.standby
    return "\n".join(
        [
            f"LLM Observatory stack in {stack.dir}",
            f"  web UI              {stack.ui_url}/",
            f"  API and OTLP        {stack.api_url}/v1/traces  (REST {stack.api_url}/api/v1/)",
            f"  CA certificate      {stack.ca_file}   (curl --cacert ..., or verify=...)",
            f"  admin key           {stack.keys.get('admin', '')}",
            f"  ingest key          {stack.keys.get('ingest', '')}",
            f"  read key            {stack.keys.get('read', '')}",
            f"  API servers         api :{p['api']}, api-server :{p['api-server']}, "
            f"collector :{p['collector']} (plain HTTP, loopback)",
            f"  PgBouncer           127.0.0.1:{p['pgbouncer']}  ({stack.pgbouncer_ini})",
            f"  PostgreSQL          primary {primary.name} :{primary.port}, standby "
            f"{standby.name} :{standby.port}; superuser: "
            f"psql -h {primary.socket_dir} -p {primary.port} -U postgres {DB}",
            f"  Redis               master :{p['redis-master']}, replica :{p['redis-replica']}, "
            f"Sentinels :{p[SENTINELS[0]]} :{p[SENTINELS[1]]} :{p[SENTINELS[2]]} "
            f"(password: {stack.run_secrets / 'redis_password'})",
            f"  logs                {stack.dir}/*/*.log",
            f"  stop                python -m deploy.local down --dir {stack.dir}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local",
        description="The production stack (nginx, API servers, collector, PostgreSQL primary + "
        "replica, PgBouncer, Redis + Sentinel) on this machine's loopback, from docker/'s files.",
    )
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help=f"state directory (default {DEFAULT_DIR})"
    )
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            stack = Stack(args.dir)
            print(f"starting the stack in {stack.dir} (about a minute) ...", flush=True)
            try:
                stack.up()
            except StackError:
                print(f"the stack did not start; logs stay in {stack.dir}", file=sys.stderr)
                raise
            print(describe(stack))
        elif args.action == "down":
            if not args.dir.exists():
                print(f"nothing to stop: {args.dir} does not exist")
                return 0
            try:
                stack = Stack.load(args.dir)
            except StackError:
                stack = Stack(args.dir)  # an `up` that failed early: nothing runs, remove it
            stack.down(remove=True)
            print(f"stopped and removed {args.dir}")
        else:
            stack = Stack.load(args.dir)
            print(describe(stack))
            for name, proc in stack.procs.items():
                print(f"  {name:<20} pid {proc.pid:<8} {'running' if proc.alive() else 'stopped'}")
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
