"""``POST /v1/traces``: the OTLP/HTTP receiver.

It checks the content type and size, authenticates, hands decoding to a worker thread and the
rows to the group-commit writer, and answers only after the commit. Status codes follow the
OTLP/HTTP specification: 200 with ``partial_success`` when some spans were rejected, 400 for a
body that cannot be decoded ("MUST NOT be retried"), 413 above the size limit, 415 for an
unsupported content type, 429/503 with ``Retry-After`` when the server is overloaded or the
database is down ("the client SHOULD ... retry", honouring Retry-After).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import APIRouter, HTTPException, Request, Response
from prometheus_client import Counter
from starlette.concurrency import run_in_threadpool

from observatory import metrics
from observatory.api.deps import AppState, authenticate, config_for, state
from observatory.config import Settings
from observatory.ingest import otlp
from observatory.ingest.pipeline import (
    PROTOBUF,
    BodyTooLarge,
    TooManySpans,
    count_llm_metrics,
    gunzip,
    media_type,
)
from observatory.ingest.workers import WorkersUnavailable
from observatory.ingest.writer import Overloaded, Unavailable
from observatory.model import ApiKey, Role

log = logging.getLogger(__name__)
router = APIRouter()


def error_response(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None
) -> Response:
    """An OTLP ``Status`` body in the request's encoding, with ``status`` as the HTTP code."""
    body, content_type = otlp.encode_status(message, kind == PROTOBUF)
    return Response(body, status_code=status, media_type=content_type, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes of the body; raise BodyTooLarge beyond it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyTooLarge(f"body of {declared} bytes exceeds {limit} bytes")
        except ValueError:
            pass
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True, slots=True)
class Export:
    """An authenticated OTLP/HTTP export request whose body has been read and decompressed."""

    st: AppState
    key: ApiKey
    kind: str
    body: bytes


async def receive_export(
    request: Request,
    rejected_total: Counter,
    handle: Callable[[Export], Awaitable[Response]],
) -> Response:
    """The HTTP front shared by the OTLP/HTTP receivers (traces, logs, metrics).

    Checks the content type (415), authenticates, checks the Content-Encoding (415), sheds load
    (503 + Retry-After), reads the body in time (408) and within the size limit (413) and
    gunzips it (400, 413), counting refusals in ``rejected_total`` by reason. Then answers with
    what ``handle`` returns; the request counts as in flight until ``handle`` is done.
    """
    st = state(request)
    settings = st.settings
    kind = media_type(request.headers.get("content-type"))
    if kind is None:
        rejected_total.labels("unsupported_media_type").inc()
        return Response(
            b'{"message":"Content-Type must be application/x-protobuf or application/json"}',
            status_code=415,
            media_type="application/json",
        )
    try:
        key = await authenticate(request, Role.INGEST)
    except HTTPException as exc:
        return error_response(exc.status_code, str(exc.detail), kind, dict(exc.headers or {}))
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", ""):
        return error_response(
            415, f"Content-Encoding {encoding!r} is not supported (use gzip)", kind
        )
    if st.inflight_ingest >= settings.max_inflight_ingest:
        # Shed load before reading the body, so health checks and queries stay responsive.
        rejected_total.labels("overload").inc()
        return error_response(
            503, "too many ingest requests in progress", kind, retry_after_header(settings)
        )
    st.inflight_ingest += 1
    try:
        try:
            async with asyncio.timeout(settings.body_read_timeout_seconds):
                body = await read_body(request, settings.max_body_bytes)
            if encoding == "gzip":
                body = await run_in_threadpool(gunzip, body, settings.max_body_bytes)
        except TimeoutError:
            rejected_total.labels("timeout").inc()
            return error_response(408, "the request body was not received in time", kind)
        except BodyTooLarge as exc:
            rejected_total.labels("too_large").inc()
            return error_response(413, str(exc), kind)
        except otlp.OtlpDecodeError as exc:
            rejected_total.labels("invalid").inc()
            return error_response(400, str(exc), kind)
        return await handle(Export(st, key, kind, body))
    finally:
        st.inflight_ingest -= 1


@router.post(
    "/v1/traces",
    tags=["ingest"],
    summary="OTLP/HTTP trace export (protobuf or JSON)",
    responses={
        200: {"description": "Accepted (possibly with partial_success)"},
        400: {"description": "Undecodable body"},
        401: {"description": "Missing or invalid API key"},
        403: {"description": "Key may not ingest"},
        408: {"description": "The body was not received in time"},
        413: {"description": "Body too large, or too many spans"},
        415: {"description": "Unsupported content type or encoding"},
        429: {"description": "Rate limited; retry after Retry-After"},
        503: {"description": "Overloaded or database unavailable; retry after Retry-After"},
    },
)
async def export_traces(request: Request) -> Response:
    return await receive_export(request, metrics.spans_rejected_total, _store_traces)


