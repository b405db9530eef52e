"""Ingest through the worker processes (``OBSERVATORY_INGEST_PROCESSES``) on both databases:
the same answers and stored data as in-process preparation, errors raised in a worker reach the
client, a worker that dies costs one 503 (nothing stored, nothing lost) before the pool is
replaced, and the workers of a server killed outright exit on their own."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from prometheus_client import REGISTRY

from observatory.ingest.workers import PARENT_POLL_SECONDS
from tests.conftest import Server
from tests.integration.conftest import App
from tests.otlp_builder import SpanSpec, agent_trace, json_request, protobuf_request, trace_id


def _workers(app: App) -> list[int]:
    pids: list[int] = app.state.preparer.worker_pids()
    return pids


def test_worker_processes_store_what_threads_store(
    app_factory: Callable[..., App], database_url: str
) -> None:
    pooled = app_factory(database_url, ingest_processes=2)
    assert len(_workers(pooled)) == 2
    assert all(pid != os.getpid() for pid in _workers(pooled))
    before = (
        REGISTRY.get_sample_value(
            "observatory_llm_requests_total", {"provider": "openai", "model": "gpt-4o"}
        )
        or 0.0
    )
    response = pooled.ingest(protobuf_request(agent_trace(1, llm_calls=3)))
    assert response.status_code == 200, response.text
    response = pooled.ingest(
        json_request(agent_trace(2, llm_calls=1)), content_type="application/json"
    )
    assert response.status_code == 200, response.text
    detail = pooled.get(f"/api/v1/traces/{trace_id(1)}").json()
    assert detail["trace"]["span_count"] == 4
    assert detail["trace"]["llm_call_count"] == 3
    assert Decimal(detail["trace"]["total_cost_usd"]) > 0
    assert pooled.get(f"/api/v1/traces/{trace_id(2)}").json()["trace"]["span_count"] == 2
    # The usage metrics are counted in the server process from what the workers sent back.
    after = REGISTRY.get_sample_value(
        "observatory_llm_requests_total", {"provider": "openai", "model": "gpt-4o"}
    )
    assert after == before + 4
    # A retried request stores nothing twice (the PostgreSQL fast path falls back).
    assert pooled.ingest(protobuf_request(agent_trace(1, llm_calls=3))).status_code == 200
    assert pooled.get(f"/api/v1/traces/{trace_id(1)}").json()["trace"]["span_count"] == 4


def test_errors_in_a_worker_reach_the_client(
    app_factory: Callable[..., App], database_url: str
) -> None:
    pooled = app_factory(database_url, ingest_processes=1, max_spans_per_request=2)
    bad = pooled.ingest(b"\x0a\x05garbage-not-protobuf")
    assert bad.status_code == 400
    too_many = pooled.ingest(protobuf_request([SpanSpec(1, n + 1) for n in range(3)]))
    assert too_many.status_code == 413
    assert pooled.ingest(protobuf_request([SpanSpec(1, 1)])).status_code == 200


def test_a_dead_worker_costs_one_retry(app_factory: Callable[..., App], database_url: str) -> None:
    pooled = app_factory(database_url, ingest_processes=1)
    (pid,) = _workers(pooled)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    first = pooled.ingest(protobuf_request(agent_trace(5, llm_calls=1)))
    assert first.status_code == 503, first.text
    assert first.headers["retry-after"]
    assert pooled.get(f"/api/v1/traces/{trace_id(5)}").status_code == 404
    # The pool was replaced: the client's retry is stored.
    retry = pooled.ingest(protobuf_request(agent_trace(5, llm_calls=1)))
    assert retry.status_code == 200, retry.text
    assert pooled.get(f"/api/v1/traces/{trace_id(5)}").json()["trace"]["span_count"] == 2
    (new_pid,) = _workers(pooled)
    assert new_pid != pid


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (tells a process from a later one with its pid); None once
    it has exited (a zombie has exited too)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def _children(pid: int) -> dict[int, int | None]:
    """Child pid -> its start time."""
    pids = [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]
    return {child: _start_time(child) for child in pids}


def test_workers_exit_when_the_server_is_killed(server_factory: Callable[..., Server]) -> None:
    server = server_factory(env={"OBSERVATORY_INGEST_PROCESSES": "2"})
    children = _children(server.process.pid)  # the workers and multiprocessing's resource tracker
    workers = [
        pid
        for pid in children
        if b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    assert len(workers) == 2, children
    # While the server lives, its workers keep working (the watch has looked a few times).
    time.sleep(3 * PARENT_POLL_SECONDS)
    with server.client() as client:
        response = client.post(
            "/v1/traces",
            content=protobuf_request(agent_trace(1, llm_calls=1)),
            headers={"Content-Type": "application/x-protobuf"},
        )
    assert response.status_code == 200, response.text
    assert _children(server.process.pid) == children
    # SIGKILL: the server cannot stop its pool.
    server.kill()

    def left() -> list[int]:
        return [pid for pid, started in children.items() if _start_time(pid) == started]

    try:
        deadline = time.monotonic() + 30
        while left() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left() == [], "processes of the killed server still run"
    finally:
        for pid in left():
            os.kill(pid, signal.SIGKILL)
