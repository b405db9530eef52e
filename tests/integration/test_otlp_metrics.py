"""``POST /v1/metrics`` and ``GET /api/v1/analytics/genai-metrics`` on both databases: GenAI
histograms with cumulative and delta temporality (out of order, retried, reset), sums and
gauges, other metrics ignored, errors; and the SDK's OTLP/HTTP metric exporter in both
temporalities against a real server process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from opentelemetry.sdk.metrics import Histogram
from opentelemetry.sdk.metrics.export import AggregationTemporality

from tests.conftest import Server
from tests.integration.conftest import App
from tests.integration.otlp_clients import get_json, telemetry
from tests.otlp_builder import BASE_NS

SECOND = 1_000_000_000
MINUTE = 60 * SECOND
RANGE = {"start": str(BASE_NS // SECOND - 3600), "end": str(BASE_NS // SECOND + 86400)}
CUMULATIVE, DELTA = 2, 1


def attrs(**values: Any) -> list[dict[str, Any]]:
    out = []
    for key, value in values.items():
        kind = "intValue" if isinstance(value, int) else "stringValue"
        out.append({"key": key.replace("__", "."), "value": {kind: str(value)}})
    return out


def usage_point(
    at_ns: int,
    count: int,
    total: float,
    token_type: str = "input",
    start_ns: int = BASE_NS,
    model: str = "gpt-4o",
    buckets: list[int] | None = None,
) -> dict[str, Any]:
    return {
        "startTimeUnixNano": str(start_ns),
        "timeUnixNano": str(at_ns),
        "count": str(count),
        "sum": total,
        "bucketCounts": [str(b) for b in (buckets or [count, 0])],
        "explicitBounds": [1000.0],
        "attributes": attrs(
            gen_ai__token__type=token_type,
            gen_ai__request__model=model,
            gen_ai__system="openai",
            gen_ai__operation__name="chat",
        ),
    }


def metrics_json(metrics: list[dict[str, Any]], service: str = "metrics-svc") -> bytes:
    return orjson.dumps(
        {
            "resourceMetrics": [
                {
                    "resource": {"attributes": attrs(service__name=service)},
                    "scopeMetrics": [{"scope": {"name": "tests"}, "metrics": metrics}],
                }
            ]
        }
    )


def histogram(name: str, points: list[dict[str, Any]], temporality: int, unit: str) -> Any:
    return {
        "name": name,
        "unit": unit,
        "histogram": {"aggregationTemporality": temporality, "dataPoints": points},
    }


def token_usage(points: list[dict[str, Any]], temporality: int = CUMULATIVE) -> Any:
    return histogram("gen_ai.client.token.usage", points, temporality, "{token}")


def post(app: App, body: bytes, content_type: str = "application/json", **kw: Any) -> Any:
    return app.client.post(
        "/v1/metrics", content=body, headers=app.headers(**{"Content-Type": content_type}), **kw
    )


def analytics(app: App, **params: Any) -> dict[str, Any]:
    response = app.get("/api/v1/analytics/genai-metrics", params={**RANGE, **params})
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_cumulative_points_are_differenced(app: App) -> None:
    t = BASE_NS
    # Cumulative input-token histogram of one series: 2 calls (300 tokens) by t+1m, 5 calls
    # (1000) by t+2m; the process restarts (new start time) and counts 1 call (50) by t+3m.
    # The points arrive out of order and one export is retried.
    exports = [
        [usage_point(t + 2 * MINUTE, 5, 1000.0, buckets=[4, 1])],
        [usage_point(t + 1 * MINUTE, 2, 300.0, buckets=[2, 0])],
        [usage_point(t + 3 * MINUTE, 1, 50.0, start_ns=t + 150 * SECOND)],
        [usage_point(t + 2 * MINUTE, 5, 1000.0, buckets=[4, 1])],
    ]
    for points in exports:
        response = post(app, metrics_json([token_usage(points)]))
        assert response.status_code == 200, response.text
        assert response.json() == {}
    total = analytics(app, bucket="none")
    assert total["token_usage"] == [
        {
            "bucket_start_unix_s": None,
            "provider": "openai",
            "model": "gpt-4o",
            "requests": 6,
            "input_tokens": 1050,
            "output_tokens": 0,
            "total_tokens": 1050,
        }
    ]
    per_minute = analytics(app, bucket="1m")["token_usage"]
    base_s = BASE_NS // SECOND
    assert [
        (p["bucket_start_unix_s"] - base_s, p["requests"], p["input_tokens"]) for p in per_minute
    ] == [
        (60, 2, 300),
        (120, 3, 700),
        (180, 1, 50),
    ]


def test_delta_histograms_sums_gauges_and_other_metrics(app: App) -> None:
    t = BASE_NS
    duration = histogram(
        "gen_ai.client.operation.duration",
        [
            {
                "startTimeUnixNano": str(t + i * MINUTE),
                "timeUnixNano": str(t + (i + 1) * MINUTE),
                "count": "2",
                "sum": 3.0,
                "attributes": attrs(
                    gen_ai__request__model="claude-sonnet-4",
                    gen_ai__response__model="claude-sonnet-4-20250514",
                    gen_ai__provider__name="anthropic",
                    gen_ai__operation__name="chat",
                ),
            }
            for i in range(3)
        ],
        DELTA,
        "s",
    )
    output_tokens = token_usage(
        [usage_point(t + MINUTE, 2, 80.0, "output", start_ns=t, model="gpt-4o")], DELTA
    )
    # A made-up monotonic GenAI counter (cumulative) and a gauge; and a non-GenAI metric.
    requests_sum = {
        "name": "gen_ai.client.requests",
        "unit": "{request}",
        "sum": {
            "aggregationTemporality": "AGGREGATION_TEMPORALITY_CUMULATIVE",
            "isMonotonic": True,
            "dataPoints": [
                {"startTimeUnixNano": str(t), "timeUnixNano": str(t + k * MINUTE), "asInt": str(v)}
                for k, v in ((1, 4), (2, 9))
            ],
        },
    }
    gauge = {
        "name": "gen_ai.server.queue.size",
        "gauge": {"dataPoints": [{"timeUnixNano": str(t + MINUTE), "asDouble": 3.5}]},
    }
    http_metric = {
        "name": "http.server.request.duration",
        "histogram": {
            "aggregationTemporality": 1,
            "dataPoints": [{"timeUnixNano": str(t + MINUTE), "count": "7", "sum": 1.0}],
        },
    }
    body = metrics_json([duration, output_tokens, requests_sum, gauge, http_metric])
    response = post(app, body)
    assert response.status_code == 200, response.text

    result = analytics(app, bucket="none")
    assert result["operation_duration"] == [
        {
            "bucket_start_unix_s": None,
            "provider": "anthropic",
            "model": "claude-sonnet-4-20250514",
            "count": 6,
            "total_duration_ms": 9000.0,
            "avg_duration_ms": 1500.0,
        }
    ]
    assert [(u["model"], u["output_tokens"], u["requests"]) for u in result["token_usage"]] == [
        ("gpt-4o", 80, 0)
    ]
    series = {s["metric"]: s for s in result["series"]}
    assert set(series) == {
        "gen_ai.client.operation.duration",
        "gen_ai.client.token.usage",
        "gen_ai.client.requests",
        "gen_ai.server.queue.size",
    }
    assert series["gen_ai.client.requests"]["sum"] == 9.0  # 4, then +5
    assert series["gen_ai.server.queue.size"]["avg"] == 3.5
    # Filters.
    only = analytics(app, bucket="none", provider="anthropic")
    assert {s["metric"] for s in only["series"]} == {"gen_ai.client.operation.duration"}
    assert analytics(app, bucket="none", model="gpt-4o")["operation_duration"] == []
    assert analytics(app, bucket="none", service="nobody")["series"] == []
    metrics_text = app.client.get("/metrics").text
    ignored = [
        line
        for line in metrics_text.splitlines()
        if line.startswith("observatory_metric_points_ignored_total ")
    ]
    assert ignored and float(ignored[0].split()[1]) >= 1


def test_bad_requests(app: App) -> None:
    good = usage_point(BASE_NS + MINUTE, 1, 10.0)
    no_time = usage_point(BASE_NS, 1, 10.0) | {"timeUnixNano": "0"}
    bad_count = usage_point(BASE_NS + 2 * MINUTE, 1, 10.0) | {"count": "many"}
    response = post(app, metrics_json([token_usage([good, no_time, bad_count], DELTA)]))
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedDataPoints"] == "2"
    assert "time_unix_nano" in partial["errorMessage"]
    assert analytics(app, bucket="none")["token_usage"][0]["input_tokens"] == 10
    # The protobuf response type for protobuf requests.
    response = post(app, b"", "application/x-protobuf")
    assert response.status_code == 200
    assert not ExportMetricsServiceResponse.FromString(response.content).HasField("partial_success")
    assert post(app, b"[1, 2").status_code == 400
    assert post(app, b"\x0a\x05\xff", "application/x-protobuf").status_code == 400
    assert post(app, b"{}", "application/xml").status_code == 415
    no_key = app.client.post(
        "/v1/metrics", content=b"{}", headers={"Content-Type": "application/json"}
    )
    assert no_key.status_code == 401
    assert app.get("/api/v1/analytics/genai-metrics", params={"bucket": "2m"}).status_code == 422
    too_fine = {"range": "30d", "bucket": "1m"}
    assert app.get("/api/v1/analytics/genai-metrics", params=too_fine).status_code == 422


def test_sdk_http_metric_exporter_both_temporalities(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory()
    for service, temporality in (
        ("cumulative-app", AggregationTemporality.CUMULATIVE),
        ("delta-app", AggregationTemporality.DELTA),
    ):
        tel = telemetry(
            server, "http", service=service, preferred_temporality={Histogram: temporality}
        )
        try:
            meter = tel.meter_provider.get_meter("app")
            usage = meter.create_histogram("gen_ai.client.token.usage", unit="{token}")
            labels = {
                "gen_ai.token.type": "input",
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o-mini",
            }
            # Three exports: 2 calls, then 1 more, then nothing new.
            for amounts in ([100, 200], [400], []):
                for amount in amounts:
                    usage.record(amount, labels)
                tel.flush()
        finally:
            tel.shutdown()
        result = get_json(
            server, "/api/v1/analytics/genai-metrics", range="1h", bucket="none", service=service
        )
        assert [(u["requests"], u["input_tokens"]) for u in result["token_usage"]] == [(3, 700)]
