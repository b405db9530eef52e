"""docs/MONITORING.md lists every metric the server exports, with its type, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

from observatory import metrics

DOC = Path(__file__).resolve().parents[2] / "docs" / "MONITORING.md"
ROW = re.compile(r"^\| `([a-z_:]+)` \| (counter|gauge|histogram) \| ([^|]*) \|")


def declared() -> dict[str, tuple[str, tuple[str, ...]]]:
    out = {}
    for value in vars(metrics).values():
        if isinstance(value, Counter | Gauge | Histogram):
            kind = {Counter: "counter", Gauge: "gauge", Histogram: "histogram"}[type(value)]
            name = value._name + ("_total" if kind == "counter" else "")
            out[name] = (kind, tuple(value._labelnames))
    return out


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    section = DOC.read_text().split("## Metrics reference", 1)[1]
    out = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            labels = tuple(
                x.strip() for x in match.group(3).split(",") if x.strip() not in ("", "—")
            )
            out[match.group(1)] = (match.group(2), labels)
    return out


def test_metrics_reference_matches_the_code() -> None:
    code, doc = declared(), documented()
    assert sorted(set(code) - set(doc)) == [], "metrics missing from docs/MONITORING.md"
    assert sorted(set(doc) - set(code)) == [], "documented metrics the server does not export"
    for name, (kind, labels) in code.items():
        assert doc[name] == (kind, labels), name


def test_the_guides_four_metric_names_exist() -> None:
    for name in (
        "http_requests_total",
        "http_request_duration_seconds",
        "db_query_duration_seconds",
        "cache_hit_rate",
    ):
        assert name in declared()
