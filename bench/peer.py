"""The peer: Arize Phoenix (``phoenix serve``) on SQLite and on PostgreSQL, same workload.

Phoenix acknowledges an OTLP request before it stores the spans (a bulk inserter drains a queue
in the background; at capacity it answers 503). "Ingested" is therefore measured where a query
can see it: a poller counts rows in Phoenix's ``spans`` table every second while the exporters
run, and afterwards until every acknowledged span is readable (bounded by ``drain_timeout_s``).
The headline figure is spans that became readable per second during the load window.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.driver import DriverConfig, run_load
from bench.processes import free_port, stop_process
from bench.servers import ResourceSampler, log_tail, start_process
from bench.verify import count_acked, count_spans
from bench.workload import Workload

PHOENIX_VERSION = "20.26.1"
DEFAULT_VENV = Path(__file__).resolve().parent / ".venv-phoenix"


def phoenix_executable(venv: Path) -> Path:
    exe = venv / "bin" / "phoenix"
    if not exe.exists():
        raise FileNotFoundError(
            f"{exe} is missing: run `make bench-peer` (it installs "
            f"arize-phoenix=={PHOENIX_VERSION} into {venv})"
        )
    return exe


def phoenix_version(venv: Path) -> str | None:
    try:
        out = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('arize-phoenix'))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@dataclass
class PhoenixProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    storage_url: str  # where its spans table is (sqlite:///… or postgresql://…)
    work_dir: Path
    log_path: Path

    def stop(self, timeout: float = 60) -> None:
        stop_process(self.process, timeout)

    def log_tail(self, chars: int = 3000) -> str:
        return log_tail(self.log_path, chars)


def start_phoenix(venv: Path, work_dir: Path, pg_url: str | None) -> PhoenixProcess:
    """``phoenix serve`` on a free port, its working directory in ``work_dir``."""
    exe = phoenix_executable(venv)
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PHOENIX_", "OBSERVATORY_"))},
        "PHOENIX_WORKING_DIR": str(work_dir),
        "PHOENIX_HOST": "127.0.0.1",
        "PHOENIX_PORT": str(port),
        "PHOENIX_GRPC_PORT": str(free_port()),
        "PHOENIX_TELEMETRY_ENABLED": "false",
    }
    if pg_url:
        env["PHOENIX_SQL_DATABASE_URL"] = pg_url
        storage = pg_url
    else:
        storage = f"sqlite:///{work_dir / 'phoenix.db'}"
    log_path = work_dir / "phoenix.log"
    base_url = f"http://127.0.0.1:{port}"
    process = start_process(
        "phoenix serve",
        [str(exe), "serve"],
        env=env,
        cwd=work_dir,
        log_path=log_path,
        ready_url=f"{base_url}/healthz",
        timeout=180,
    )
    return PhoenixProcess(process, base_url, storage, work_dir, log_path)


@dataclass
class StoragePoller:
    """Counts stored spans every ``interval`` seconds in a thread."""

    url: str
    interval: float = 1.0
    points: list[tuple[float, int]] = field(default_factory=list)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self, t0: float) -> StoragePoller:
        def run() -> None:
            while not self._stop.is_set():
                try:
                    self.points.append((time.monotonic() - t0, count_spans(self.url)))
                except Exception:
                    self.errors += 1
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=run, name="storage-poller", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def at(self, t: float) -> int:
        """The count observed last at or before ``t`` (seconds since t0)."""
        best = 0
        for when, value in self.points:
            if when <= t:
                best = value
        return best

    def latest(self) -> int:
        return self.points[-1][1] if self.points else 0


def run_phoenix(
    workload: Workload,
    driver: DriverConfig,
    venv: Path,
    work_dir: Path,
    pg_url: str | None,
    drain_timeout_s: float,
) -> dict[str, Any]:
    """One Phoenix ingest measurement; returns the figures and the raw timeline."""
    phoenix = start_phoenix(venv, work_dir, pg_url)
    sampler = ResourceSampler([phoenix.process.pid]).start()
    try:
        config = DriverConfig(**{**vars(driver), "targets": [phoenix.base_url], "api_key": None})
        t0 = time.monotonic()
        poller = StoragePoller(phoenix.storage_url).start(t0)
        result = asyncio.run(run_load(workload, config))
        load_end = result.finished - t0
        window_start = result.warmup_end - t0
        acked = result.acked_spans()
        drained_at: float | None = None
        deadline = time.monotonic() + drain_timeout_s
        while time.monotonic() < deadline:
            if poller.latest() >= acked:
                drained_at = time.monotonic() - t0
                break
            time.sleep(1)
        observed = time.monotonic() - t0
        poller.stop()
        summary = result.summary()
        window = max(load_end - window_start, 1e-9)
        readable_in_window = poller.at(load_end) - poller.at(window_start)
        prefixes = [workload.trace_prefix(r.seq).hex() for r in result.records if r.acked_spans]
        check = count_acked(phoenix.storage_url, prefixes, schema="phoenix")
        out: dict[str, Any] = {
            "driver": summary,
            "acked_spans_per_s": summary["spans_per_s"],
            # Headline: spans readable at the end of the observation (load, then drain) per
            # second since the first request; the same definition gives ours acked/s, since
            # ours answers only after the commit.
            "readable_spans_per_s": round(poller.latest() / max(observed, 1e-9), 1),
            "readable_spans_per_s_during_load": round(readable_in_window / window, 1),
            "observed_s": round(observed, 1),
            "readable_at_end": poller.latest(),
            "readable_at_load_end": poller.at(load_end),
            "acked_spans_total": acked,
            "all_acked_readable_after_s": None if drained_at is None else round(drained_at, 1),
            "drain_timeout_s": drain_timeout_s,
            "verify": {**check, "acked_spans": acked, "ok": check["readable_acked_spans"] >= acked},
            "timeline": poller.points[:: max(1, len(poller.points) // 120)],
            "poll_errors": poller.errors,
            "resources": sampler.stop(),
        }
    finally:
        sampler.stop()
        phoenix.stop()
    # Spans Phoenix had acknowledged but not stored when it stopped are lost.
    out["acked_but_dropped_at_shutdown"] = _pending_at_shutdown(phoenix.log_tail(20_000))
    return out


def _pending_at_shutdown(log: str) -> int | None:
    """Phoenix logs how many queued (already acknowledged) spans it dropped when stopping."""
    match = re.search(r"stopped with (\d+) spans still pending", log)
    return int(match.group(1)) if match else None
