"""A load driver for fault tests: exporters that retry like OTLP exporters should.

Each worker sends agent traces with unique ids; on 429/502/503/504 (and connection errors) it
waits the Retry-After the server gave (or a short back-off) and sends the same batch again, as
the OTLP specification asks of clients. It records what was acknowledged, so a test can check
that every acknowledged span is stored exactly once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from tests.otlp_builder import agent_trace, protobuf_request

RETRYABLE = {429, 502, 503, 504}


@dataclass
class DriverReport:
    requests_sent: int = 0
    acknowledged_requests: int = 0
    acknowledged_spans: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    gave_up: int = 0
    missing_retry_after: int = 0
    acked_traces: set[int] = field(default_factory=set)
    first_ack_after: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"requests sent {self.requests_sent}, acknowledged {self.acknowledged_requests} "
            f"({self.acknowledged_spans} spans), statuses {dict(sorted(self.statuses.items()))}, "
            f"transport errors {self.transport_errors}, gave up {self.gave_up}"
        )


class IngestDriver:
    def __init__(
        self,
        base_urls: list[str],
        key: str,
        workers: int = 3,
        llm_calls: int = 3,
        traces_per_request: int = 5,
        timeout: float = 15.0,
        give_up_after: float = 120.0,
        first_trace: int = 1,
        verify: bool | str = True,
    ) -> None:
        self.base_urls = base_urls
        self.key = key
        self.workers = workers
        self.llm_calls = llm_calls
        self.traces_per_request = traces_per_request
        self.timeout = timeout
        self.give_up_after = give_up_after
        self.report = DriverReport()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._next = first_trace
        self._threads: list[threading.Thread] = []
        self._marks: dict[str, float] = {}
        self.verify = verify

    def _ids(self) -> list[int]:
        with self._lock:
            start = self._next
            self._next += self.traces_per_request
        return list(range(start, start + self.traces_per_request))

    def mark(self, name: str) -> None:
        """Remember a moment; the report says how long after it the next acknowledgement came."""
        with self._lock:
            self._marks[name] = time.monotonic()

    def _acked(self, ids: list[int]) -> None:
        now = time.monotonic()
        with self._lock:
            self.report.acknowledged_requests += 1
            self.report.acknowledged_spans += len(ids) * (self.llm_calls + 1)
            self.report.acked_traces.update(ids)
            for name, at in list(self._marks.items()):
                self.report.first_ack_after[name] = now - at
                del self._marks[name]

    def _worker(self, index: int) -> None:
        base = self.base_urls[index % len(self.base_urls)]
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/x-protobuf"}
        with httpx.Client(timeout=self.timeout, verify=self.verify) as client:
            while not self._stop.is_set():
                ids = self._ids()
                specs = [
                    s for n in ids for s in agent_trace(n, self.llm_calls, start_ns=time.time_ns())
                ]
                body = protobuf_request(specs)
                started = time.monotonic()
                while True:
                    with self._lock:
                        self.report.requests_sent += 1
                    try:
                        response = client.post(f"{base}/v1/traces", content=body, headers=headers)
                    except httpx.HTTPError:
                        with self._lock:
                            self.report.transport_errors += 1
                        wait = 0.5
                    else:
                        with self._lock:
                            self.report.statuses[response.status_code] += 1
                        if response.status_code == 200:
                            self._acked(ids)
                            break
                        if response.status_code not in RETRYABLE:
                            break  # a client error: not retried, as the specification says
                        retry_after = response.headers.get("retry-after")
                        if retry_after is None:
                            with self._lock:
                                self.report.missing_retry_after += 1
                        wait = min(float(retry_after or 1), 5.0)
                    if time.monotonic() - started > self.give_up_after:
                        with self._lock:
                            self.report.gave_up += 1
                        break
                    time.sleep(wait)

    def start(self) -> IngestDriver:
        self._threads = [
            threading.Thread(target=self._worker, args=(i,), daemon=True)
            for i in range(self.workers)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 150.0) -> DriverReport:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        return self.report

    def wait_for_acks(self, count: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.report.acknowledged_requests < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {self.report.acknowledged_requests} acks: {self.report.summary()}"
                )
            time.sleep(0.05)
