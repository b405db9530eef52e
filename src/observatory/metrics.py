"""Every Prometheus metric the server exports, declared once.

docs/MONITORING.md lists each of them (a test keeps the two in step). With several worker
processes, ``PROMETHEUS_MULTIPROC_DIR`` is set by ``observatory serve`` before this module is
imported, and /metrics aggregates every process.
"""

from __future__ import annotations

import os
import threading
from typing import Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
_GAUGE_MODE: Literal["livemax", "all"] = "livemax" if MULTIPROCESS else "all"

http_requests_total = Counter(
    "http_requests_total",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
http_request_duration_seconds = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request, by method and route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
db_query_duration_seconds = Histogram(
    "db_query_duration_seconds",
    "Time spent in database queries and writes, by operation.",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
cache_hit_rate = Gauge(
    "cache_hit_rate",
    "Share of cache lookups answered from the cache since start, by cache level.",
    ["cache"],
    multiprocess_mode=_GAUGE_MODE,
)
cache_requests_total = Counter(
    "cache_requests_total",
    "Cache lookups by cache level and result (hit, miss, error).",
    ["cache", "result"],
)
spans_accepted_total = Counter(
    "observatory_spans_accepted_total", "Spans acknowledged to clients (committed)."
)
spans_rejected_total = Counter(
    "observatory_spans_rejected_total",
    "Spans refused, by reason (invalid, overload, unavailable, too_large, database, "
    "unsupported_media_type, timeout, rate_limited).",
    ["reason"],
)
spans_duplicate_total = Counter(
    "observatory_spans_duplicate_total", "Spans received again (retries) and not stored twice."
)
writer_queue_depth = Gauge(
    "observatory_writer_queue_depth",
    "Spans waiting for the group-commit writer.",
    multiprocess_mode=_GAUGE_MODE,
)
writer_batch_commit_seconds = Histogram(
    "observatory_writer_batch_commit_seconds",
    "Time to commit one group-commit batch.",
    buckets=LATENCY_BUCKETS,
)
writer_batch_spans = Histogram(
    "observatory_writer_batch_spans",
    "Spans per group-commit batch.",
    buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000),
)
db_up = Gauge(
    "observatory_db_up",
    "1 while the primary database accepts writes, else 0.",
    multiprocess_mode=_GAUGE_MODE,
)
db_pool_connections = Gauge(
    "observatory_db_pool_connections",
    "Query pool connections by state (checked_out, idle).",
    ["state"],
    multiprocess_mode=_GAUGE_MODE,
)
llm_requests_total = Counter(
    "observatory_llm_requests_total",
    "LLM calls ingested, by provider and model.",
    ["provider", "model"],
)
llm_errors_total = Counter(
    "observatory_llm_errors_total",
    "LLM calls that ended in an error, by provider and model.",
    ["provider", "model"],
)
llm_tokens_total = Counter(
    "observatory_llm_tokens_total",
    "Tokens of LLM calls, by provider, model and kind (input, output, "
    "cache_read, cache_write, reasoning).",
    ["provider", "model", "kind"],
)
llm_cost_usd_total = Counter(
    "observatory_llm_cost_usd_total",
    "Cost of LLM calls in USD, by provider and model.",
    ["provider", "model"],
)
llm_request_duration_seconds = Histogram(
    "observatory_llm_request_duration_seconds",
    "Duration of LLM calls (their spans), by provider and model.",
    ["provider", "model"],
    buckets=(0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0),
)
unknown_model_price_total = Counter(
    "observatory_unknown_model_price_total",
    "LLM calls whose model has no known price (no cost stored).",
)
alerts_notifications_total = Counter(
    "observatory_alert_notifications_total",
    "In-app alert notifications sent, by channel and outcome.",
    ["channel", "outcome"],
)
log_records_accepted_total = Counter(
    "observatory_log_records_accepted_total",
    "OTLP log records acknowledged to clients (committed; retries are stored once).",
)
log_records_rejected_total = Counter(
    "observatory_log_records_rejected_total",
    "OTLP log records refused, by reason (invalid, overload, unavailable, too_large, timeout, "
    "unsupported_media_type, database).",
    ["reason"],
)
metric_points_accepted_total = Counter(
    "observatory_metric_points_accepted_total",
    "OTLP gen_ai.* metric data points acknowledged to clients (committed).",
)
metric_points_rejected_total = Counter(
    "observatory_metric_points_rejected_total",
    "OTLP metric data points refused, by reason (invalid, overload, unavailable, too_large, "
    "timeout, unsupported_media_type, database).",
    ["reason"],
)
metric_points_ignored_total = Counter(
    "observatory_metric_points_ignored_total",
    "OTLP metric data points acknowledged but not stored (metrics not named gen_ai.*).",
)
grpc_requests_total = Counter(
    "observatory_grpc_requests_total",
    "OTLP/gRPC export calls answered, by service (traces, logs, metrics) and status code.",
    ["service", "code"],
)

# Provider/model label values are capped so a client cannot explode the series count.
MAX_MODEL_LABELS = 200
_seen_models: set[tuple[str, str]] = set()
_seen_lock = threading.Lock()


def model_labels(provider: str | None, model: str | None) -> tuple[str, str]:
    key = ((provider or "unknown")[:64], (model or "unknown")[:128])
    if key in _seen_models:
        return key
    with _seen_lock:
        if len(_seen_models) >= MAX_MODEL_LABELS:
            return ("other", "other")
        _seen_models.add(key)
    return key


def render() -> tuple[bytes, str]:
    """The exposition text for /metrics."""
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def metric_names() -> list[str]:
    """Names of every metric declared here (for the docs test)."""
    names = []
    for value in globals().values():
        if isinstance(value, Counter | Gauge | Histogram):
            name = value._name
            names.append(f"{name}_total" if isinstance(value, Counter) else name)
    return sorted(names)
