"""Shared fixtures: real PostgreSQL and Redis from this machine, real server processes.

PostgreSQL: ``OBSERVATORY_TEST_DATABASE_URL`` (default the machine's server, database ``test``)
is used only to create and drop throw-away databases, one per test module. Redis:
``OBSERVATORY_TEST_REDIS_URL``. A missing service is an error, never a skip.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from bench.processes import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get(
    "OBSERVATORY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("OBSERVATORY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ARTIFACTS = ROOT / "test-artifacts"


def _with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def create_pg_database(prefix: str = "obs_test") -> str:
    """A fresh, empty database on the test server; returns its URL."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    return _with_db(PG_ADMIN_URL, name)


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test module."""
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test."""
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}")
    return REDIS_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Runs a test once on the embedded SQLite database and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'observatory.db'}"
        return
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@dataclass
class Server:
    """A real ``observatory serve`` process."""

    process: subprocess.Popen[bytes]
    base_url: str
    port: int
    admin_key: str
    data_dir: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30, **kwargs)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30) -> int:
        return stop_process(self.process, timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


# Every server start_server started, so that none outlives the test session (_no_servers_left).
_STARTED: list[Server] = []


def stop_all(servers: list[Server]) -> None:
    """Stop every server in order, even when stopping one of them fails (that error is raised)."""
    failures: list[Exception] = []
    for server in servers:
        try:
            server.stop()
        except Exception as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


def wait_ready(
    base_url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            response = httpx.get(f"{base_url}/health/ready", timeout=2)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"server at {base_url} not ready: {last}")


def _admin_key(data_dir: Path, env: dict[str, str]) -> str:
    key_file = data_dir / "initial-admin-key"
    if key_file.exists():
        return key_file.read_text().strip()
    # The database was bootstrapped earlier (a second server on the same database).
    return subprocess.run(
        [str(BIN / "observatory"), "keys", "create", "--project", "default", "--role", "admin"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=data_dir,
    ).stdout.strip()


def start_server(
    data_dir: Path,
    database_url: str | None = None,
    env: dict[str, str] | None = None,
    port: int | None = None,
    args: list[str] | None = None,
) -> Server:
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    admin_key = "obs_test_" + secrets.token_urlsafe(24)
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OBSERVATORY_")},
        "OBSERVATORY_DATA_DIR": str(data_dir),
        "OBSERVATORY_LOG_FORMAT": "json",
        "OBSERVATORY_INITIAL_ADMIN_KEY": admin_key,
        # Several servers run at once in the tests: none may take the default gRPC port.
        "OBSERVATORY_GRPC_PORT": str(free_port()),
        # The fixtures use fixed timestamps in the past: retention must not run under them.
        "OBSERVATORY_RETENTION_INTERVAL_SECONDS": "0",
        **({"OBSERVATORY_DATABASE_URL": database_url} if database_url else {}),
        **(env or {}),
    }
    log_path = data_dir / f"server-{port}.log"
    handle = open(log_path, "ab")  # noqa: SIM115 - closed when the process ends
    process = subprocess.Popen(
        [str(BIN / "observatory"), "serve", "--port", str(port), *(args or [])],
        env=full_env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=data_dir,
    )
    handle.close()
    base_url = f"http://127.0.0.1:{port}"
    # Whatever goes wrong from here on (Ctrl-C included), the process must not outlive the call.
    try:
        try:
            wait_ready(base_url, process)
        except Exception:
            stop_process(process, timeout=5)
            raise RuntimeError(
                f"server did not start:\n{log_path.read_text(errors='replace')[-4000:]}"
            ) from None
        admin_key = _admin_key(data_dir, full_env)
    except BaseException:
        stop_process(process)
        raise
    server = Server(process, base_url, port, admin_key, data_dir, log_path, full_env)
    _STARTED.append(server)
    return server


@pytest.fixture(scope="session", autouse=True)
def _no_servers_left() -> Iterator[None]:
    """A safety net: stop any server a test or fixture started and did not stop."""
    yield
    stop_all(_STARTED)


@pytest.fixture
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """Start real server processes; all are stopped when the test ends."""
    servers: list[Server] = []

    def factory(
        database_url: str | None = None,
        env: dict[str, str] | None = None,
        data_dir: Path | None = None,
        port: int | None = None,
        args: list[str] | None = None,
    ) -> Server:
        directory = data_dir or tmp_path_factory.mktemp("server")
        server = start_server(directory, database_url, env, port, args)
        servers.append(server)
        return server

    try:
        yield factory
    finally:
        stop_all(servers)


@pytest.fixture
def artifacts_dir(request: pytest.FixtureRequest) -> Path:
    path = ARTIFACTS / request.node.name.replace("/", "_").replace("[", "_").replace("]", "")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path
