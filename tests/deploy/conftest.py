"""Helpers for the deployment tests: real tools, throw-away PostgreSQL/Redis, rendered configs.

Every test here drives the real program that reads a file (docker-compose, nginx, postgres,
redis-server, redis-sentinel, pgbouncer, fail2ban, hadolint, openssl). A missing tool is an
error, never a skip (.ci/apt-packages.d/deploy.txt lists the packages).

The production files are used as shipped. Where a test must run them on this machine, only
hosts, ports, paths and memory sizes are changed, the same substitutions a VM install makes.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
SCRIPTS = ROOT / "scripts"
PG_BIN = Path(os.environ.get("OBSERVATORY_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
VENV_BIN = Path(sys.executable).parent

SECRET_NAMES = (
    "postgres_password",
    "replication_password",
    "redis_password",
    "database_url",
    "database_read_url",
    "redis_url",
    "observatory_secret_key",
    "initial_admin_key",
    "grafana_admin_password",
    "grafana_db_password",
    "pgbackrest_cipher_pass",
    "s3_access_key",
    "s3_secret_key",
    "smtp_password",
    "slack_webhook_url",
    "pagerduty_routing_key",
)
THIRD_PARTY_SECRETS = (
    "s3_access_key",
    "s3_secret_key",
    "smtp_password",
    "slack_webhook_url",
    "pagerduty_routing_key",
)

# The memory settings of postgresql.*.conf scaled down for a test machine (the only values a
# test changes through postgresql.local.conf, the include both files read last).
PG_MEMORY_OVERRIDE = """\
shared_buffers = 32MB
effective_cache_size = 128MB
work_mem = 4MB
maintenance_work_mem = 32MB
autovacuum_work_mem = 16MB
temp_buffers = 8MB
huge_pages = off
wal_buffers = 1MB
max_wal_size = 128MB
min_wal_size = 32MB
wal_keep_size = 64MB
max_slot_wal_keep_size = 256MB
"""


def tool(name: str) -> str:
    """Absolute path of a required program; fails (never skips) when it is missing."""
    for candidate in (VENV_BIN / name, PG_BIN / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed (see .ci/apt-packages.d/deploy.txt)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GaveUp(Exception):
    """Raised by a wait_until predicate when waiting longer cannot help (a process died)."""


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except GaveUp:
            raise
        except Exception as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def run(
    cmd: list[str], *, check: bool = True, timeout: float = 60, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def stop_process(
    proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float = 10
) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def make_cert(directory: Path, cn: str, sans: str, owner: str | None = None) -> tuple[Path, Path]:
    """A self-signed certificate and key (made by the test, never committed)."""
    directory.mkdir(parents=True, exist_ok=True)
    crt, key = directory / "server.crt", directory / "server.key"
    run(
        [
            tool("openssl"),
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={cn}",
            "-addext",
            f"subjectAltName={sans}",
            "-keyout",
            str(key),
            "-out",
            str(crt),
        ]
    )
    key.chmod(0o600)
    if owner:
        shutil.chown(crt, owner, owner)
        shutil.chown(key, owner, owner)
    return crt, key


def read_secret(directory: Path, name: str) -> str:
    return (directory / f"{name}.txt").read_text().strip()


@pytest.fixture(scope="session")
def generated_secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """secrets/ as scripts/generate-secrets.sh writes it (owned by the test user)."""
    directory = tmp_path_factory.mktemp("generated") / "secrets"
    run(
        [
            "bash",
            str(SCRIPTS / "generate-secrets.sh"),
            "--quiet",
            "--dir",
            str(directory),
            "--owner",
            f"{os.getuid()}:{os.getgid()}",
        ]
    )
    return directory


# ------------------------------------------------------------------------------------ PostgreSQL


def _postgres_user() -> str:
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("the postgres system user is missing (install postgresql-15)")
    return "postgres"


def as_postgres(cmd: list[str]) -> list[str]:
    """Run a command as the postgres user (the servers may not run as root)."""
    if os.getuid() == 0:
        return [tool("runuser"), "-u", _postgres_user(), "--", *cmd]
    return cmd


def popen_as_postgres(cmd: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Start a long-running server as the postgres user, signals going straight to it."""
    if os.getuid() == 0:
        user = _postgres_user()
        kwargs.update(user=user, group=user, extra_groups=[])
    return subprocess.Popen(cmd, **kwargs)  # type: ignore[call-overload]


