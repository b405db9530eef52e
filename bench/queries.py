"""Latency of the dashboard endpoints over a loaded database, through the real HTTP API.

Three request kinds, each repeated with varied, realistic parameters:

* ``analytics``: the dashboard's pair, ``/api/v1/analytics/summary`` and
  ``/api/v1/analytics/timeseries`` over 30 days (grouping, bucket size and a filter vary);
  reported per endpoint and for the pair (both requests of one dashboard load).
* ``trace_list``: ``/api/v1/traces`` first page (50 rows) with two filters.
* ``trace_detail``: ``/api/v1/traces/{id}`` for traces of 5 to 50 spans sampled from the database.

Requests are sequential (one client), one kind after the other, so a figure is the latency of one
request on an otherwise idle server.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from bench.stats import latency_summary
from bench.workload import ENVIRONMENTS, MODELS, SERVICES


@dataclass(frozen=True)
class QueryPlan:
    requests: int = 200  # per request kind
    warmup: int = 5  # per request kind, not counted
    days: int = 30
    seed: int = 11
    timeout_s: float = 60.0
    # 0: fresh parameters for every request; N: cycle through N parameter sets (a dashboard
    # that many people reload: what the result cache is for).
    param_pool: int = 0


def sample_trace_ids(database_url: str, count: int, seed: int) -> list[str]:
    """Trace ids of traces with 5 to 50 spans, spread over the whole time range."""
    from sqlalchemy import text

    from observatory.store.engine import Database

    db = Database(database_url, None, pool_size=1)
    try:
        with db.engine.connect() as conn:
            if db.is_postgres:
                rows = conn.execute(
                    text(
                        "SELECT trace_id FROM traces TABLESAMPLE SYSTEM (5) REPEATABLE (:seed) "
                        "WHERE span_count BETWEEN 5 AND 50 LIMIT :n"
                    ),
                    {"seed": seed, "n": count * 4},
                ).all()
            else:
                rows = conn.execute(
                    text(
                        "SELECT trace_id FROM traces WHERE span_count BETWEEN 5 AND 50 "
                        "AND rowid % 97 = :r LIMIT :n"
                    ),
                    {"r": seed % 97, "n": count * 4},
                ).all()
            if len(rows) < count:  # the sample was too small: take the first ones instead
                rows = conn.execute(
                    text("SELECT trace_id FROM traces WHERE span_count BETWEEN 5 AND 50 LIMIT :n"),
                    {"n": count * 4},
                ).all()
    finally:
        db.dispose()
    ids = [r[0] for r in rows]
    random.Random(seed).shuffle(ids)
    return ids[:count]


def _analytics_params(rng: random.Random, days: int) -> tuple[dict[str, str], dict[str, str]]:
    common: dict[str, str] = {"range": f"{days}d"}
    choice = rng.random()
    if choice < 0.3:
        common["service"] = rng.choice(SERVICES)
    elif choice < 0.45:
        common["environment"] = rng.choice(ENVIRONMENTS)[0]
    elif choice < 0.6:
        common["model"] = rng.choice(MODELS)[2]
    summary = dict(common)
    group = rng.choice([None, None, "model", "provider", "service"])
    if group:
        summary["group_by"] = group
    series = dict(common)
    series["bucket"] = rng.choice(["1h", "1h", "6h", "1d"])
    series_group = rng.choice([None, None, "model", "provider"])
    if series_group:
        series["group_by"] = series_group
    return summary, series


def _trace_list_params(rng: random.Random, days: int) -> dict[str, str]:
    params = {"range": rng.choice([f"{days}d", f"{days}d", "7d", "24h"]), "limit": "50"}
    pairs: list[Callable[[], dict[str, str]]] = [
        lambda: {"service": rng.choice(SERVICES), "environment": rng.choice(ENVIRONMENTS)[0]},
        lambda: {"service": rng.choice(SERVICES), "model": rng.choice(MODELS)[1]},
        lambda: {"environment": "production", "status": "error"},
        lambda: {"model": rng.choice(MODELS)[1], "status": rng.choice(["ok", "error"])},
        lambda: {"service": rng.choice(SERVICES), "user_id": f"user-{rng.randrange(500):04d}"},
        lambda: {"provider": rng.choice(MODELS)[0], "min_duration_ms": "1500"},
    ]
    params.update(rng.choice(pairs)())
    return params


def run_queries(
    base_url: str, api_key: str, trace_ids: list[str], plan: QueryPlan
) -> dict[str, Any]:
    """Run every request kind ``plan.requests`` times; return latency summaries."""
    rng = random.Random(plan.seed)
    headers = {"Authorization": f"Bearer {api_key}"}
    latencies: dict[str, list[float]] = {
        "analytics_summary": [],
        "analytics_timeseries": [],
        "analytics_pair": [],
        "trace_list": [],
        "trace_detail": [],
    }
    failures: dict[str, int] = {k: 0 for k in latencies}
    rows_seen: dict[str, int] = {k: 0 for k in latencies}

    with httpx.Client(base_url=base_url, headers=headers, timeout=plan.timeout_s) as client:

        def get(kind: str, path: str, params: dict[str, str] | None, record: bool) -> float:
            started = time.perf_counter()
            response = client.get(path, params=params)
            elapsed = time.perf_counter() - started
            if not record:
                return elapsed
            if response.status_code != 200:
                failures[kind] += 1
                return elapsed
            latencies[kind].append(elapsed)
            body = response.json()
            rows_seen[kind] += len(
                body.get("data")
                or body.get("points")
                or body.get("groups")
                or body.get("spans")
                or []
            ) or (1 if body.get("total") else 0)
            return elapsed

        total = plan.warmup + plan.requests
        params = [
            (*_analytics_params(rng, plan.days), _trace_list_params(rng, plan.days))
            for _ in range(plan.param_pool or total)
        ]
        # One kind at a time, so a slow kind does not age another kind's cache entries.
        for i in range(total):
            record = i >= plan.warmup
            summary, series, _ = params[i % len(params)]
            a = get("analytics_summary", "/api/v1/analytics/summary", summary, record)
            b = get("analytics_timeseries", "/api/v1/analytics/timeseries", series, record)
            if record:
                latencies["analytics_pair"].append(a + b)
        for i in range(total):
            get("trace_list", "/api/v1/traces", params[i % len(params)][2], i >= plan.warmup)
        for i in range(total if trace_ids else 0):
            trace_id = trace_ids[i % len(trace_ids)]
            get("trace_detail", f"/api/v1/traces/{trace_id}", None, i >= plan.warmup)
    return {
        kind: {
            **latency_summary(values),
            "failed": failures[kind],
            "rows_returned": rows_seen[kind],
        }
        for kind, values in latencies.items()
    }
