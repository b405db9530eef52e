"""The ingest worker pool falls back to threads when processes cannot be started."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from observatory.ingest import workers
from observatory.ingest.pipeline import PROTOBUF, Policy
from tests.otlp_builder import SpanSpec, protobuf_request


def test_resolve_processes() -> None:
    assert workers.resolve_processes(0) == 0
    assert workers.resolve_processes(3) == 3
    assert 1 <= workers.resolve_processes(-1) <= workers.MAX_AUTO_PROCESSES


def test_without_semaphores_ingest_runs_in_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: workers.PreparePool) -> None:
        raise PermissionError(13, "Permission denied")  # what a missing /dev/shm gives

    monkeypatch.setattr(workers.PreparePool, "_new_executor", refuse)
    pool = workers.PreparePool(2, encode=True)
    pool.start()
    assert pool.processes == 0 and pool.worker_pids() == []
    body = protobuf_request([SpanSpec(1, 1), SpanSpec(1, 2, parent=1)])
    prepared = asyncio.run(pool.prepare(body, PROTOBUF, 1, Policy()))
    assert len(prepared.rows) == 2 and prepared.aggregates is not None
    pool.stop()


def test_cgroup_quota_limits_the_automatic_count(tmp_path: Path) -> None:
    assert workers.cgroup_cpu_quota(tmp_path) is None  # no cgroup files: no limit
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert workers.cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert workers.cgroup_cpu_quota(tmp_path) == 1.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert workers.cgroup_cpu_quota(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    assert workers.cgroup_cpu_quota(v1) == 4.0


def test_auto_count_follows_the_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(workers, "cgroup_cpu_quota", lambda: 1.5)
    assert workers.resolve_processes(-1) == min(2, len(os.sched_getaffinity(0)))
    monkeypatch.setattr(workers, "cgroup_cpu_quota", lambda: 0.25)
    assert workers.resolve_processes(-1) == 1
