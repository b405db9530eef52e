"""The load driver: N concurrent OTLP/HTTP exporters posting protobuf to ``/v1/traces``.

Each exporter behaves like an OpenTelemetry batch exporter: one request in flight at a time,
``Content-Type: application/x-protobuf``, optional ``Content-Encoding: gzip``, and on 429/503 it
waits for ``Retry-After`` (or an exponential backoff) and sends the same body again. Other
answers are final: 200 acks the request's spans (less any ``partial_success`` rejections),
anything else counts as a failed request. Exporters stop starting requests at the deadline; the
ones in flight finish (bounded by the request timeout).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from bench.stats import latency_summary
from bench.workload import Workload


@dataclass
class DriverConfig:
    targets: list[str]  # base URLs; exporters are spread round-robin over them
    api_key: str | None = None
    exporters: int = 4
    duration_s: float = 60.0
    warmup_s: float = 0.0
    gzip: bool = False
    request_timeout_s: float = 30.0
    max_attempts: int = 20
    path: str = "/v1/traces"


@dataclass
class RequestRecord:
    seq: int
    spans: int
    acked_spans: int  # 0 unless the final answer was 200
    attempts: int
    final_status: int  # 0 for a transport error
    first_sent: float  # monotonic
    acked_at: float | None
    in_warmup: bool


@dataclass
class DriverResult:
    started: float
    finished: float
    warmup_end: float
    records: list[RequestRecord] = field(default_factory=list)
    attempt_latencies: list[float] = field(default_factory=list)  # every HTTP attempt, seconds
    export_latencies: list[float] = field(default_factory=list)  # first send → final answer
    statuses: Counter[int] = field(default_factory=Counter)  # per attempt
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def measured(self) -> list[RequestRecord]:
        return [r for r in self.records if not r.in_warmup]

    def acked_spans(self, measured_only: bool = False) -> int:
        records = self.measured if measured_only else self.records
        return sum(r.acked_spans for r in records)

    def summary(self) -> dict[str, Any]:
        measured = self.measured
        window = max(self.finished - self.warmup_end, 1e-9)
        acked = sum(r.acked_spans for r in measured)
        sent = sum(r.spans for r in measured)
        return {
            "window_s": round(window, 2),
            "requests": len(measured),
            "requests_failed": sum(1 for r in measured if r.final_status != 200),
            "spans_sent": sent,
            "spans_acked": acked,
            "spans_per_s": round(acked / window, 1),
            "retried_attempts": sum(r.attempts - 1 for r in measured),
            "attempt_latency": latency_summary(self.attempt_latencies),
            "export_latency": latency_summary(self.export_latencies),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(self.errors),
            "total_acked_spans_incl_warmup": self.acked_spans(),
        }


def _rejected(body: bytes) -> int:
    """``partial_success.rejected_spans`` of a protobuf export response."""
    if not body:
        return 0
    response = ExportTraceServiceResponse()
    try:
        response.ParseFromString(body)
    except Exception:
        return 0
    return int(response.partial_success.rejected_spans)


def _retry_after(response: httpx.Response, attempt: int) -> float:
    value = response.headers.get("retry-after", "")
    try:
        return min(max(float(value), 0.0), 30.0)
    except ValueError:
        return min(0.25 * 2**attempt, 5.0)


async def run_load(workload: Workload, config: DriverConfig) -> DriverResult:
    """Drive the targets for ``warmup_s + duration_s`` seconds and return what happened."""
    headers = {"Content-Type": "application/x-protobuf"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    if config.gzip:
        headers["Content-Encoding"] = "gzip"
    started = time.monotonic()
    warmup_end = started + config.warmup_s
    deadline = warmup_end + config.duration_s
    result = DriverResult(started=started, finished=started, warmup_end=warmup_end)
    counter = itertools.count()
    limits = httpx.Limits(max_connections=config.exporters, max_keepalive_connections=64)
    timeout = httpx.Timeout(config.request_timeout_s, connect=5.0)

    async def exporter(index: int, client: httpx.AsyncClient, target: str) -> None:
        url = target.rstrip("/") + config.path
        while time.monotonic() < deadline:
            seq = next(counter)
            body = workload.body(seq, time.time_ns())
            if config.gzip:
                body = await asyncio.to_thread(zlib.compress, body, 1, 31)
            spans = workload.spans_in(seq)
            record = RequestRecord(
                seq, spans, 0, 0, 0, time.monotonic(), None, time.monotonic() < warmup_end
            )
            while True:
                record.attempts += 1
                sent = time.monotonic()
                try:
                    response = await client.post(url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    if not record.in_warmup:
                        result.attempt_latencies.append(time.monotonic() - sent)
                    result.errors[exc.__class__.__name__] += 1
                    result.statuses[0] += 1
                    if record.attempts >= config.max_attempts or time.monotonic() > deadline + 30:
                        record.final_status = 0
                        break
                    await asyncio.sleep(min(0.25 * 2**record.attempts, 5.0))
                    continue
                now = time.monotonic()
                if not record.in_warmup:
                    result.attempt_latencies.append(now - sent)
                    result.statuses[response.status_code] += 1
                record.final_status = response.status_code
                if response.status_code in (429, 503) and record.attempts < config.max_attempts:
                    # Retrying past the deadline would stretch the window; give up after it.
                    if now > deadline + config.request_timeout_s:
                        break
                    await asyncio.sleep(_retry_after(response, record.attempts))
                    continue
                if response.status_code == 200:
                    record.acked_spans = spans - _rejected(response.content)
                    record.acked_at = now
                    if not record.in_warmup:
                        result.export_latencies.append(now - record.first_sent)
                break
            result.records.append(record)

    clients = {t: httpx.AsyncClient(limits=limits, timeout=timeout) for t in config.targets}
    try:
        tasks = []
        for i in range(config.exporters):
            target = config.targets[i % len(config.targets)]
            tasks.append(exporter(i, clients[target], target))
        await asyncio.gather(*tasks)
    finally:
        for client in clients.values():
            await client.aclose()
    result.finished = time.monotonic()
    result.records.sort(key=lambda r: r.seq)
    return result
