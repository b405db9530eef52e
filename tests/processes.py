"""Throw-away PostgreSQL clusters and Redis servers for tests that stop, kill or reconfigure them.

They never touch the machine's shared services. PostgreSQL refuses to run as root, so initdb,
pg_ctl and postgres run as the ``postgres`` user (``runuser``) when the tests run as root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis

from tests.conftest import free_port


def pg_bin() -> Path:
    """The directory of the newest installed PostgreSQL server binaries."""
    root = Path("/usr/lib/postgresql")
    versions = sorted(
        (p for p in root.iterdir() if (p / "bin" / "initdb").exists()), key=lambda p: int(p.name)
    )
    if not versions:
        raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
    return versions[-1] / "bin"


def as_postgres(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + args, check=True, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload,no-any-return]


@dataclass
class PgCluster:
    """A private PostgreSQL cluster on a free port."""

    root: Path
    port: int
    extra_conf: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> PgCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        as_postgres(
            [
                str(pg_bin() / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                "unix_socket_directories = ''\nfsync = on\nshared_buffers = 64MB\n"
            )
            for line in self.extra_conf:
                conf.write(line + "\n")
        return self

    def start(self, timeout: float = 30) -> None:
        as_postgres(
            [
                str(pg_bin() / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ]
        )
        self.wait_ready(timeout)

    def stop(self, mode: str = "fast") -> None:
        as_postgres([str(pg_bin() / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop"])

    def running(self) -> bool:
        result = subprocess.run(
            (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else [])
            + [str(pg_bin() / "pg_ctl"), "-D", str(self.data_dir), "status"],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.returncode == 0

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        if self.data_dir.exists() and self.running():
            with contextlib.suppress(subprocess.CalledProcessError):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def new_pg_cluster(extra_conf: list[str] | None = None) -> PgCluster:
    root = Path(tempfile.mkdtemp(prefix="obs-pg-"))
    os.chmod(root, 0o755)
    cluster = PgCluster(root, free_port(), list(extra_conf or []))
    cluster.init()
    cluster.start()
    return cluster


@dataclass
class RedisServer:
    """A private redis-server on a free port."""

    root: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def client(self) -> redis.Redis:  # type: ignore[type-arg]
        return redis.Redis(port=self.port, socket_timeout=2)


def new_redis() -> RedisServer:
    server = RedisServer(Path(tempfile.mkdtemp(prefix="obs-redis-")), free_port())
    server.start()
    return server
