"""Fixtures for the SDK tests: a fake LLM provider, a real server, the SDK pointed at it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import genai_prices
import pytest

import observatory_sdk
from tests.conftest import Server, start_server
from tests.sdk.fake_provider import FakeProvider

SERVICE = "sdk-tests"
ENVIRONMENT = "test"


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    fake = FakeProvider()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="session")
def obs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real ``observatory serve`` (SQLite) shared by the SDK tests (it starts slowly)."""
    server = start_server(tmp_path_factory.mktemp("sdk-server"))
    try:
        yield server
    finally:
        server.stop()


def ingest_key(server: Server) -> str:
    with server.client() as client:
        response = client.post("/api/v1/admin/keys", json={"role": "ingest", "name": "sdk"})
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


def init_sdk(server: Server, **overrides: Any) -> None:
    options: dict[str, Any] = {
        "endpoint": server.base_url,
        "api_key": ingest_key(server),
        "service_name": SERVICE,
        "environment": ENVIRONMENT,
        "export_timeout_seconds": 10,
        **overrides,
    }
    observatory_sdk.init(**options)
    if "tracer_provider" not in overrides:
        # These tests need the SDK to own the global tracer provider (service name, resource).
        assert observatory_sdk._setup.STATE.owns_provider, "a global tracer provider was set"


@pytest.fixture
def sdk(obs_server: Server) -> Iterator[Any]:
    """The SDK initialised against ``obs_server``; shut down (and uninstrumented) afterwards."""
    init_sdk(obs_server)
    try:
        yield observatory_sdk
    finally:
        observatory_sdk.shutdown()


@pytest.fixture(autouse=True)
def _no_sdk_left_behind() -> Iterator[None]:
    yield
    observatory_sdk.shutdown()


def fetch_trace(server: Server, trace_id: str, min_spans: int = 1, timeout: float = 20) -> Any:
    """Flush the SDK and read the trace back through the API (bounded wait)."""
    assert observatory_sdk.flush(10), "the SDK could not flush its spans"
    deadline = time.monotonic() + timeout
    last: Any = None
    with server.client() as client:
        while time.monotonic() < deadline:
            response = client.get(f"/api/v1/traces/{trace_id}")
            if response.status_code == 200:
                last = response.json()
                if last["trace"]["span_count"] >= min_spans:
                    return last
            time.sleep(0.1)
    raise AssertionError(f"trace {trace_id} did not arrive with {min_spans} spans: {last}")


def flatten(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    stack = list(reversed(nodes))
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(node.get("children", [])))
    return out


def llm_spans(detail: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in flatten(detail["spans"]) if s["request_model"] or s["response_model"]]


def only_llm_span(detail: dict[str, Any]) -> dict[str, Any]:
    spans = llm_spans(detail)
    assert len(spans) == 1, [s["name"] for s in flatten(detail["spans"])]
    return spans[0]


def expected_cost(
    provider: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int | None = None,
    cache_write_tokens: int | None = None,
) -> Decimal:
    """What genai-prices charges for this usage (the server must store exactly this)."""
    usage = genai_prices.Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read_tokens,
        cache_write_tokens=cache_write_tokens,
    )
    return Decimal(genai_prices.calc_price(usage, model, provider_id=provider).total_price)


def get_json(server: Server, path: str, **params: Any) -> Any:
    with server.client() as client:
        response = client.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()
