"""OTLP logs and metrics: ``POST /v1/logs``, ``POST /v1/metrics`` (ingest, both roles) and the
read endpoints ``GET /api/v1/logs`` and ``GET /api/v1/analytics/genai-metrics`` (api role).

Ingest follows the same rules as ``POST /v1/traces`` and shares its HTTP front
(:func:`api.otlp.receive_export`): content type, gzip, size limit, API key with the ingest role,
400 for undecodable bodies, 503 + Retry-After when the server is overloaded or the database is
down, ``partial_success`` for rejected records, and an answer only after the commit. Log
records and metric points are written in their own transaction on a small thread pool
(:class:`SignalWriter`); both writes are idempotent, so a retried export stores nothing twice.
The gRPC receiver (api/otlp_grpc.py) calls :func:`ingest_logs` and :func:`ingest_metrics` too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from prometheus_client import Counter
from sqlalchemy.engine import Connection
from starlette.concurrency import run_in_threadpool

from observatory import metrics
from observatory.api.deps import AppState, Require, state
from observatory.api.otlp import Export, error_response, receive_export, retry_after_header
from observatory.api.params import check_trace_id, parse_range, parse_time
from observatory.ingest import otlp
from observatory.ingest.otlp_logs import decode_logs
from observatory.ingest.otlp_metrics import decode_metrics
from observatory.ingest.otlp_signals import DecodedRecords
from observatory.ingest.pipeline import PROTOBUF
from observatory.ingest.writer import Overloaded, Unavailable, is_connectivity_error
from observatory.model import ApiKey, Role
from observatory.store import genai_metrics
from observatory.store import logs as log_store
from observatory.store.engine import Database
from observatory.store.queries import BUCKET_SECONDS

log = logging.getLogger(__name__)
router = APIRouter()
query_router = APIRouter(prefix="/api/v1")
reader = Require(Role.READ)
DEFAULT_RANGE_NS = 24 * 3600 * 1_000_000_000
MAX_BUCKETS = 5000
# How long writes are refused (503) after the database was found unreachable.
DB_RETRY_SECONDS = 1.0


class SignalWriter:
    """Writes log records and metric points, each request in its own transaction, on a small
    thread pool. Bounded like the span writer: beyond ``max_pending`` records waiting, or for a
    moment after the database was unreachable, requests fail fast (503 / UNAVAILABLE)."""

    def __init__(self, db: Database, max_pending: int, workers: int = 4) -> None:
        self._db = db
        self._max_pending = max_pending
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="observatory-signals")
        self._pending = 0
        self._retry_at = 0.0
        self.last_error: str | None = None

    @property
    def pending(self) -> int:
        return self._pending

    async def write(self, count: int, timeout: float, work: Callable[[Connection], int]) -> int:
        """Run ``work`` in a transaction and wait for its commit; returns what it returned."""
        if time.monotonic() < self._retry_at:
            raise Unavailable(self.last_error or "the database is unavailable")
        if self._pending > 0 and self._pending + count > self._max_pending:
            raise Overloaded("the ingest queue is full")
        self._pending += count
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._run, work)

        def done(_: object) -> None:
            self._pending -= count

        future.add_done_callback(done)
        # The write may still commit after a timeout; a retry of the same data is idempotent.
        return await asyncio.wait_for(asyncio.shield(future), timeout)

    def _run(self, work: Callable[[Connection], int]) -> int:
        try:
            with self._db.write() as conn:
                return work(conn)
        except Exception as exc:
            cause = exc.__cause__ if exc.__cause__ is not None else exc
            if is_connectivity_error(exc) or is_connectivity_error(cause):
                self.last_error = f"the database is unavailable ({exc.__class__.__name__})"
                self._retry_at = time.monotonic() + DB_RETRY_SECONDS
                raise Unavailable(self.last_error) from exc
            raise


def signal_writer(st: AppState, app_state: Any) -> SignalWriter:
    """The application's signal writer (created on first use)."""
    writer = getattr(app_state, "signal_writer", None)
    if not isinstance(writer, SignalWriter):
        writer = SignalWriter(st.db, st.settings.writer_queue_max_spans)
        app_state.signal_writer = writer
    return writer


@dataclass
class SignalResult:
    """The outcome of one export request: records stored (or already stored) and rejected."""

    accepted: int
    rejected: int
    message: str
    ignored: int = 0


