"""Throw-away PostgreSQL clusters backed up by the real pgBackRest through scripts/backup.sh.

A cluster here plays both production containers at once, with only paths and ports changed:

- the database primary: its postmaster runs with the environment the database entry point gets
  by sourcing scripts/backup.sh (cipher passphrase, rendered pgBackRest configuration), and
  archives WAL with the archive_command of docker/postgresql.prod.conf, verbatim;
- the backup service: scripts/backup.sh, run as the same OS user, with the settings the
  compose file gives it (PGHOST, PGDATABASE, BACKUP_METRICS_DIR, ...).

The pgBackRest configuration is docker/pgbackrest/pgbackrest.conf as shipped; the paths that
differ on this machine (data directory, socket, repository, log, spool and lock directories)
are pgBackRest's own PGBACKREST_* environment overrides. Everything runs as the postgres user
through runuser. A missing tool is an error, never a skip.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.otlp_builder import BASE_NS, SpanSpec, llm_attributes, protobuf_request, span_id

ROOT = Path(__file__).resolve().parents[2]
BACKUP_SH = ROOT / "scripts" / "backup.sh"
PGBACKREST_CONF = ROOT / "docker" / "pgbackrest" / "pgbackrest.conf"
PROD_PG_CONF = ROOT / "docker" / "postgresql.prod.conf"
VENV_BIN = Path(sys.executable).parent
PG_BIN = Path(os.environ.get("OBSERVATORY_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
STANZA = "llm-observatory"
DATABASE = "observatory"
PASSPHRASE = "test-only-repository-passphrase-4f1c9a7e2b6d8035"
# Ingested into every span; must never be readable in a repository.
CANARY = "observatory-backup-canary-7Q2xZr9w"


def tool(name: str) -> str:
    """Absolute path of a required program; fails (never skips) when it is missing."""
    for candidate in (PG_BIN / name, VENV_BIN / name):
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed (.ci/apt-packages.d/backup.txt lists the packages)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:  # reported when the wait gives up
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def prod_archive_command() -> str:
    """archive_command of docker/postgresql.prod.conf, used verbatim by the test clusters."""
    text = PROD_PG_CONF.read_text()
    mode = re.search(r"^\s*archive_mode\s*=\s*(\S+)", text, re.M)
    command = re.search(r"^\s*archive_command\s*=\s*'((?:[^']|'')*)'", text, re.M)
    assert mode and mode.group(1) == "on", "postgresql.prod.conf must set archive_mode = on"
    assert command, "postgresql.prod.conf must set archive_command"
    return command.group(1).replace("''", "'")


def base_path() -> str:
    dirs = [str(PG_BIN), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin"]
    return ":".join([*dirs, "/bin"])


def chown_postgres(path: Path) -> None:
    for root, dirs, files in os.walk(path):
        shutil.chown(root, "postgres", "postgres")
        for name in dirs + files:
            shutil.chown(os.path.join(root, name), "postgres", "postgres")


@dataclass
class Result:
    returncode: int
    output: str  # stdout and stderr, interleaved as the operator sees them

    def ok(self) -> Result:
        assert self.returncode == 0, f"backup.sh failed ({self.returncode}):\n{self.output[-6000:]}"
        return self


@dataclass
class Cluster:
    """A PostgreSQL primary with WAL archiving to pgBackRest, and its backup tooling."""

    base: Path
    port: int
    settings: dict[str, str] = field(default_factory=dict)  # BACKUP_* of .env.production
    postmaster_env: dict[str, str] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.base / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.base / "socket"

    @property
    def repo(self) -> Path:
        return self.base / "repo"

    @property
    def metrics_file(self) -> Path:
        return self.base / "metrics" / "pgbackrest.prom"

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _common_env(self, role: str) -> dict[str, str]:
        """Environment shared by the 'database container' and the 'backup container'."""
        return {
            "PATH": base_path(),
            "HOME": str(self.base),
            "LANG": "C.UTF-8",
            "SECRETS_DIR": str(self.base / "secrets"),
            "BACKUP_PGBACKREST_CONF": str(PGBACKREST_CONF),
            "BACKUP_RUNTIME_DIR": str(self.base / f"runtime-{role}"),
            "PGBACKREST_PG1_PATH": str(self.data),
            "PGBACKREST_PG1_PORT": str(self.port),
            "PGBACKREST_PG1_SOCKET_PATH": str(self.socket_dir),
            "PGBACKREST_REPO1_PATH": str(self.repo),
            "PGBACKREST_LOG_PATH": str(self.base / f"log-{role}"),
            "PGBACKREST_SPOOL_PATH": str(self.base / f"spool-{role}"),
            # Separate containers have separate /tmp, so separate lock directories.
            "PGBACKREST_LOCK_PATH": str(self.base / f"lock-{role}"),
            **self.settings,
        }

    def backup_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """What the compose backup service gives scripts/backup.sh."""
        return {
            **self._common_env("backup"),
            "PGHOST": str(self.socket_dir),
            "PGPORT": str(self.port),
            "PGUSER": "postgres",
            "PGDATABASE": DATABASE,
            "BACKUP_METRICS_DIR": str(self.base / "metrics"),
            "BACKUP_RESTORE_TEST_DIR": str(self.base / "restore-test"),
            "PG_BINDIR": str(PG_BIN),
            **(extra or {}),
        }

    def backup(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 180
    ) -> Result:
        """Run scripts/backup.sh ARGS as the postgres user."""
        proc = subprocess.run(
            ["runuser", "-u", "postgres", "--", "bash", str(BACKUP_SH), *args],
            env=self.backup_env(env),
            cwd=self.base,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
        return Result(proc.returncode, proc.stdout)

    def source_env(self) -> dict[str, str]:
        """The environment the database entry point has after `. scripts/backup.sh`."""
        proc = subprocess.run(
            ["runuser", "-u", "postgres", "--", "bash", "-c", f'. "{BACKUP_SH}" && env -0'],
            env=self._common_env("db"),
            cwd=self.base,
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        pairs = (item.split("=", 1) for item in proc.stdout.decode().split("\0") if "=" in item)
        return dict(pairs)

    def pg_ctl(self, *args: str, data: Path | None = None, timeout: float = 120) -> None:
        proc = subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                tool("pg_ctl"),
                "-D",
                str(data or self.data),
                *args,
            ],
            env=self.postmaster_env,
            cwd=self.base,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, f"pg_ctl {args} failed:\n{proc.stdout}\n{proc.stderr}"

    def start(self) -> None:
        self.postmaster_env = self.source_env()
        self.pg_ctl("-l", str(self.base / "postgres.log"), "-w", "-t", "60", "start")

    def stop(self, data: Path | None = None) -> None:
        if ((data or self.data) / "postmaster.pid").exists():
            self.pg_ctl("-m", "fast", "-w", "-t", "60", "stop", data=data)

    def sql(self, query: str, database: str = DATABASE, port: int | None = None) -> str:
        proc = subprocess.run(
            [
                tool("psql"),
                "-X",
                "-qAt",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(port or self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                query,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, f"psql failed: {proc.stderr}"
        return proc.stdout.strip()

    def start_copy(self, data: Path) -> int:
        """Start a restored data directory next to the primary; returns its port once promoted."""
        port = free_port()
        options = (
            f"-c port={port} -c listen_addresses='' -c unix_socket_directories='{self.socket_dir}'"
            " -c archive_mode=off"
        )
        self.pg_ctl(
            "-o",
            options,
            "-l",
            str(data.parent / f"{data.name}.log"),
            "-w",
            "-t",
            "120",
            "start",
            data=data,
        )
        wait_for(
            lambda: self.sql("SELECT NOT pg_is_in_recovery()", "postgres", port) == "t",
            120,
            "the restored copy to finish recovery",
        )
        return port

    def metrics(self) -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        text = self.metrics_file.read_text()
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


@contextlib.contextmanager
def cluster(
    settings: Mapping[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
    prefix: str = "obs-backup-",
) -> Iterator[Cluster]:
    """A new primary (initdb --data-checksums like production) with a database and archiving.

    `settings` are the BACKUP_* variables of .env.production, `secrets` extra Docker secrets
    (name -> content) beside pgbackrest_cipher_pass.
    """
    for name in ("pgbackrest", "runuser"):
        tool(name)
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)
    node = Cluster(base=base, port=free_port(), settings=dict(settings or {}))
    try:
        for sub in ("socket", "repo", "metrics", "secrets", "restore-test"):
            (base / sub).mkdir()
        for role in ("db", "backup"):
            for sub in ("runtime", "log", "spool", "lock"):
                (base / f"{sub}-{role}").mkdir()
        for name, value in {"pgbackrest_cipher_pass": PASSPHRASE, **(secrets or {})}.items():
            (base / "secrets" / name).write_text(value + "\n")
            (base / "secrets" / name).chmod(0o600)
        chown_postgres(base)
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                tool("initdb"),
                "-D",
                str(node.data),
                "--data-checksums",
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",  # a throw-away cluster: no need to wait for the disk
            ],
            cwd=base,
            capture_output=True,
            check=True,
            timeout=120,
        )
        with (node.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"""