def private_tmpdir(prefix: str, owner: str | None = None) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    if owner and os.getuid() == 0:
        shutil.chown(path, owner, owner)
    return path


@dataclass
class PgServer:
    """A throw-away PostgreSQL 15 cluster started with one of the production configs."""

    base: Path
    port: int
    conf_name: str
    extra: list[str] = field(default_factory=list)
    data: Path = field(init=False)
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.data = self.base / "data"
        self.log = self.base / "server.log"

    @property
    def config_file(self) -> Path:
        return self.base / "postgresql.conf"

    def options(self) -> list[str]:
        """Only hosts, ports and paths differ from the container."""
        return [
            f"config_file={self.config_file}",
            f"port={self.port}",
            "listen_addresses=127.0.0.1",
            f"unix_socket_directories={self.base}",
            f"hba_file={self.base / 'pg_hba.conf'}",
            f"ssl_cert_file={self.base / 'tls' / 'server.crt'}",
            f"ssl_key_file={self.base / 'tls' / 'server.key'}",
            *self.extra,
        ]

    def start(self) -> None:
        opts = " ".join(f"-c {shlex_quote(o)}" for o in self.options())
        run(
            as_postgres(
                [
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    opts,
                    "start",
                ]
            ),
            timeout=90,
        )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            run(
                as_postgres(
                    [
                        str(PG_BIN / "pg_ctl"),
                        "-D",
                        str(self.data),
                        "-m",
                        "fast",
                        "-w",
                        "-t",
                        "60",
                        "stop",
                    ]
                ),
                check=False,
                timeout=90,
            )

    def psql(self, sql: str, db: str = "postgres", check: bool = True) -> str:
        """SQL as the superuser over the local socket (trust, as in the container)."""
        proc = run(
            as_postgres(
                [
                    tool("psql"),
                    "-X",
                    "-q",
                    "-At",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    str(self.base),
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    "-d",
                    db,
                    "-c",
                    sql,
                ]
            ),
            check=check,
        )
        return proc.stdout.strip()


def shlex_quote(value: str) -> str:
    import shlex

    return shlex.quote(value)


def prepare_pg_base(conf_name: str, prefix: str) -> tuple[Path, int]:
    """A directory holding the shipped config (unchanged), the memory override and a cert."""
    user = _postgres_user()
    base = private_tmpdir(prefix, user)
    shutil.copyfile(DOCKER / conf_name, base / "postgresql.conf")
    (base / "postgresql.local.conf").write_text(PG_MEMORY_OVERRIDE)
    shutil.copyfile(DOCKER / "postgresql.hba.conf", base / "pg_hba.conf")
    make_cert(base / "tls", "timescaledb-primary", "DNS:localhost,IP:127.0.0.1", owner=user)
    if os.getuid() == 0:
        for path in base.rglob("*"):
            shutil.chown(path, user, user)
    return base, free_port()


def pg_initdb(base: Path, superuser_password: str) -> None:
    pwfile = base / "pwfile"
    pwfile.write_text(superuser_password + "\n")
    if os.getuid() == 0:
        shutil.chown(pwfile, "postgres", "postgres")
    run(
        as_postgres(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(base / "data"),
                "-U",
                "postgres",
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--data-checksums",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ]
        ),
        timeout=120,
    )
    pwfile.unlink()