def _bump(st: AppState, project_id: int) -> None:
    try:
        st.cache.bump(project_id)
    except Exception:
        log.debug("cache invalidation failed", exc_info=True)


@dataclass(frozen=True)
class _Signal:
    """What differs between the log and the metric receivers."""

    items: str  # what the records are called in log messages
    decode: Callable[[bytes, str, int], DecodedRecords]
    insert: Callable[[Connection, list[dict[str, Any]]], int]
    accepted_total: Counter
    rejected_total: Counter
    ignored_total: Counter | None
    # The export response message, its partial_success count field, and that field in JSON.
    response: Callable[[], Any]
    rejected_field: str
    rejected_json: str


_LOGS = _Signal(
    items="log records",
    decode=decode_logs,
    insert=log_store.insert_logs,
    accepted_total=metrics.log_records_accepted_total,
    rejected_total=metrics.log_records_rejected_total,
    ignored_total=None,
    response=logs_service_pb2.ExportLogsServiceResponse,
    rejected_field="rejected_log_records",
    rejected_json="rejectedLogRecords",
)
_METRICS = _Signal(
    items="metric points",
    decode=decode_metrics,
    insert=genai_metrics.insert_points,
    accepted_total=metrics.metric_points_accepted_total,
    rejected_total=metrics.metric_points_rejected_total,
    ignored_total=metrics.metric_points_ignored_total,
    response=metrics_service_pb2.ExportMetricsServiceResponse,
    rejected_field="rejected_data_points",
    rejected_json="rejectedDataPoints",
)


async def _ingest(
    signal: _Signal,
    st: AppState,
    writer: SignalWriter,
    project_id: int,
    body: bytes,
    kind: str,
) -> SignalResult:
    rejected_total = signal.rejected_total
    try:
        decoded = await run_in_threadpool(signal.decode, body, kind, project_id)
    except otlp.OtlpDecodeError:
        rejected_total.labels("invalid").inc()
        raise
    if decoded.rejected:
        rejected_total.labels("invalid").inc(decoded.rejected)
    if decoded.ignored and signal.ignored_total is not None:
        signal.ignored_total.inc(decoded.ignored)
    rows = decoded.rows
    rejected, message = decoded.rejected, decoded.error_message
    if rows:
        try:
            await writer.write(
                len(rows),
                st.settings.request_timeout_seconds,
                lambda conn: signal.insert(conn, rows),
            )
        except Overloaded:
            rejected_total.labels("overload").inc(len(rows))
            raise
        except (Unavailable, TimeoutError):
            rejected_total.labels("unavailable").inc(len(rows))
            raise
        except Exception as exc:
            log.warning("%s refused by the database", signal.items, exc_info=True)
            rejected_total.labels("database").inc(len(rows))
            first = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
            return SignalResult(0, rejected + len(rows), f"rejected by the database: {first}")
        signal.accepted_total.inc(len(rows))
        await run_in_threadpool(_bump, st, project_id)
    return SignalResult(len(rows), rejected, message, decoded.ignored)


async def ingest_logs(
    st: AppState, writer: SignalWriter, project_id: int, body: bytes, kind: str
) -> SignalResult:
    """Decode and store one ``ExportLogsServiceRequest``. Raises ``OtlpDecodeError``,
    ``Overloaded``, ``Unavailable`` or ``TimeoutError``."""
    return await _ingest(_LOGS, st, writer, project_id, body, kind)


async def ingest_metrics(
    st: AppState, writer: SignalWriter, project_id: int, body: bytes, kind: str
) -> SignalResult:
    """Decode and store the GenAI points of one ``ExportMetricsServiceRequest``."""
    return await _ingest(_METRICS, st, writer, project_id, body, kind)


def _encode_response(signal: _Signal, result: SignalResult, protobuf: bool) -> tuple[bytes, str]:
    if protobuf:
        response = signal.response()
        if result.rejected:
            setattr(response.partial_success, signal.rejected_field, result.rejected)
            response.partial_success.error_message = result.message
        return response.SerializeToString(), "application/x-protobuf"
    payload: dict[str, Any] = {}
    if result.rejected:
        payload["partialSuccess"] = {
            signal.rejected_json: str(result.rejected),
            "errorMessage": result.message,
        }
    return orjson.dumps(payload), "application/json"