port = {node.port}
listen_addresses = '127.0.0.1'
unix_socket_directories = '{node.socket_dir}'
shared_buffers = 32MB
max_wal_size = 256MB
wal_level = replica
archive_mode = on
archive_command = '{prod_archive_command().replace("'", "''")}'
"""
            )
        node.start()
        node.sql(f'CREATE DATABASE "{DATABASE}"', "postgres")
        yield node
    finally:
        with contextlib.suppress(Exception):
            node.stop()
        for pid_file in base.glob("*/postmaster.pid"):  # restored copies a test left running
            with contextlib.suppress(Exception):
                node.pg_ctl("-m", "immediate", "-w", "stop", data=pid_file.parent)
        _stop_async_archivers(base)
        shutil.rmtree(base, ignore_errors=True)


def _stop_async_archivers(base: Path) -> None:
    """The asynchronous archive-push of a stopped cluster exits on its own; do not wait for it."""
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc_dir / "cmdline").read_bytes().split(b"\0")
            if b"archive-push:async" in cmdline and str(base).encode() in b" ".join(cmdline):
                os.kill(int(proc_dir.name), signal.SIGTERM)


# ------------------------------------------------------------------------------------ ingest


class Ingest:
    """Sends spans through the real OTLP endpoint and remembers what was acknowledged."""

    def __init__(self, base_url: str, key: str) -> None:
        self.client = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        self.acked: list[str] = []
        self._next = 1

    def batch(self, traces: int = 5) -> list[str]:
        """Ingest `traces` traces of two spans each; returns the span ids acknowledged."""
        specs: list[SpanSpec] = []
        for _ in range(traces):
            n = self._next
            self._next += 1
            start = BASE_NS + n * 1_000_000_000
            specs.append(
                SpanSpec(
                    n, n * 100, None, "agent", start, 100.0, attributes={"test.canary": CANARY}
                )
            )
            specs.append(
                SpanSpec(
                    n,
                    n * 100 + 1,
                    n * 100,
                    "chat gpt-4o",
                    start + 1_000_000,
                    40.0,
                    attributes={**llm_attributes(), "test.canary": CANARY},
                )
            )
        response = self.client.post(
            "/v1/traces",
            content=protobuf_request(specs),
            headers={"Content-Type": "application/x-protobuf"},
        )
        assert response.status_code == 200, response.text
        ids = [span_id(spec.span) for spec in specs]
        self.acked.extend(ids)
        return ids

    def close(self) -> None:
        self.client.close()


def utc_now_target() -> str:
    """A recovery target as an operator types it: 'YYYY-MM-DD HH:MM:SS.ffffff+00'."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def flip_bytes(path: Path, count: int = 64) -> None:
    """Corrupt a file in the middle, as a failing disk or a bad upload would."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, min(middle + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------ S3


@dataclass
class S3Server:
    """moto's S3 (its WSGI app) behind uvicorn with TLS on 127.0.0.1.

    moto's own `moto_server --ssl-cert` uses Werkzeug's development server, which closes TLS
    connections without close_notify after a PUT; pgBackRest (OpenSSL 3) rejects that as
    "unexpected eof while reading". uvicorn shuts TLS down properly.
    """

    process: subprocess.Popen[bytes]
    port: int
    ca_file: Path
    log: Path
    access_key: str = "AKIAOBSERVATORYTEST"
    secret_key: str = "observatory-test-secret-key"  # a fake server's key
    region: str = "us-east-1"

    @property
    def endpoint_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            verify=str(self.ca_file),
        )


MOTO_APP = """
import sys
import uvicorn
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

