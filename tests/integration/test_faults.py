"""Things that go wrong in production, on real processes: the database stops, the server is
killed, Redis goes away, the database refuses a value. Every test prints a short report."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from decimal import Decimal

import psycopg
import pytest

from tests.conftest import Server
from tests.ingest_driver import IngestDriver
from tests.otlp_builder import SpanSpec, agent_trace, llm_attributes, protobuf_request, trace_id
from tests.processes import PgCluster, RedisServer, new_pg_cluster, new_redis

OUTAGE_SECONDS = 30


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    pg = new_pg_cluster()
    yield pg
    pg.destroy()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = new_redis()
    yield server
    server.stop()


def stored_spans(url: str) -> dict[tuple[str, str], int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT trace_id, span_id, count(*) FROM spans GROUP BY 1, 2"
        ).fetchall()
    return {(t, s): n for t, s, n in rows}


def assert_all_acked_stored_once(url: str, driver: IngestDriver) -> dict[tuple[str, str], int]:
    stored = stored_spans(url)
    assert all(n == 1 for n in stored.values()), "a span is stored twice"
    for n in driver.report.acked_traces:
        for span in agent_trace(n, driver.llm_calls):
            assert (trace_id(n), f"{span.span:016x}") in stored, f"acknowledged trace {n} lost"
    return stored


def test_postgres_outage_answers_503_and_recovers(
    cluster: PgCluster, server_factory: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    url = cluster.create_database("observatory")
    server = server_factory(database_url=url, env={"OBSERVATORY_RETRY_AFTER_SECONDS": "1"})
    driver = IngestDriver([server.base_url], server.admin_key, workers=3).start()
    driver.wait_for_acks(20)
    cluster.stop("immediate")
    stopped_at = time.monotonic()
    during_outage = []
    while time.monotonic() - stopped_at < OUTAGE_SECONDS:
        with server.client() as client:
            live = client.get("/health/live")
            ready = client.get("/health/ready")
        during_outage.append((live.status_code, ready.status_code))
        time.sleep(2)
    acked_before_restart = driver.report.acknowledged_requests
    driver.mark("restart")
    cluster.start()
    driver.wait_for_acks(acked_before_restart + 20, timeout=90)
    report = driver.stop()
    stored = assert_all_acked_stored_once(url, driver)
    assert report.statuses[500] == 0 and report.transport_errors == 0
    assert report.statuses[503] > 0 and report.missing_retry_after == 0
    assert report.gave_up == 0
    assert all(live == 200 for live, _ in during_outage)
    assert any(ready == 503 for _, ready in during_outage)
    with capsys.disabled():
        print(
            f"\n[postgres outage {OUTAGE_SECONDS}s] {report.summary()}; "
            f"spans stored {len(stored)}; "
            f"recovered {report.first_ack_after.get('restart', float('nan')):.1f}s after restart"
        )


def test_sigkill_loses_no_acknowledged_span(
    cluster: PgCluster, server_factory: Callable[..., Server], capsys: pytest.CaptureFixture[str]
) -> None:
    url = cluster.create_database("observatory")
    server = server_factory(database_url=url)
    driver = IngestDriver([server.base_url], server.admin_key, workers=3, give_up_after=5).start()
    driver.wait_for_acks(30)
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(10)
    report = driver.stop()
    stored = assert_all_acked_stored_once(url, driver)
    with capsys.disabled():
        print(
            f"\n[sigkill] {report.summary()}; spans stored {len(stored)} "
            f"(≥ {report.acknowledged_spans} acknowledged)"
        )
    restarted = server_factory(database_url=url, data_dir=server.data_dir)
    with restarted.client() as client:
        assert client.get(f"/api/v1/traces/{trace_id(min(report.acked_traces))}").status_code == 200


def test_redis_outage_degrades_then_recovers(
    private_redis: RedisServer, server_factory: Callable[..., Server], pg_url: str
) -> None:
    server = server_factory(database_url=pg_url, env={"OBSERVATORY_REDIS_URL": private_redis.url})
    with server.client() as client:
        headers = {"Content-Type": "application/x-protobuf"}
        assert (
            client.post(
                "/v1/traces", content=protobuf_request(agent_trace(1, 2)), headers=headers
            ).status_code
            == 200
        )
        assert client.get("/api/v1/analytics/summary", params={"range": "30d"}).status_code == 200
        assert any(k.startswith(b"obs:") for k in private_redis.client().keys("*"))
        private_redis.stop()
        for n in range(2, 6):
            assert (
                client.post(
                    "/v1/traces", content=protobuf_request(agent_trace(n, 2)), headers=headers
                ).status_code
                == 200
            )
            summary = client.get("/api/v1/analytics/summary", params={"range": "30d", "limit": n})
            assert summary.status_code == 200
        assert client.get("/health/ready").json()["checks"]["cache"] == "degraded"
        assert client.get("/api/v1/traces").status_code == 200  # rate limits fall back locally
        private_redis.start()
        private_redis.client().flushall()
        deadline = time.monotonic() + 20
        while not private_redis.client().keys("obs:*"):
            assert time.monotonic() < deadline, "the server did not use Redis again"
            client.get("/api/v1/analytics/summary", params={"range": "7d"})
            time.sleep(0.5)
        assert client.get("/health/ready").json()["checks"]["cache"] == "ok"


def test_a_value_the_database_rejects_fails_only_its_spans(app_factory, database_url: str) -> None:  # type: ignore[no-untyped-def]
    app = app_factory(database_url)
    price = {"model": "pricey", "input_usd_per_mtok": "1000000", "output_usd_per_mtok": "1"}
    assert (
        app.client.put("/api/v1/admin/prices", json=price, headers=app.headers()).status_code == 200
    )
    # 10^15 tokens at a million dollars per million tokens overflows NUMERIC(20,10).
    poison = SpanSpec(
        1, 9, None, "overflow", attributes=llm_attributes("pricey", input_tokens=10**15)
    )
    good = agent_trace(1, 2)
    response = app.ingest(protobuf_request([*good, poison]), content_type="application/x-protobuf")
    assert response.status_code == 200
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    parsed = ExportTraceServiceResponse.FromString(response.content)
    assert parsed.partial_success.rejected_spans == 1
    assert "rejected by the database" in parsed.partial_success.error_message
    trace = app.get(f"/api/v1/traces/{trace_id(1)}").json()["trace"]
    assert trace["span_count"] == 3
    assert Decimal(trace["total_cost_usd"]) > 0
    assert app.ingest(protobuf_request(agent_trace(2, 1))).status_code == 200
