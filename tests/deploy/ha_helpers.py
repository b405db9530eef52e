"""Clients, checks and the written report of the high-availability scenarios (test_ha.py).

Ingest goes through tests/ingest_driver.IngestDriver (exporters that retry on 429/502/503/504 as
the OTLP specification asks). Queries come from QueryLoad: dashboard-like GETs through nginx
that are never retried by the client, so every non-200 answer counts as a failed request.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from deploy.local.postgres import PgNode
from deploy.local.procs import wait_for
from deploy.local.stack import Stack

from tests.ingest_driver import RETRYABLE, DriverReport, IngestDriver
from tests.otlp_builder import agent_trace, trace_id

# Paths a dashboard reads; the parameters vary so that answers are not all cached.
QUERY_PATHS = (
    "/api/v1/traces?limit={n}",
    "/api/v1/analytics/summary?range=1h",
    "/api/v1/spans?limit={n}",
)


@dataclass
class QueryLoad:
    """Readers through nginx: each sends GETs one after the other, pausing ``interval``."""

    base_urls: list[str]
    key: str
    verify: ssl.SSLContext
    interval: float = 0.15
    paths: tuple[str, ...] = QUERY_PATHS
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    failures: list[str] = field(default_factory=list)
    slowest_seconds: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _reader(self, base: str) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        n = 0
        # nginx gives an upstream 60 s (proxy_read_timeout); so does the reader.
        with httpx.Client(base_url=base, headers=headers, verify=self.verify, timeout=65) as c:
            while not self._stop.is_set():
                n += 1
                path = self.paths[n % len(self.paths)].format(n=1 + n % 50)
                started = time.monotonic()
                try:
                    status = c.get(path).status_code
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.transport_errors += 1
                        self.failures.append(f"{path}: {exc.__class__.__name__}")
                else:
                    with self._lock:
                        elapsed = time.monotonic() - started
                        self.slowest_seconds = max(self.slowest_seconds, elapsed)
                        self.statuses[status] += 1
                        if status != 200:
                            self.failures.append(f"{path}: {status}")
                time.sleep(self.interval)

    def start(self) -> QueryLoad:
        self._threads = [
            threading.Thread(target=self._reader, args=(base,), daemon=True)
            for base in self.base_urls
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> QueryLoad:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return self

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + self.transport_errors

    @property
    def failed(self) -> int:
        return self.sent - self.statuses[200]

    def summary(self) -> str:
        return (
            f"sent {self.sent}, answered 200: {self.statuses[200]}, failed {self.failed} "
            f"(statuses {dict(sorted(self.statuses.items()))}, transport errors "
            f"{self.transport_errors}); slowest answer {self.slowest_seconds:.1f}s"
        )


def failed_exports(report: DriverReport) -> int:
    """Exports that did not end in an acknowledgement: given up after retries, or refused with
    a status an exporter does not retry."""
    refused = sum(
        n for status, n in report.statuses.items() if status != 200 and status not in RETRYABLE
    )
    return report.gave_up + refused


def expected_spans(driver: IngestDriver) -> set[tuple[str, str]]:
    return {
        (trace_id(n), f"{span.span:016x}")
        for n in driver.report.acked_traces
        for span in agent_trace(n, driver.llm_calls)
    }


@dataclass
class SpanCheck:
    acked: int
    found: int
    missing: int
    duplicated: int

    def summary(self) -> str:
        return (
            f"acknowledged {self.acked}, found {self.found} in the database, missing "
            f"{self.missing}, stored twice {self.duplicated}"
        )


def check_spans(node: PgNode, driver: IngestDriver) -> SpanCheck:
    """Every acknowledged span of the driver, looked up on ``node`` (the current primary)."""
    expected = expected_spans(driver)
    traces = sorted({t for t, _ in expected})
    rows = node.sql(
        "SELECT trace_id, span_id, count(*) FROM spans WHERE trace_id = ANY(%s) GROUP BY 1, 2",
        params=(traces,),
    )
    stored = {(str(t), str(s)): int(n) for t, s, n in rows}
    found = expected & stored.keys()
    return SpanCheck(
        acked=len(expected),
        found=len(found),
        missing=len(expected - stored.keys()),
        duplicated=sum(1 for key in found if stored[key] > 1),
    )


def upstream_counts(
    stack: Stack, since: int, uri_prefix: str, host: str | None = None
) -> Counter[str]:
    """Answers per upstream server (service name) in nginx's access log after line ``since``."""
    names = {f"127.0.0.1:{stack.ports[n]}": n for n in ("api", "api-server", "collector")}
    counts: Counter[str] = Counter()
    for entry in stack.access_log_entries()[since:]:
        if not str(entry["uri"]).startswith(uri_prefix):
            continue
        if host is not None and entry["host"] != host:
            continue
        # "a:1, b:2" when nginx tried several servers; the last one answered.
        last = str(entry["upstream_addr"]).split(",")[-1].strip()
        counts[names.get(last, last or "-")] += 1
    return counts


def wait_in_rotation(stack: Stack, name: str, timeout: float = 60) -> float:
    """Wait until nginx passes requests to server ``name`` again and it answers them; return
    how long that took. After failures nginx leaves a server out for fail_timeout (15 s in
    includes/upstreams.conf) even when it is back earlier: the passive health check."""
    since = len(stack.access_log_entries())
    address = f"127.0.0.1:{stack.ports[name]}"
    started = time.monotonic()

    def answered() -> bool:
        return any(
            str(e["upstream_addr"]).split(",")[-1].strip() == address and e["status"] == 200
            for e in stack.access_log_entries()[since:]
        )

    wait_for(answered, timeout, f"nginx to send requests to {name} again", interval=0.5)
    return time.monotonic() - started


@dataclass
class Report:
    """What a scenario did and measured; printed by the test (docs/PRODUCTION_DEPLOYMENT.md)."""

    title: str
    started: float = field(default_factory=time.monotonic)
    steps: list[str] = field(default_factory=list)
    lines: list[tuple[str, str]] = field(default_factory=list)

    def step(self, text: str) -> None:
        self.steps.append(f"t+{time.monotonic() - self.started:5.1f}s  {text}")

    def add(self, label: str, text: Any) -> None:
        self.lines.append((label, str(text)))

    def ingest(self, report: DriverReport, spans: SpanCheck) -> None:
        retries = report.requests_sent - (report.acknowledged_requests + failed_exports(report))
        self.add(
            "ingest",
            f"export requests sent {report.requests_sent} (of which exporter retries "
            f"{max(0, retries)}), acknowledged {report.acknowledged_requests}, failed after "
            f"retries {failed_exports(report)}; statuses {dict(sorted(report.statuses.items()))}, "
            f"transport errors {report.transport_errors}",
        )
        self.add("spans", spans.summary())

    def render(self) -> str:
        out = [f"\n=== HA: {self.title} ==="]
        out += [f"  {line}" for line in self.steps]
        width = max((len(label) for label, _ in self.lines), default=0)
        out += [f"  {label.ljust(width)}  {text}" for label, text in self.lines]
        return "\n".join(out)
