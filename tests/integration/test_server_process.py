"""A real `observatory serve` process, fed by the real OpenTelemetry SDK exporter."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from decimal import Decimal

import genai_prices
import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode

from tests.conftest import Server
from tests.otlp_builder import agent_trace, json_request, protobuf_request


def send_with_sdk(server: Server, traces: int) -> list[str]:
    """Emit agent traces with the OpenTelemetry SDK and its OTLP/HTTP protobuf exporter."""
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": "support-bot", "deployment.environment.name": "test"}
        )
    )
    exporter = OTLPSpanExporter(
        endpoint=f"{server.base_url}/v1/traces",
        headers={"Authorization": f"Bearer {server.admin_key}"},
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    ids = []
    for n in range(traces):
        with tracer.start_as_current_span("answer question") as root:
            root.set_attribute("session.id", f"session-{n % 3}")
            root.set_attribute("user.id", f"user-{n % 2}")
            ids.append(format(root.get_span_context().trace_id, "032x"))
            for model, provider_name, tokens in (
                ("gpt-4o-mini", "openai", (1200, 300)),
                ("claude-3-5-haiku-20241022", "anthropic", (800, 150)),
            ):
                with tracer.start_as_current_span(f"chat {model}") as span:
                    span.set_attribute("gen_ai.operation.name", "chat")
                    span.set_attribute("gen_ai.provider.name", provider_name)
                    span.set_attribute("gen_ai.request.model", model)
                    span.set_attribute("gen_ai.usage.input_tokens", tokens[0])
                    span.set_attribute("gen_ai.usage.output_tokens", tokens[1])
                    if n == 0 and provider_name == "anthropic":
                        span.set_status(Status(StatusCode.ERROR, "rate limited"))
    assert provider.force_flush(30_000)
    provider.shutdown()
    return ids


def price(model: str, provider: str, input_tokens: int, output_tokens: int) -> Decimal:
    usage = genai_prices.Usage(input_tokens=input_tokens, output_tokens=output_tokens)
    return Decimal(genai_prices.calc_price(usage, model, provider_id=provider).total_price)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_real_exporter_to_real_server(
    backend: str, server_factory: Callable[..., Server], pg_url: str
) -> None:
    server = server_factory(database_url=pg_url if backend == "postgresql" else None)
    ids = send_with_sdk(server, traces=6)
    with server.client() as client:
        listing = client.get("/api/v1/traces", params={"range": "1h", "limit": 50}).json()["data"]
        assert {t["trace_id"] for t in listing} >= set(ids)
        detail = client.get(f"/api/v1/traces/{ids[0]}").json()
        children = detail["spans"][0]["children"]
        by_model = {c["request_model"]: c for c in children}
        mini = by_model["gpt-4o-mini"]
        assert (mini["input_tokens"], mini["output_tokens"]) == (1200, 300)
        assert Decimal(mini["total_cost_usd"]) == price("gpt-4o-mini", "openai", 1200, 300)
        haiku = by_model["claude-3-5-haiku-20241022"]
        assert Decimal(haiku["total_cost_usd"]) == price(
            "claude-3-5-haiku-20241022", "anthropic", 800, 150
        )
        assert haiku["error"] and haiku["status_message"] == "rate limited"
        assert mini["service_name"] == "support-bot" and mini["environment"] == "test"
        summary = client.get(
            "/api/v1/analytics/summary", params={"range": "1h", "group_by": "provider"}
        ).json()
        totals = {g["group"]: g for g in summary["groups"]}
        assert totals["openai"]["requests"] == 6 and totals["anthropic"]["errors"] == 1
        expected = 6 * price("gpt-4o-mini", "openai", 1200, 300)
        assert Decimal(totals["openai"]["cost_usd"]) == expected
        # OTLP/JSON through the same server.
        response = client.post(
            "/v1/traces",
            content=json_request(agent_trace(77, 1)),
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 200 and response.json() == {}
        assert client.get(f"/api/v1/traces/{77:032x}").status_code == 200
    logs = server.logs()
    assert server.admin_key not in logs
    assert '"route": "/v1/traces"' in logs or '"route":"/v1/traces"' in logs


def test_sigterm_drains_every_acknowledged_request(
    server_factory: Callable[..., Server], pg_url: str
) -> None:
    """Clients keep sending while the server is told to stop: whatever got a 200 is stored."""
    server = server_factory(database_url=pg_url)
    acked: list[int] = []
    failed: list[int] = []
    stop = threading.Event()

    def client_loop(worker: int) -> None:
        n = worker * 10_000
        with httpx.Client(
            base_url=server.base_url,
            timeout=10,
            headers={
                "Authorization": f"Bearer {server.admin_key}",
                "Content-Type": "application/x-protobuf",
            },
        ) as client:
            while not stop.is_set():
                n += 1
                try:
                    response = client.post(
                        "/v1/traces", content=protobuf_request(agent_trace(n, 3))
                    )
                except httpx.HTTPError:
                    failed.append(n)
                    return
                (acked if response.status_code == 200 else failed).append(n)

    threads = [threading.Thread(target=client_loop, args=(w,)) for w in range(1, 4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acked) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert server.process.wait(30) in (0, -signal.SIGTERM)
    assert "draining the writer queue" in server.logs()
    stop.set()
    for t in threads:
        t.join(15)
    assert len(acked) >= 30
    restarted = server_factory(database_url=pg_url)
    with restarted.client() as client:
        stored = set()
        cursor = None
        while True:
            params = {"limit": 500, **({"cursor": cursor} if cursor else {})}
            page = client.get("/api/v1/traces", params=params).json()
            stored |= {int(t["trace_id"], 16) for t in page["data"]}
            cursor = page["next_cursor"]
            if not cursor:
                break
    missing = [n for n in acked if n not in stored]
    assert missing == []