async def _store_traces(export: Export) -> Response:
    outcome = await process_export(export.st, export.key, export.body, export.kind)
    if outcome.status != 200:
        return error_response(outcome.status, outcome.message, export.kind, outcome.headers)
    body_out, content_type = otlp.encode_response(
        outcome.rejected, outcome.message, export.kind == PROTOBUF
    )
    return Response(body_out, status_code=200, media_type=content_type)


@dataclass
class Outcome:
    """The transport-independent result of one export (HTTP and gRPC map it to their codes)."""

    status: int  # HTTP semantics: 200, 400, 413, 429, 503
    message: str = ""
    rejected: int = 0
    retry_after_seconds: int | None = None

    @property
    def headers(self) -> dict[str, str] | None:
        if self.retry_after_seconds is None:
            return None
        return {"Retry-After": str(self.retry_after_seconds)}


def retry_after_header(settings: Settings) -> dict[str, str]:
    """The ``Retry-After`` header for a 503 answer."""
    return {"Retry-After": str(settings.retry_after_seconds)}


async def process_export(
    st: AppState, key: ApiKey, body: bytes, kind: str, *, gzipped: bool = False
) -> Outcome:
    """Decode, check, store and acknowledge one trace export request (already authenticated).

    Used by the OTLP/HTTP handler and the gRPC receiver alike.
    """
    settings = st.settings
    retry = settings.retry_after_seconds
    try:
        if gzipped:
            body = await run_in_threadpool(gunzip, body, settings.max_body_bytes)
    except BodyTooLarge as exc:
        metrics.spans_rejected_total.labels("too_large").inc()
        return Outcome(413, str(exc))
    except otlp.OtlpDecodeError as exc:
        metrics.spans_rejected_total.labels("invalid").inc()
        return Outcome(400, str(exc))
    try:
        config = await config_for(st, key.project_id)
    except HTTPException as exc:
        return Outcome(exc.status_code, str(exc.detail), retry_after_seconds=retry)
    try:
        prepared = await st.preparer.prepare(body, kind, key.project_id, config.policy)
    except WorkersUnavailable as exc:
        metrics.spans_rejected_total.labels("unavailable").inc()
        return Outcome(503, str(exc), retry_after_seconds=retry)
    except otlp.OtlpDecodeError as exc:
        metrics.spans_rejected_total.labels("invalid").inc()
        return Outcome(400, str(exc))
    except TooManySpans as exc:
        metrics.spans_rejected_total.labels("too_large").inc()
        return Outcome(413, str(exc))
    if prepared.rejected:
        metrics.spans_rejected_total.labels("invalid").inc(prepared.rejected)
    if prepared.unknown_price:
        metrics.unknown_model_price_total.inc(prepared.unknown_price)
    if config.spans_per_second > 0 and st.limiter is not None and prepared.rows:
        rate = config.spans_per_second
        decision = await run_in_threadpool(
            st.limiter.check,
            f"spans:{key.project_id}",
            float(rate),
            float(rate),
            float(len(prepared.rows)),
        )
        if not decision.allowed:
            metrics.spans_rejected_total.labels("rate_limited").inc(len(prepared.rows))
            return Outcome(
                429,
                f"project ingest limit of {rate} spans per second exceeded",
                retry_after_seconds=decision.retry_after_seconds,
            )
    try:
        result = await st.writer.submit(
            prepared.rows, settings.request_timeout_seconds, prepared.aggregates, key.project_id
        )
    except Overloaded as exc:
        metrics.spans_rejected_total.labels("overload").inc(len(prepared.rows))
        return Outcome(503, str(exc), retry_after_seconds=retry)
    except (TimeoutError, Unavailable) as exc:
        metrics.spans_rejected_total.labels("unavailable").inc(len(prepared.rows))
        return Outcome(
            503, str(exc) or "the write did not complete in time", retry_after_seconds=retry
        )
    rejected = prepared.rejected + len(result.rejected_rows)
    message = "; ".join(m for m in (prepared.message, result.rejected_message) if m)
    rejected_rows = set(result.rejected_rows)
    metrics.spans_accepted_total.inc(len(prepared.rows) - len(rejected_rows))
    count_llm_metrics(prepared.llm, rejected_rows)
    return Outcome(200, message, rejected)
