"""The ingest worker pool falls back to threads when processes cannot be started."""

from __future__ import annotations

import asyncio

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