def encode_logs_response(result: SignalResult, protobuf: bool) -> tuple[bytes, str]:
    """An ``ExportLogsServiceResponse``; ``partial_success`` only when records were rejected."""
    return _encode_response(_LOGS, result, protobuf)


def encode_metrics_response(result: SignalResult, protobuf: bool) -> tuple[bytes, str]:
    """An ``ExportMetricsServiceResponse``; ``partial_success`` only when points were rejected."""
    return _encode_response(_METRICS, result, protobuf)


# --- HTTP ingest --------------------------------------------------------------------------------


async def _export(request: Request, signal: _Signal) -> Response:
    async def store(export: Export) -> Response:
        st, kind = export.st, export.kind
        writer = signal_writer(st, request.app.state)
        retry_after = retry_after_header(st.settings)
        try:
            result = await _ingest(signal, st, writer, export.key.project_id, export.body, kind)
        except otlp.OtlpDecodeError as exc:
            return error_response(400, str(exc), kind)
        except Overloaded as exc:
            return error_response(503, str(exc), kind, retry_after)
        except (TimeoutError, Unavailable) as exc:
            message = str(exc) or "the write did not complete in time"
            return error_response(503, message, kind, retry_after)
        body_out, content_type = _encode_response(signal, result, kind == PROTOBUF)
        return Response(body_out, status_code=200, media_type=content_type)

    return await receive_export(request, signal.rejected_total, store)


_INGEST_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Accepted (possibly with partial_success)"},
    400: {"description": "Undecodable body"},
    401: {"description": "Missing or invalid API key"},
    403: {"description": "Key may not ingest"},
    408: {"description": "The body was not received in time"},
    413: {"description": "Body too large"},
    415: {"description": "Unsupported content type or encoding"},
    429: {"description": "Rate limited; retry after Retry-After"},
    503: {"description": "Overloaded or database unavailable; retry after Retry-After"},
}


@router.post(
    "/v1/logs",
    tags=["ingest"],
    summary="OTLP/HTTP log export (protobuf or JSON)",
    responses=_INGEST_RESPONSES,
)
async def export_logs(request: Request) -> Response:
    return await _export(request, _LOGS)


@router.post(
    "/v1/metrics",
    tags=["ingest"],
    summary="OTLP/HTTP metric export (protobuf or JSON); gen_ai.* metrics are stored",
    responses=_INGEST_RESPONSES,
)
async def export_metrics(request: Request) -> Response:
    return await _export(request, _METRICS)


# --- reads --------------------------------------------------------------------------------------


def _time_range(
    start: str | None, end: str | None, range_: str | None, default_ns: int | None
) -> tuple[int | None, int | None]:
    start_ns: int | None = None
    end_ns: int | None = None
    if range_:
        start_ns = time.time_ns() - parse_range(range_)
    if start:
        start_ns = parse_time(start, "start")
    if end:
        end_ns = parse_time(end, "end")
    if start_ns is None and default_ns is not None:
        start_ns = (end_ns or time.time_ns()) - default_ns
    if start_ns is not None and end_ns is not None and end_ns <= start_ns:
        raise HTTPException(422, "end must be after start")
    return start_ns, end_ns


def _clean(value: str | None) -> str | None:
    """A text filter, or None; NUL cannot be compared with PostgreSQL text."""
    if not value:
        return None
    return value.replace("\x00", "") or None


def _severity(value: str | None) -> int | None:
    if value is None or value.strip() == "":
        return None
    text = value.strip().lower()
    if text.isdigit():
        number = int(text)
        if not 1 <= number <= 24:
            raise HTTPException(422, "severity: a number must be between 1 and 24")
        return number
    floor = log_store.SEVERITY_FLOOR.get({"warning": "warn", "critical": "fatal"}.get(text, text))
    if floor is None:
        raise HTTPException(
            422, "severity: expected trace, debug, info, warn, error, fatal or a number 1-24"
        )
    return floor


_TIME_DOC = "(ISO 8601 or unix seconds)"