app = DomainDispatcherApplication(create_backend_app)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), interface="wsgi",
            ssl_certfile=sys.argv[2], ssl_keyfile=sys.argv[3], log_level="warning")
"""


@contextlib.contextmanager
def s3_server() -> Iterator[S3Server]:
    """A TLS S3 endpoint whose certificate (CN=127.0.0.1, made here) pgBackRest verifies."""
    directory = Path(tempfile.mkdtemp(prefix="obs-backup-s3-"))
    directory.chmod(0o755)  # the postgres user reads the CA file
    crt, key = directory / "s3.crt", directory / "s3.key"
    subprocess.run(
        [
            tool("openssl"),
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            # pgBackRest 2.45 matches the endpoint against DNS names only, Python's ssl an
            # IP address against IP entries only: the certificate carries both.
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=DNS:127.0.0.1,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(crt),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    crt.chmod(0o644)
    port = free_port()
    log = directory / "moto.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-c", MOTO_APP, str(port), str(crt), str(key)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
    server = S3Server(process, port, crt, log)
    try:

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"moto exited: {log.read_text()[-2000:]}")
            context = ssl.create_default_context(cafile=str(crt))
            return httpx.get(server.endpoint_url, verify=context, timeout=2).status_code == 200

        wait_for(answers, 60, "the S3 server")
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)
