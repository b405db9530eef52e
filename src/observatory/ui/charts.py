"""Chart and table data for the overview and models pages, from ``queries.analytics`` rows."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from observatory.store.queries import BUCKET_SECONDS

TOP_N = 8
SERIES_MODELS = 5


def buckets(start_ns: int, end_ns: int, bucket: str) -> list[int]:
    step = BUCKET_SECONDS[bucket]
    first = (start_ns // 1_000_000_000) // step * step
    last = (end_ns // 1_000_000_000) // step * step
    return list(range(first, last + step, step))


def _float(value: Any) -> float:
    return float(Decimal(str(value))) if value not in (None, "") else 0.0


def overview_charts(
    points: Sequence[dict[str, Any]],
    by_model: Sequence[dict[str, Any]],
    xs: list[int],
) -> dict[str, Any]:
    """Series for uPlot: one x axis (unix seconds), values aligned to it (None = no data)."""
    at = {int(p["bucket_start_unix_s"]): p for p in points}

    def series(pick: Any, empty: Any = 0) -> list[Any]:
        out = []
        for x in xs:
            point = at.get(x)
            out.append(pick(point) if point is not None else empty)
        return out

    requests = series(lambda p: p["requests"])
    errors = series(lambda p: p["errors"])
    error_rate = series(lambda p: round(p["error_rate"] * 100, 3) if p["requests"] else None, None)
    charts = [
        {
            "id": "requests",
            "title": "Requests",
            "unit": "int",
            "series": [
                {"label": "Requests", "values": requests, "color": "c1", "fill": True},
                {"label": "Errors", "values": errors, "color": "error"},
            ],
        },
        {
            "id": "error-rate",
            "title": "Error rate",
            "unit": "pct",
            "series": [
                {"label": "Error rate", "values": error_rate, "color": "error", "fill": True}
            ],
        },
        {
            "id": "tokens",
            "title": "Tokens",
            "unit": "compact",
            "series": [
                {"label": "Input", "values": series(lambda p: p["input_tokens"]), "color": "c2"},
                {"label": "Output", "values": series(lambda p: p["output_tokens"]), "color": "c3"},
            ],
        },
        {
            "id": "cost",
            "title": "Cost",
            "unit": "usd",
            "series": [
                {
                    "label": "Cost",
                    "values": series(lambda p: _float(p["cost_usd"])),
                    "color": "c4",
                    "fill": True,
                }
            ],
        },
        {
            "id": "latency",
            "title": "Latency",
            "unit": "ms",
            "series": [
                {
                    "label": label,
                    "values": series(lambda p, q=q: p["latency_ms"][q], None),
                    "color": color,
                }
                for label, q, color in (
                    ("p50", "p50", "c1"),
                    ("p95", "p95", "c5"),
                    ("p99", "p99", "error"),
                )
            ],
        },
        _cost_by_model(by_model, xs),
    ]
    return {"x": xs, "charts": charts}


def _cost_by_model(rows: Sequence[dict[str, Any]], xs: list[int]) -> dict[str, Any]:
    totals: dict[str, float] = {}
    for row in rows:
        totals[row["group"]] = totals.get(row["group"], 0.0) + _float(row["cost_usd"])
    ranked = sorted(totals, key=lambda g: (-totals[g], g))
    top = ranked[:SERIES_MODELS]
    index = {x: i for i, x in enumerate(xs)}
    values: dict[str, list[float]] = {name: [0.0] * len(xs) for name in top}
    other = [0.0] * len(xs)
    for row in rows:
        i = index.get(int(row["bucket_start_unix_s"]))
        if i is None:
            continue
        target = values.get(row["group"], other)
        target[i] += _float(row["cost_usd"])
    colors = ("c1", "c2", "c3", "c4", "c5")
    series = [
        {"label": name, "values": values[name], "color": colors[n]} for n, name in enumerate(top)
    ]
    if len(ranked) > SERIES_MODELS:
        series.append({"label": "other", "values": other, "color": "muted"})
    return {"id": "cost-by-model", "title": "Cost by model", "unit": "usd", "series": series}


def requests_by_model(rows: Sequence[dict[str, Any]], xs: list[int]) -> dict[str, Any]:
    totals: dict[str, int] = {}
    for row in rows:
        totals[row["group"]] = totals.get(row["group"], 0) + int(row["requests"])
    top = sorted(totals, key=lambda g: (-totals[g], g))[:SERIES_MODELS]
    index = {x: i for i, x in enumerate(xs)}
    values: dict[str, list[int]] = {name: [0] * len(xs) for name in top}
    for row in rows:
        i = index.get(int(row["bucket_start_unix_s"]))
        if i is not None and row["group"] in values:
            values[row["group"]][i] += int(row["requests"])
    colors = ("c1", "c2", "c3", "c4", "c5")
    return {
        "x": xs,
        "charts": [
            {
                "id": "requests-by-model",
                "title": "Requests by model",
                "unit": "int",
                "series": [
                    {"label": name, "values": values[name], "color": colors[n]}
                    for n, name in enumerate(top)
                ],
            }
        ],
    }


def top_lists(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The top groups by cost and by volume, each with a share of the leader for the bar."""
    items: list[dict[str, Any]] = [
        {
            "name": row["group"] or "",
            "requests": int(row["requests"]),
            "errors": int(row["errors"]),
            "cost": Decimal(str(row["cost_usd"] or 0)),
            "tokens": int(row["total_tokens"]),
        }
        for row in rows
        if row["group"]
    ]
    by_cost = sorted(items, key=lambda i: (-i["cost"], -i["requests"], i["name"]))[:TOP_N]
    by_volume = sorted(items, key=lambda i: (-i["requests"], -i["cost"], i["name"]))[:TOP_N]
    top_cost = max((i["cost"] for i in by_cost), default=Decimal(0)) or Decimal(1)
    top_volume = max((i["requests"] for i in by_volume), default=0) or 1
    return {
        "cost": [{**i, "share": float(i["cost"] / top_cost) * 100} for i in by_cost],
        "volume": [{**i, "share": i["requests"] / top_volume * 100} for i in by_volume],
    }


def user_row(row: dict[str, Any]) -> dict[str, Any]:
    """A ``ui_queries.list_users`` row as plain JSON (it is cached, possibly in Redis)."""
    return {
        "name": row["user_id"],
        "requests": int(row["llm_calls"]),
        "errors": int(row["errors"]),
        "cost": str(row["total_cost_usd"]),
        "tokens": int(row["total_tokens"]),
    }


def top_users(
    by_cost: Sequence[dict[str, Any]], by_volume: Sequence[dict[str, Any]]
) -> dict[str, list[dict[str, Any]]]:
    """Top users (already ranked by the database), with the leader's share for the bar."""
    cost = [{**row, "cost": Decimal(row["cost"])} for row in by_cost]
    volume = [{**row, "cost": Decimal(row["cost"])} for row in by_volume]
    top_cost = max((i["cost"] for i in cost), default=Decimal(0)) or Decimal(1)
    top_volume = max((i["requests"] for i in volume), default=0) or 1
    return {
        "cost": [{**i, "share": float(i["cost"] / top_cost) * 100} for i in cost],
        "volume": [{**i, "share": i["requests"] / top_volume * 100} for i in volume],
    }