@query_router.get("/logs", tags=["logs"], summary="Search log records, newest first")
async def search_logs(
    request: Request,
    key: Annotated[ApiKey, Depends(reader)],
    start: Annotated[str | None, Query(description=f"Start {_TIME_DOC}", max_length=64)] = None,
    end: Annotated[str | None, Query(description=f"End {_TIME_DOC}", max_length=64)] = None,
    range: Annotated[
        str | None, Query(description="Relative range ending now: 15m, 24h, 7d", max_length=8)
    ] = None,
    trace_id: Annotated[str | None, Query(max_length=64)] = None,
    span_id: Annotated[str | None, Query(pattern="^[0-9a-fA-F]{16}$")] = None,
    severity: Annotated[
        str | None,
        Query(description="Minimum severity: trace … fatal, or a number 1-24", max_length=16),
    ] = None,
    q: Annotated[
        str | None, Query(description="Text in the body or event name", max_length=512)
    ] = None,
    service: Annotated[str | None, Query(max_length=512)] = None,
    event_name: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> dict[str, Any]:
    start_ns, end_ns = _time_range(start, end, range, None)
    filters = log_store.LogFilters(
        start_time=start_ns,
        end_time=end_ns,
        trace_id=check_trace_id(trace_id) if trace_id else None,
        span_id=span_id.lower() if span_id else None,
        min_severity=_severity(severity),
        text=_clean(q),
        service=_clean(service),
        event_name=_clean(event_name),
    )
    st = state(request)

    def run() -> log_store.LogPage:
        with st.db.read() as conn:
            return log_store.search_logs(conn, key.project_id, filters, limit=limit, cursor=cursor)

    try:
        page = await run_in_threadpool(run)
    except log_store.BadLogCursor as exc:
        raise HTTPException(422, str(exc)) from exc
    return {"data": page.items, "next_cursor": page.next_cursor}


@query_router.get(
    "/analytics/genai-metrics",
    tags=["analytics"],
    summary="Token usage and operation duration from OTLP GenAI metrics, per time bucket",
)
async def genai_metrics_analytics(
    request: Request,
    key: Annotated[ApiKey, Depends(reader)],
    start: Annotated[str | None, Query(description=f"Start {_TIME_DOC}", max_length=64)] = None,
    end: Annotated[str | None, Query(description=f"End {_TIME_DOC}", max_length=64)] = None,
    range: Annotated[
        str | None, Query(description="Relative range ending now: 15m, 24h, 7d", max_length=8)
    ] = None,
    bucket: Annotated[
        str,
        Query(
            pattern="^(1m|5m|15m|1h|6h|1d|none)$",
            description="Time bucket; `none` makes one bucket for the whole range",
        ),
    ] = "1h",
    service: Annotated[str | None, Query(max_length=512)] = None,
    provider: Annotated[str | None, Query(max_length=512)] = None,
    model: Annotated[str | None, Query(max_length=512)] = None,
    operation: Annotated[str | None, Query(max_length=512)] = None,
) -> dict[str, Any]:
    start_ns, end_ns = _time_range(start, end, range, DEFAULT_RANGE_NS)
    assert start_ns is not None
    step = BUCKET_SECONDS.get(bucket)
    if (
        step is not None
        and ((end_ns or time.time_ns()) - start_ns) // (step * 1_000_000_000) > MAX_BUCKETS
    ):
        raise HTTPException(
            422,
            f"{bucket} buckets over this range make more than {MAX_BUCKETS} points; "
            "choose a larger bucket",
        )
    filters = genai_metrics.MetricFilters(
        start_time=start_ns,
        end_time=end_ns,
        service=_clean(service),
        provider=_clean(provider),
        model=_clean(model),
        operation=_clean(operation),
    )
    st = state(request)
    cache_key = (
        "genai-metrics:"
        + orjson.dumps(
            [
                start_ns // 60_000_000_000,
                end_ns and end_ns // 60_000_000_000,
                bucket,
                vars(filters),
            ],
            option=orjson.OPT_SORT_KEYS,
        ).decode()
    )

    def compute() -> dict[str, Any]:
        with st.db.read() as conn:
            series = genai_metrics.metric_series(conn, key.project_id, filters, step)
        return {"series": series, **genai_metrics.usage_views(series)}

    result = await run_in_threadpool(st.cache.get_or_compute, key.project_id, cache_key, compute)
    return {
        "start_time_unix_nano": start_ns,
        "end_time_unix_nano": end_ns,
        "bucket": bucket,
        **result,
    }