def docker_style_secrets(source: Path, target: Path, overrides: dict[str, str]) -> Path:
    """secrets/NAME.txt -> /run/secrets/NAME, as Docker mounts them, with test hosts/ports."""
    target.mkdir(parents=True, exist_ok=True)
    for name in SECRET_NAMES:
        value = overrides.get(name, read_secret(source, name))
        (target / name).write_text(value + "\n")
        (target / name).chmod(0o644)
    return target


# ------------------------------------------------------------------------------------ processes


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; all stopped at the end, whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            stop_process(proc)


def redis_client(port: int, password: str | None, timeout: float = 5) -> Any:
    """A client that reports failures at once (redis-py retries auth errors with backoff)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis(
        host="127.0.0.1",
        port=port,
        password=password,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def redis_ping(port: int, password: str | None) -> bool:

    client = redis_client(port, password)
    try:
        return bool(client.ping())
    finally:
        client.close()


def parse_conf(path: Path, comment: str = "#") -> dict[str, str]:
    """key = value lines of postgresql.conf-style files (last one wins)."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split(comment, 1)[0].strip() if not raw.lstrip().startswith(comment) else ""
        match = re.match(r"^([\w.]+)\s*=\s*(.*)$", line)
        if match:
            values[match.group(1)] = match.group(2).strip().strip("'")
    return values


# ------------------------------------------------------------------------------------ nginx


@dataclass
class NginxConfig:
    """docker/nginx rendered for this machine: only ports, upstreams and paths replaced."""

    root: Path
    http_port: int
    https_port: int

    @property
    def main(self) -> Path:
        return self.root / "nginx.prod.conf"

    @property
    def access_log(self) -> Path:
        return self.root / "logs" / "access.log"


def render_nginx_config(
    target: Path,
    upstreams: dict[str, list[str]],
    *,
    owner: str | None = None,
) -> NginxConfig:
    """Copy docker/nginx to target and substitute what differs on a VM or test bed.

    upstreams maps the upstream names of includes/upstreams.conf (observatory_api,
    observatory_collector, observatory_grafana) to `server` lines without the trailing `;`,
    e.g. ["127.0.0.1:8001 max_fails=3 fail_timeout=15s"].
    """
    shutil.copytree(DOCKER / "nginx", target)
    shutil.copyfile("/etc/nginx/mime.types", target / "mime.types")
    for sub in ("logs", "tmp", "certs"):
        (target / sub).mkdir()
    make_cert(
        target / "certs",
        "observatory.yourdomain.com",
        "DNS:observatory.yourdomain.com,DNS:api.observatory.yourdomain.com,IP:127.0.0.1",
    )
    shipped_upstreams = (target / "includes/upstreams.conf").read_text()
    for name in upstreams:
        assert f"upstream {name} {{" in shipped_upstreams, name
    blocks = []
    for name, servers in upstreams.items():
        lines = "\n".join(f"    server {server};" for server in servers)
        blocks.append(
            f"upstream {name} {{\n    zone {name} 256k;\n    least_conn;\n{lines}\n"
            "    keepalive 16;\n}\n"
        )
    (target / "includes/upstreams.conf").write_text("\n".join(blocks))
    http_port, https_port = free_port(), free_port()
    main = (target / "nginx.prod.conf").read_text()
    assert "/var/log/nginx/" in main and "/tmp/" in main
    main = main.replace("/tmp/", f"{target}/tmp/").replace("/var/log/nginx/", f"{target}/logs/")
    (target / "nginx.prod.conf").write_text(main)
    site = (target / "conf.d/llm-observatory.conf").read_text()
    assert "listen 8080 " in site and "listen 8443 " in site
    site = site.replace("listen 8080 ", f"listen 127.0.0.1:{http_port} ").replace(
        "listen 8443 ", f"listen 127.0.0.1:{https_port} "
    )
    site = site.replace("root /var/www/certbot;", f"root {target}/certbot;")
    (target / "conf.d/llm-observatory.conf").write_text(site)
    if owner:
        for path in [target, *target.rglob("*")]:
            shutil.chown(path, owner)
    return NginxConfig(target, http_port, https_port)
