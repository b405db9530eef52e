"""Ingest worker processes: decoding and normalising OTLP exports on every core.

Turning an export request into rows (protobuf decoding, normalisation, pricing, redaction, JSON
and COPY encoding, rollup aggregation) is pure Python work that holds the GIL, so in one process
it runs on one core however many threads it has. :class:`PreparePool` runs
:func:`pipeline.prepare` in a pool of worker processes instead: the server process keeps the
sockets, authentication and the group-commit writer, and sends each request body to a worker,
which sends back the encoded rows, their aggregates and the usage numbers for the metrics.

A worker that dies (killed, out of memory) breaks the pool: the request in flight is answered
503 with Retry-After (its spans were not stored, so the client's retry loses nothing) and a new
pool is started for the next request. A worker whose server process is gone (SIGKILL leaves it
no chance to stop its pool) exits on its own within a second: see :func:`_watch_parent`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from observatory.ingest.pipeline import Policy, Prepared, prepare

log = logging.getLogger(__name__)

MAX_AUTO_PROCESSES = 8


class WorkersUnavailable(Exception):
    """A worker process died while preparing this request; the client should retry."""


def resolve_processes(configured: int) -> int:
    """-1 → one per CPU this process may use (at most MAX_AUTO_PROCESSES); otherwise as given.

    "May use" is the smaller of the CPUs it may run on and its cgroup's CPU quota (a container
    limited to ``cpus: 2`` on a 32-core host gets 2, not 32).
    """
    if configured >= 0:
        return configured
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, min(cpus, MAX_AUTO_PROCESSES))


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup's quota (v2 ``cpu.max`` or v1 ``cfs_quota_us``), or None."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


# How often a worker checks that its server process is still there.
PARENT_POLL_SECONDS = 1.0


def _init_worker() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the server shuts the pool down
    # itself after draining, so a worker must not die of the same SIGINT mid-request.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch_parent()


def _watch_parent(poll_seconds: float = PARENT_POLL_SECONDS) -> None:
    """Exit this worker within ``poll_seconds`` once the server process that started it is gone.

    The server stops its pool when it shuts down, but after SIGKILL (or the OOM killer) the
    workers would wait on their call queue forever. A process whose parent exits is given a new
    parent (init, or a subreaper), so ``getppid()`` stops returning the pid it returned at start
    when, and only when, the server has exited. The end of file on ``parent_process().sentinel``
    would do too, but it comes when no process holds the other end of that pipe any more, which
    depends on what the server and anything it starts do with that descriptor.
    """
    parent_pid = os.getppid()
    owner = multiprocessing.parent_process()
    owner_pid = owner.pid if owner is not None else None
    if owner_pid is not None and owner_pid != parent_pid and not _exists(owner_pid):
        os._exit(1)  # the server died before this worker got here: it was reparented already
    threading.Thread(
        target=_exit_when_orphaned,
        args=(parent_pid, poll_seconds),
        name="observatory-parent-watch",
        daemon=True,
    ).start()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process has the pid
    return True


def _exit_when_orphaned(parent_pid: int, poll_seconds: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_seconds)
    # Not a clean exit: the main thread may hold the call queue's lock, and nobody is left to
    # read a result.
    os._exit(1)


def _warm_up() -> int:
    """Run in each new worker so that the imports happen before the first request."""
    return os.getpid()


class PreparePool:
    """Runs :func:`pipeline.prepare` in worker processes (or in threads when ``processes`` is 0).

    ``encode`` and ``aggregates`` are passed on to :func:`prepare`: the PostgreSQL writer wants
    COPY lines and both want the aggregates, computed where the CPU is plentiful.
    """

    def __init__(self, processes: int, *, encode: bool, aggregates: bool = True) -> None:
        self.processes = processes
        self.encode = encode
        self.aggregates = aggregates
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        if self.processes <= 0:
            return
        with self._lock:
            if self._executor is not None:
                return
            try:
                self._executor = self._new_executor()
            except OSError as exc:
                # Process pools need POSIX semaphores (a writable /dev/shm); without them ingest
                # still works, on one core.
                log.warning(
                    "cannot start ingest worker processes (%s: %s); decoding in threads instead",
                    exc.__class__.__name__,
                    exc,
                )
                self.processes = 0

    def _new_executor(self) -> ProcessPoolExecutor:
        # "spawn": the server process has threads (writer, event loop) that fork would copy in
        # an undefined state.
        executor = ProcessPoolExecutor(
            max_workers=self.processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
        )
        # Start every worker now rather than on the first requests.
        for future in [executor.submit(_warm_up) for _ in range(self.processes)]:
            future.result(timeout=120)
        log.info("started %d ingest worker processes", self.processes)
        return executor

    async def prepare(self, body: bytes, kind: str, project_id: int, policy: Policy) -> Prepared:
        executor = self._executor
        if executor is None:
            return await run_in_threadpool(
                prepare,
                body,
                kind,
                project_id,
                policy,
                encode=self.encode,
                aggregates=self.aggregates,
            )
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                executor,
                _prepare_in_worker,
                body,
                kind,
                project_id,
                policy,
                self.encode,
                self.aggregates,
            )
        except BrokenProcessPool as exc:
            log.error("an ingest worker process died; starting new ones")
            await asyncio.to_thread(self._replace, executor)
            raise WorkersUnavailable("an ingest worker process failed; retry") from exc

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is not broken:
                return  # another request already replaced it
            broken.shutdown(wait=False, cancel_futures=True)
            self._executor = self._new_executor()

    def worker_pids(self) -> list[int]:
        executor = self._executor
        if executor is None:
            return []
        return [p.pid for p in getattr(executor, "_processes", {}).values() if p.pid]

    def stop(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=False)


def _prepare_in_worker(
    body: bytes, kind: str, project_id: int, policy: Policy, encode: bool, aggregates: bool
) -> Prepared:
    return prepare(body, kind, project_id, policy, encode=encode, aggregates=aggregates)
