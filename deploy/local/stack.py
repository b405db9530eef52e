"""The production stack of docker/compose/docker-compose.prod.yml on this machine's loopback.

    nginx (TLS) ─┬─ api ─────────┐
                 ├─ api-server ──┼─ PgBouncer ─┬─ timescaledb-primary ──(streaming)── replica
                 └─ collector ───┘             └─ timescaledb-replica (llm_observatory_ro)
                         └──── Redis master ── replica, watched by three Sentinels

Every program is the Debian package's, started the way its container starts it: PostgreSQL's
replica, PgBouncer, Redis and the Sentinels through the project's own entrypoint scripts
(docker/compose/scripts/db-entrypoint.sh, docker/pgbouncer/pgbouncer-entrypoint.sh,
docker/redis/redis-entrypoint.sh), the roles through docker/compose/scripts/db-init.sh, the
secrets through scripts/generate-secrets.sh, and the configuration files of docker/ rendered by
deploy/local/render.py. PostgreSQL and PgBouncer run as the postgres user; the servers read
their settings from docker/.env.production.example and their secrets from files, as in the
compose file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from deploy.local import render
from deploy.local.certs import make_certificate
from deploy.local.postgres import DB, PgNode, kill_all, pg_bin
from deploy.local.procs import (
    Proc,
    StackError,
    chown_tree,
    free_ports,
    postgres_user,
    run,
    spawn,
    wait_for,
)

ROOT = render.ROOT
DOCKER = render.DOCKER
SCRIPTS = ROOT / "scripts"
VENV_BIN = Path(sys.executable).parent
SERVERS = {"api": "api", "api-server": "api", "collector": "collector"}
SENTINELS = ("redis-sentinel-1", "redis-sentinel-2", "redis-sentinel-3")
PG_NODES = ("timescaledb-primary", "timescaledb-replica")
# Secrets the stack's programs read, as Docker mounts them (/run/secrets/<name>).
SECRET_NAMES = (
    "postgres_password",
    "replication_password",
    "redis_password",
    "database_url",
    "database_read_url",
    "redis_url",
    "observatory_secret_key",
    "initial_admin_key",
    "grafana_db_password",
)
PORT_NAMES = (
    "nginx-http",
    "nginx-https",
    "api",
    "api-server",
    "collector",
    "grafana",
    "grpc-api",
    "grpc-api-server",
    "grpc-collector",
    *PG_NODES,
    "pgbouncer",
    "redis-master",
    "redis-replica",
    *SENTINELS,
)

__all__ = ["PgNode", "Stack", "StackError"]


def tool(name: str) -> str:
    for candidate in (VENV_BIN / name, pg_bin() / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if not found:
        raise StackError(f"{name} is not installed (see .ci/apt-packages.d/ha.txt)")
    return found


def production_env() -> dict[str, str]:
    """The server settings of docker/.env.production.example (OBSERVATORY_* lines)."""
    values = {}
    for line in (DOCKER / ".env.production.example").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("OBSERVATORY_") and key != "OBSERVATORY_VERSION":
            values[key] = value
    return values


class Stack:
    """Start, break, repair and stop the loopback production stack in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory.resolve()
        self.pg_user = postgres_user()
        self.ports: dict[str, int] = {}
        self.procs: dict[str, Proc] = {}
        self.keys: dict[str, str] = {}
        self.primary_name = PG_NODES[0]

    # ---------------------------------------------------------------------------- addresses

    @property
    def run_secrets(self) -> Path:
        return self.dir / "run-secrets"

    @property
    def ca_file(self) -> Path:
        """The CA that signed nginx's certificate (clients verify against it)."""
        return self.dir / "tls" / "ca.crt"

    def tls(self) -> ssl.SSLContext:
        """A client TLS context that trusts the stack's CA (nginx's certificate)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def api_url(self) -> str:
        """The API site: REST API and OTLP ingest (to the collector)."""
        return f"https://{render.API_HOST}:{self.ports['nginx-https']}"

    @property
    def ui_url(self) -> str:
        """The UI site (nginx's default server): web UI and everything else to the API servers."""
        return f"https://{render.UI_HOST}:{self.ports['nginx-https']}"

    def server_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def secret(self, name: str) -> str:
        return (self.run_secrets / name).read_text().strip()

    @property
    def admin_key(self) -> str:
        return self.secret("initial_admin_key")

    @property
    def pgbouncer_ini(self) -> Path:
        return self.dir / "pgbouncer" / "pgbouncer.ini"

    def pg(self, name: str) -> PgNode:
        return PgNode(name, self.dir / name, self.ports[name])

    @property
    def primary(self) -> PgNode:
        return self.pg(self.primary_name)

    @property
    def standby(self) -> PgNode:
        """The other PostgreSQL node: the streaming replica (or the failed old primary)."""
        return self.pg(next(n for n in PG_NODES if n != self.primary_name))

    # -------------------------------------------------------------------------- lifecycle

    def up(self) -> None:
        """Start everything; on failure stop what was started (the logs stay) and raise."""
        if self.dir.exists() and any(self.dir.iterdir()):
            raise StackError(f"{self.dir} is not empty: run `python -m deploy.local down` first")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        self.ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
        self.save()
        try:
            self._make_secrets()
            make_certificate(self.dir / "tls", tool("openssl"))
            self._start_primary()
            self.start_replica(clone=True)
            self._start_pgbouncer()
            self.start_redis("redis-master", "master")
            self.start_redis("redis-replica", "replica")
            self._start_sentinels()
            run([tool("observatory"), "migrate"], env=self.server_env("api"), timeout=180)
            self.start_server("api")
            self.start_servers(["api-server", "collector"])
            self._create_keys()
            self._start_nginx()
        except BaseException:
            self.down(remove=False)
            raise
        finally:
            self.save()

    def down(self, remove: bool = True) -> None:
        """Stop every process of the stack (servers first, databases last); remove ``dir``."""
        for name in ("nginx", "collector", "api-server", "api", *SENTINELS):
            if name in self.procs:
                self.procs[name].stop(signal.SIGTERM, 30)
        for name in ("redis-replica", "redis-master", "pgbouncer"):
            if name in self.procs:
                self.procs[name].stop(signal.SIGTERM, 15)
        for name in PG_NODES:
            if name in self.ports:
                self.stop_pg(name, "fast")
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)

    def save(self) -> None:
        state = {
            "ports": self.ports,
            "procs": {name: proc.to_json() for name, proc in self.procs.items()},
            "keys": self.keys,
            "primary": self.primary_name,
        }
        path = self.dir / "stack.json"
        path.write_text(json.dumps(state, indent=2) + "\n")
        path.chmod(0o600)

    @classmethod
    def load(cls, directory: Path) -> Stack:
        """The stack an earlier `up` left in ``directory`` (to stop it from another process)."""
        stack = cls(directory)
        path = stack.dir / "stack.json"
        if not path.exists():
            raise StackError(f"no stack in {stack.dir} (stack.json is missing)")
        state = json.loads(path.read_text())
        stack.ports = state["ports"]
        stack.procs = {n: Proc.from_json(p) for n, p in state["procs"].items()}
        stack.keys = state["keys"]
        stack.primary_name = state["primary"]
        return stack

    def logs(self) -> list[Path]:
        return sorted(p for p in self.dir.rglob("*.log") if p.is_file())

    # ---------------------------------------------------------------------------- secrets

    def _make_secrets(self) -> None:
        """scripts/generate-secrets.sh, then /run/secrets as Docker mounts it, for this host."""
        generated = self.dir / "secrets"
        run(
            [
                "bash",
                str(SCRIPTS / "generate-secrets.sh"),
                "--quiet",
                "--dir",
                str(generated),
                "--owner",
                f"{os.getuid()}:{os.getgid()}",
                "--with-replica",
                "--redis-sentinel",
            ]
        )
        target = self.run_secrets
        target.mkdir(mode=0o700)
        sentinel_ports = [self.ports[s] for s in SENTINELS]
        for name in SECRET_NAMES:
            value = (generated / f"{name}.txt").read_text().strip()
            subs = render.secret_substitutions(
                name, pgbouncer_port=self.ports["pgbouncer"], sentinel_ports=sentinel_ports
            )
            (target / name).write_text(render.apply(value, subs, f"secrets/{name}.txt") + "\n")
        shutil.copyfile(generated / "tls/server.crt", target / "postgres_tls_cert")
        shutil.copyfile(generated / "tls/server.key", target / "postgres_tls_key")
        for path in target.iterdir():
            path.chmod(0o600)
        chown_tree(target, self.pg_user)

    # ------------------------------------------------------------------------- PostgreSQL

    def _pg_paths(self, node: PgNode) -> render.PgPaths:
        return render.PgPaths(
            port=node.port,
            base=node.base,
            cert=self.run_secrets / "postgres_tls_cert",
            key=self.run_secrets / "postgres_tls_key",
            archive_dir=self.dir / "wal-archive",
        )

    def _pg_base(self, node: PgNode) -> None:
        node.base.mkdir(mode=0o750)
        node.socket_dir.mkdir()
        (node.base / "pg_hba.conf").write_text(render.render_hba())
        archive = self.dir / "wal-archive"
        archive.mkdir(exist_ok=True)
        chown_tree(archive, self.pg_user)

    def _start_primary(self) -> None:
        node = self.pg(PG_NODES[0])
        self._pg_base(node)
        pwfile = node.base / "pwfile"
        pwfile.write_text(self.secret("postgres_password") + "\n")
        chown_tree(node.base, self.pg_user)
        # The official image's initdb with POSTGRES_INITDB_ARGS of the compose file.
        run(
            [
                str(pg_bin() / "initdb"),
                "-D",
                str(node.data),
                "-U",
                "postgres",
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--data-checksums",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            user=self.pg_user,
        )
        pwfile.unlink()
        node.conf.write_text(render.render_postgres_primary(self._pg_paths(node)))
        chown_tree(node.base, self.pg_user)
        self.start_pg(node)
        node.sql(f"CREATE DATABASE {DB}", "postgres")
        # The database image's first-start script: roles observatory, replicator, grafana_reader.
        run(
            ["bash", str(DOCKER / "compose/scripts/db-init.sh")],
            user=self.pg_user,
            env={
                "PATH": f"{pg_bin()}:/usr/bin:/bin",
                "SECRETS_DIR": str(self.run_secrets),
                "PGHOST": str(node.socket_dir),
                "PGPORT": str(node.port),
                "POSTGRES_USER": "postgres",
                "POSTGRES_DB": DB,
            },
        )

    def start_pg(self, node: PgNode) -> None:
        """Start a node whose data directory holds a primary (postgres -c config_file=...)."""
        proc = spawn(
            node.name,
            [str(pg_bin() / "postgres"), "-D", str(node.data), "-c", f"config_file={node.conf}"],
            node.log,
            user=self.pg_user,
        )
        self.procs[node.name] = proc
        self._wait_pg(node, proc)

    def _wait_pg(self, node: PgNode, proc: Proc, timeout: float = 120) -> None:
        def ready() -> bool:
            if not proc.alive():
                raise StackError(f"{node.name} exited:\n{proc.log_tail()}")
            return node.running()

        wait_for(ready, timeout, f"{node.name} to accept connections")

    def start_replica(self, *, clone: bool) -> PgNode:
        """The standby node through db-entrypoint.sh `replica`: with ``clone``, a fresh
        pg_basebackup of the current primary (slot replica_1), else a restart of the standby."""
        node, primary = self.standby, self.primary
        passfile = node.base / "replication.pgpass"
        if clone:
            shutil.rmtree(node.base, ignore_errors=True)
            self._pg_base(node)
            node.conf.write_text(
                render.render_postgres_replica(self._pg_paths(node), primary.port, passfile)
            )
            chown_tree(node.base, self.pg_user)
        env = {
            "PATH": f"{pg_bin()}:/usr/bin:/bin",
            "HOME": str(node.base),
            "PGDATA": str(node.data),
            "PRIMARY_HOST": "127.0.0.1",
            "PRIMARY_PORT": str(primary.port),
            "SECRETS_DIR": str(self.run_secrets),
            "REPLICATION_PASSFILE": str(passfile),
            "POSTGRES_CONFIG_FILE": str(node.conf),
            # Stock PostgreSQL: no TimescaleDB to preload; no tuning file, no pgBackRest here.
            "DB_PRELOAD_LIBRARIES": "pg_stat_statements",
            "PRODUCTION_ENV_FILE": str(node.base / "no-production.env"),
            "BACKUP_SCRIPT": str(node.base / "no-backup.sh"),
        }
        proc = spawn(
            node.name,
            ["bash", str(DOCKER / "compose/scripts/db-entrypoint.sh"), "replica"],
            node.log,
            env=env,
            user=self.pg_user,
        )
        self.procs[node.name] = proc
        self._wait_pg(node, proc)
        wait_for(lambda: self.replication_state() == "streaming", 60, f"{node.name} to stream")
        return node

    def set_synchronous_standby(self, names: str) -> None:
        """``synchronous_standby_names`` of the current primary, through postgresql.local.conf
        (the override file both shipped configurations include last); reloaded, not restarted.
        'replica_1': a commit is acknowledged once the replica has flushed it too."""
        node = self.primary
        local = node.base / "postgresql.local.conf"
        local.write_text(f"synchronous_standby_names = {render.quote(names)}\n")
        chown_tree(local, self.pg_user)
        node.sql("SELECT pg_reload_conf()", "postgres")
        wait_for(
            lambda: node.sql("SHOW synchronous_standby_names", "postgres")[0][0] == names,
            20,
            f"synchronous_standby_names = '{names}' on {node.name}",
        )

    def sync_state(self) -> str | None:
        rows = self.primary.sql(
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'replica_1'",
            "postgres",
        )
        return str(rows[0][0]) if rows else None

    def replication_state(self) -> str | None:
        rows = self.primary.sql(
            "SELECT state FROM pg_stat_replication WHERE application_name = 'replica_1'",
            "postgres",
        )
        return str(rows[0][0]) if rows else None

    def stop_pg(self, name: str, mode: str = "fast") -> None:
        """pg_ctl stop (``fast``: clean; ``immediate``: abort, crash recovery on next start)."""
        node = self.pg(name)
        if (node.data / "postmaster.pid").exists():
            pg_ctl = [str(pg_bin() / "pg_ctl"), "-D", str(node.data), "-w", "-t", "60"]
            result = run([*pg_ctl, "-m", mode, "stop"], user=self.pg_user, check=False, timeout=90)
            if result.returncode != 0 and mode != "immediate" and node.running():
                run([*pg_ctl, "-m", "immediate", "stop"], user=self.pg_user, check=False)
        if name in self.procs:
            self.procs[name].wait(30)

    def crash_pg(self, name: str) -> None:
        """Every process of the node killed at once with SIGKILL, as in a machine crash."""
        kill_all(self.procs[name], self.pg(name).data)

    def failover(self, timeout: float = 60) -> str:
        """scripts/failover-db.sh: promote the standby, point PgBouncer's primary at it."""
        old, new = self.primary, self.standby
        result = run(
            [
                "bash",
                str(SCRIPTS / "failover-db.sh"),
                "promote",
                "--replica-host",
                str(new.socket_dir),
                "--replica-port",
                str(new.port),
                "--old-primary-host",
                str(old.socket_dir),
                "--old-primary-port",
                str(old.port),
                "--new-primary",
                f"127.0.0.1:{new.port}",
                "--pgbouncer-ini",
                str(self.pgbouncer_ini),
                "--pgbouncer-pid",
                str(self.procs["pgbouncer"].pid),
                "--timeout",
                str(int(timeout)),
            ],
            timeout=timeout + 60,
        )
        self.primary_name = new.name
        self.save()
        return result.stdout + result.stderr

    def repoint_reads(self, node: PgNode) -> str:
        """scripts/failover-db.sh repoint: PgBouncer's read alias (llm_observatory_ro)."""
        result = run(
            [
                "bash",
                str(SCRIPTS / "failover-db.sh"),
                "repoint",
                "--database",
                f"{DB}_ro",
                "--to",
                f"127.0.0.1:{node.port}",
                "--pgbouncer-ini",
                str(self.pgbouncer_ini),
                "--pgbouncer-pid",
                str(self.procs["pgbouncer"].pid),
            ]
        )
        return result.stdout + result.stderr

    # -------------------------------------------------------------------------- PgBouncer

    def _start_pgbouncer(self) -> None:
        base = self.dir / "pgbouncer"
        base.mkdir(mode=0o750)
        auth_file = base / "userlist.txt"
        self.pgbouncer_ini.write_text(
            render.render_pgbouncer(
                port=self.ports["pgbouncer"],
                primary_port=self.ports[PG_NODES[0]],
                replica_port=self.ports[PG_NODES[1]],
                auth_file=auth_file,
                cert=self.run_secrets / "postgres_tls_cert",
                key=self.run_secrets / "postgres_tls_key",
            )
        )
        chown_tree(base, self.pg_user)
        proc = spawn(
            "pgbouncer",
            ["sh", str(DOCKER / "pgbouncer/pgbouncer-entrypoint.sh")],
            base / "pgbouncer.log",
            user=self.pg_user,
            env={
                "PATH": "/usr/sbin:/usr/bin:/bin",
                "SECRETS_DIR": str(self.run_secrets),
                "PGBOUNCER_AUTH_FILE": str(auth_file),
                "PGBOUNCER_INI": str(self.pgbouncer_ini),
            },
        )
        self.procs["pgbouncer"] = proc

        def login() -> bool:
            if not proc.alive():
                raise StackError(f"pgbouncer exited:\n{proc.log_tail()}")
            with psycopg.connect(self.secret("database_url"), connect_timeout=3) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)

        wait_for(login, 30, "a login through PgBouncer")

    # ---------------------------------------------------------------------- Redis, Sentinel

    def redis(self, name: str) -> redis.Redis:  # type: ignore[type-arg]
        return redis.Redis(
            host="127.0.0.1",
            port=self.ports[name],
            password=self.secret("redis_password"),
            socket_timeout=2,
            socket_connect_timeout=2,
        )

    def _redis_env(self, base: Path) -> dict[str, str]:
        return {
            "PATH": "/usr/bin:/bin",
            "REDIS_PASSWORD_FILE": str(self.run_secrets / "redis_password"),
            "REDIS_RUNTIME_DIR": str(base / "run"),
            "REDIS_DATA_DIR": str(base / "data"),
        }

    def start_redis(self, name: str, role: str) -> None:
        """redis-entrypoint.sh master|replica (a replica of redis-master's address)."""
        base = self.dir / name
        (base / "data").mkdir(parents=True, exist_ok=True)
        conf = base / "redis.conf"
        conf.write_text(render.render_redis(self.ports[name]))
        env = {**self._redis_env(base), "REDIS_CONF": str(conf)}
        if role == "replica":
            env.update(
                REDIS_MASTER_HOST="127.0.0.1", REDIS_MASTER_PORT=str(self.ports["redis-master"])
            )
        proc = spawn(
            name,
            ["sh", str(DOCKER / "redis/redis-entrypoint.sh"), role],
            base / "redis.log",
            env=env,
        )
        self.procs[name] = proc
        wait_for(lambda: self._ping(name, proc), 20, f"{name} to answer")

    def _ping(self, name: str, proc: Proc) -> bool:
        if not proc.alive():
            raise StackError(f"{name} exited:\n{proc.log_tail()}")
        client = self.redis(name)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def _start_sentinels(self) -> None:
        for name in SENTINELS:
            base = self.dir / name
            base.mkdir()
            conf = base / "sentinel.conf"
            conf.write_text(
                render.render_sentinel(self.ports[name], self.ports["redis-master"], base)
            )
            env = {**self._redis_env(base), "SENTINEL_CONF": str(conf)}
            proc = spawn(
                name,
                ["sh", str(DOCKER / "redis/redis-entrypoint.sh"), "sentinel"],
                base / "sentinel.log",
                env=env,
            )
            self.procs[name] = proc
            wait_for(lambda n=name, p=proc: self._ping(n, p), 20, f"{name} to answer")  # type: ignore[misc]
        sentinel = self.redis(SENTINELS[0])

        def quorum() -> bool:
            reply = sentinel.execute_command("SENTINEL", "CKQUORUM", "mymaster")
            replicas = sentinel.execute_command("SENTINEL", "REPLICAS", "mymaster")
            return bytes(reply).startswith(b"OK 3 usable") and len(replicas) == 1

        try:
            wait_for(quorum, 60, "three Sentinels that see each other and the replica")
        finally:
            sentinel.close()

    def redis_master_port(self) -> int:
        """The master's port as the first Sentinel that answers reports it."""
        for name in SENTINELS:
            if not self.procs[name].alive():
                continue
            client = self.redis(name)
            try:
                _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
                return int(port)
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise StackError("no Sentinel answers")

    # ---------------------------------------------------------------------------- servers

    def server_env(self, name: str) -> dict[str, str]:
        """The compose file's environment of the api/api-server/collector services."""
        data_dir = self.dir / "servers" / name
        env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVATORY_")}
        env.update(production_env())
        secrets = self.run_secrets
        env.update(
            {
                # One process per server: this machine has two cores for the whole stack.
                "OBSERVATORY_WORKERS": "1",
                "OBSERVATORY_HOST": "127.0.0.1",
                "OBSERVATORY_PORT": str(self.ports.get(name, 0)),
                "OBSERVATORY_DATA_DIR": str(data_dir),
                "OBSERVATORY_DATABASE_URL_FILE": str(secrets / "database_url"),
                "OBSERVATORY_DATABASE_READ_URL_FILE": str(secrets / "database_read_url"),
                "OBSERVATORY_REDIS_URL_FILE": str(secrets / "redis_url"),
                "OBSERVATORY_SECRET_KEY_FILE": str(secrets / "observatory_secret_key"),
                "OBSERVATORY_INITIAL_ADMIN_KEY_FILE": str(secrets / "initial_admin_key"),
                "OBSERVATORY_TRUSTED_PROXIES": "127.0.0.1/32",
                "OBSERVATORY_AUTO_MIGRATE": "false",
                "OBSERVATORY_ROLE": SERVERS.get(name, "api"),
                "OBSERVATORY_GRPC_PORT": str(self.ports.get(f"grpc-{name}", 0)),
            }
        )
        return env

    def start_server(self, name: str) -> Proc:
        self.start_servers([name])
        return self.procs[name]

    def start_servers(self, names: list[str]) -> None:
        """`observatory serve` for each service; returns once every one answers ready."""
        for name in names:
            data_dir = self.dir / "servers" / name
            data_dir.mkdir(parents=True, exist_ok=True)
            self.procs[name] = spawn(
                name,
                [tool("observatory"), "serve"],
                data_dir / "server.log",
                env=self.server_env(name),
                cwd=data_dir,
            )
        for name in names:
            self.wait_server_ready(name)
        self.save()

    def wait_server_ready(self, name: str, timeout: float = 90) -> None:
        proc = self.procs[name]

        def ready() -> bool:
            if not proc.alive():
                raise StackError(f"{name} exited:\n{proc.log_tail()}")
            return httpx.get(f"{self.server_url(name)}/health/ready", timeout=20).status_code == 200

        wait_for(ready, timeout, f"{name} to be ready")

    def _create_keys(self) -> None:
        for role in ("ingest", "read"):
            result = run(
                [
                    tool("observatory"),
                    "keys",
                    "create",
                    "--project",
                    "default",
                    "--role",
                    role,
                    "--name",
                    f"stack-{role}",
                ],
                env=self.server_env("api"),
            )
            self.keys[role] = result.stdout.strip().splitlines()[-1]
        self.keys["admin"] = self.admin_key

    # ------------------------------------------------------------------------------ nginx

    def _start_nginx(self) -> None:
        target = self.dir / "nginx"
        render.render_nginx(
            target,
            render.NginxPorts(
                http=self.ports["nginx-http"],
                https=self.ports["nginx-https"],
                api=self.ports["api"],
                api_server=self.ports["api-server"],
                collector=self.ports["collector"],
                grafana=self.ports["grafana"],
            ),
        )
        tls = self.dir / "tls"
        shutil.copyfile(tls / "server.crt", target / "certs/server.crt")
        shutil.copyfile(tls / "server.key", target / "certs/server.key")
        (target / "certs/server.key").chmod(0o600)
        # As on a VM: the master process as root, the workers unprivileged.
        globals_ = "daemon off;" + (" user nobody nogroup;" if os.geteuid() == 0 else "")
        conf = str(target / "nginx.prod.conf")
        run([tool("nginx"), "-t", "-c", conf, "-g", globals_])
        proc = spawn("nginx", [tool("nginx"), "-c", conf, "-g", globals_], target / "stdout.log")
        self.procs["nginx"] = proc

        def through_nginx() -> bool:
            if not proc.alive():
                raise StackError(f"nginx exited:\n{proc.log_tail()}")
            response = httpx.get(f"{self.api_url}/health/ready", verify=self.tls(), timeout=3)
            return response.status_code == 200

        wait_for(through_nginx, 30, "the API through nginx")

    @property
    def access_log(self) -> Path:
        return self.dir / "nginx" / "logs" / "access.log"

    def access_log_entries(self) -> list[dict[str, Any]]:
        lines = self.access_log.read_text().splitlines() if self.access_log.exists() else []
        return [json.loads(line) for line in lines if line.startswith("{")]
