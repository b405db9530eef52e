"""Processes and databases the benchmarks run against: ``observatory serve``, throw-away
PostgreSQL databases, and a sampler of resident memory and CPU time from ``/proc``."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.processes import free_port, stop_process
from bench.stats import slope_per_minute

BIN = Path(sys.executable).parent
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- PostgreSQL databases -----------------------------------------------------------------------


def _with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def create_database(admin_url: str, prefix: str = "obs_bench") -> str:
    """A fresh, empty database on the server of ``admin_url``; returns its URL."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return _with_db(admin_url, name)


def drop_database(admin_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1].split("?", 1)[0]
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def pg_database(admin_url: str, given_url: str | None, prefix: str) -> Iterator[str]:
    """The database to use: ``given_url`` as is, or a fresh one dropped afterwards."""
    if given_url:
        yield given_url
        return
    url = create_database(admin_url, prefix)
    try:
        yield url
    finally:
        drop_database(admin_url, url)


def reset_database(url: str) -> None:
    """Empty a given (BENCH_DATABASE_URL) database: drop and recreate its public schema."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")


# --- processes ----------------------------------------------------------------------------------


def children_of(pid: int) -> list[int]:
    """Every descendant of ``pid`` (uvicorn workers, multiprocessing helpers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    stack = [pid]
    while stack:
        for child in parents.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def rss_bytes(pid: int) -> int | None:
    """VmRSS of one process, from /proc/<pid>/status."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of one process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class ResourceSampler:
    """Samples RSS and CPU time of server processes (and their children) every ``interval``."""

    roots: list[int]
    interval: float = 1.0
    samples: list[tuple[float, dict[int, int]]] = field(default_factory=list)
    _cpu_start: dict[int, float] = field(default_factory=dict)
    _cpu_end: dict[int, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0

    def pids(self) -> list[int]:
        out: list[int] = []
        for root in self.roots:
            out.append(root)
            out.extend(children_of(root))
        return out

    def _cpu(self) -> dict[int, float]:
        out = {}
        for pid in self.pids():
            value = cpu_seconds(pid)
            if value is not None:
                out[pid] = value
        return out

    def start(self) -> ResourceSampler:
        self._t0 = time.monotonic()
        self._cpu_start = self._cpu()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _sample(self) -> None:
        sample: dict[int, int] = {}
        for pid in self.pids():
            value = rss_bytes(pid)
            if value is not None:
                sample[pid] = value
        self.samples.append((time.monotonic() - self._t0, sample))
        self._cpu_end = self._cpu() or self._cpu_end

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        return self.summary()

    def summary(self) -> dict[str, Any]:
        mib = 1024 * 1024
        per_process: dict[int, list[tuple[float, float]]] = {}
        totals: list[tuple[float, float]] = []
        for t, sample in self.samples:
            for pid, value in sample.items():
                per_process.setdefault(pid, []).append((t, value / mib))
            totals.append((t, sum(sample.values()) / mib))
        processes = []
        for pid, points in sorted(per_process.items()):
            values = [v for _, v in points]
            tenth = max(len(values) // 10, 1)
            processes.append(
                {
                    "pid": pid,
                    "max_rss_mib": round(max(values), 1),
                    "first_10pct_mean_mib": round(sum(values[:tenth]) / tenth, 1),
                    "last_10pct_mean_mib": round(sum(values[-tenth:]) / tenth, 1),
                    "slope_mib_per_min": _round(slope_per_minute(points)),
                    # Uneven CPU between workers shows connections that are not balanced.
                    "cpu_seconds": _round(
                        self._cpu_end.get(pid, 0.0) - self._cpu_start.get(pid, 0.0)
                    ),
                }
            )
        elapsed = self.samples[-1][0] if self.samples else 0.0
        cpu_used = sum(
            self._cpu_end.get(pid, 0.0) - self._cpu_start.get(pid, 0.0) for pid in self._cpu_end
        )
        return {
            "samples": len(self.samples),
            "max_rss_mib_per_process": max((p["max_rss_mib"] for p in processes), default=None),
            "max_rss_mib_total": round(max((v for _, v in totals), default=0.0), 1),
            "slope_mib_per_min_total": _round(slope_per_minute(totals)),
            # Start-up growth (imports, caches, pools) is not a leak: the trend without the
            # first fifth of the run.
            "slope_mib_per_min_after_first_fifth": _round(
                slope_per_minute(totals[len(totals) // 5 :])
            ),
            "processes": processes,
            "cpu_seconds": round(cpu_used, 1),
            "cpu_cores_busy": round(cpu_used / elapsed, 2) if elapsed else None,
            "timeline_mib_total": [
                (round(t, 1), round(v, 1)) for t, v in totals[:: max(1, len(totals) // 60)]
            ],
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


@dataclass
class Server:
    """A running ``observatory serve`` process."""

    process: subprocess.Popen[bytes]
    base_url: str
    admin_key: str
    data_dir: Path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 60) -> int:
        return stop_process(self.process, timeout)

    def log_tail(self, chars: int = 3000) -> str:
        return log_tail(self.log_path, chars)


def log_tail(log_path: Path, chars: int = 3000) -> str:
    """The last ``chars`` characters of a log file ("" when it cannot be read)."""
    try:
        return log_path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def wait_http(url: str, process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Poll ``url`` until it answers 200 (bounded)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s: {last}")


def start_process(
    name: str,
    args: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log_path: Path,
    ready_url: str,
    timeout: float,
) -> subprocess.Popen[bytes]:
    """Start ``args`` in a session of its own, stdout and stderr appended to ``log_path``, and
    wait until ``ready_url`` answers 200. A process that does not get there is stopped, and the
    error names ``name`` and quotes the end of its log."""
    with open(log_path, "ab") as handle:
        process = subprocess.Popen(
            args,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    try:
        wait_http(ready_url, process, timeout)
    except Exception as exc:
        stop_process(process, 10)
        raise RuntimeError(f"{name} did not start ({exc}):\n{log_tail(log_path)}") from exc
    return process


def start_observatory(
    data_dir: Path,
    database_url: str,
    admin_key: str,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Server:
    """Start ``observatory serve`` and wait until /health/ready answers 200."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OBSERVATORY_")},
        "OBSERVATORY_DATA_DIR": str(data_dir),
        "OBSERVATORY_DATABASE_URL": database_url,
        "OBSERVATORY_INITIAL_ADMIN_KEY": admin_key,
        "OBSERVATORY_LOG_FORMAT": "json",
        # Several servers run side by side; gRPC would make them compete for port 4317.
        "OBSERVATORY_GRPC_ENABLED": "false",
        "OBSERVATORY_GRPC_PORT": str(free_port()),
        **(env or {}),
    }
    log_path = data_dir / f"server-{port}.log"
    base_url = f"http://127.0.0.1:{port}"
    process = start_process(
        "observatory serve",
        [str(BIN / "observatory"), "serve", "--port", str(port), "--workers", str(workers)],
        env=full_env,
        cwd=data_dir,
        log_path=log_path,
        ready_url=f"{base_url}/health/ready",
        timeout=120,
    )
    return Server(process, base_url, admin_key, data_dir, log_path)


@contextlib.contextmanager
def observatory_servers(
    count: int,
    work_dir: Path,
    database_url: str,
    admin_key: str,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
) -> Iterator[list[Server]]:
    """``count`` server processes on one database, stopped afterwards."""
    servers: list[Server] = []
    try:
        for i in range(count):
            servers.append(
                start_observatory(
                    work_dir / f"server{i}", database_url, admin_key, workers=workers, env=env
                )
            )
        yield servers
    finally:
        for server in servers:
            server.stop()


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
