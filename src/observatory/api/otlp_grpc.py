"""The OTLP/gRPC receiver: TraceService, LogsService and MetricsService ``Export`` on port 4317.

It runs in the server process beside the HTTP server, on the same event loop (``grpc.aio``),
started by :func:`serve_grpc` from the application's start-up hooks, in both roles. Requests are
handled like their OTLP/HTTP counterparts (same API keys, size limit, writers and
backpressure); failures map to gRPC status codes as the OTLP specification says
(https://opentelemetry.io/docs/specs/otlp/#failures):

* undecodable request → ``INVALID_ARGUMENT`` ("MUST NOT be retried");
* no or unknown key → ``UNAUTHENTICATED``; key without the ingest role → ``PERMISSION_DENIED``;
* overloaded, or the database is down → ``UNAVAILABLE`` with ``RetryInfo`` ("the server MUST
  return an error with code UNAVAILABLE and MAY supply additional details via status using
  RetryInfo");
* a rate limit → ``RESOURCE_EXHAUSTED`` with ``RetryInfo`` (the spec: retryable "only if the
  server signals that recovery from resource exhaustion is possible ... by returning a status
  containing RetryInfo"). gRPC itself answers RESOURCE_EXHAUSTED without RetryInfo to a message
  above the size limit, which is not to be retried; too many spans → ``INVALID_ARGUMENT``;
* partly invalid data → success with ``partial_success``.

RetryInfo travels both in the standard ``grpc-status-details-bin`` trailer (a
``google.rpc.Status``) and in ``google.rpc.retryinfo-bin``, which the OpenTelemetry Python
exporter reads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from starlette.concurrency import run_in_threadpool

from observatory import metrics
from observatory.api.deps import AppState, config_for, record_refusal
from observatory.api.otlp import process_export
from observatory.api.otlp_signals import (
    SignalResult,
    encode_logs_response,
    encode_metrics_response,
    ingest_logs,
    ingest_metrics,
    signal_writer,
)
from observatory.ingest import otlp
from observatory.ingest.pipeline import PROTOBUF
from observatory.ingest.writer import Overloaded, Unavailable
from observatory.model import ApiKey, Role
from observatory.store import admin

log = logging.getLogger(__name__)

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
METRICS_SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"
SHUTDOWN_GRACE_SECONDS = 5.0


class _Refusal(Exception):
    """End the call with this status (and RetryInfo when ``retry_after`` is set)."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


def peer_address(peer: str) -> str:
    """``ipv4:127.0.0.1:5000`` / ``ipv6:%5B::1%5D:5000`` → the address alone."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host = unquote(rest).rsplit(":", 1)[0]
        return host.strip("[]")[:64]
    return peer[:64]


def presented_key(metadata: Any) -> str | None:
    """The API key from ``authorization: Bearer …`` or ``x-api-key`` metadata."""
    values: dict[str, str] = {}
    for item in metadata or ():
        key, value = item[0], item[1]
        if isinstance(value, str):
            values.setdefault(key.lower(), value)
    header = values.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = values.get("x-api-key")
    return api_key.strip() if api_key and api_key.strip() else None


def trailing_metadata(code: grpc.StatusCode, message: str, retry_after: int | None) -> Any:
    """Trailers carrying a ``google.rpc.Status`` (with RetryInfo when retrying makes sense)."""
    status = status_pb2.Status(code=code.value[0], message=message)
    trailers: list[tuple[str, bytes]] = []
    if retry_after is not None:
        info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after))
        packed = any_pb2.Any()
        packed.Pack(info)
        status.details.append(packed)
        trailers.append(("google.rpc.retryinfo-bin", info.SerializeToString()))
    trailers.append(("grpc-status-details-bin", status.SerializeToString()))
    return tuple(trailers)


class OtlpGrpcReceiver:
    """The three ``Export`` methods over one application's state."""

    def __init__(self, st: AppState, app_state: Any) -> None:
        self.st = st
        self.app_state = app_state

    # --- plumbing --------------------------------------------------------------------------------

    def handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        out = []
        for service, name, export in (
            (TRACE_SERVICE, "traces", self.export_traces),
            (LOGS_SERVICE, "logs", self.export_logs),
            (METRICS_SERVICE, "metrics", self.export_metrics),
        ):
            # No (de)serializers: the methods take and return raw protobuf bytes, so decoding
            # errors are ours to answer (INVALID_ARGUMENT) and the decoders are shared with HTTP.
            method: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
                self._call(name, service, export)
            )
            out.append(grpc.method_handlers_generic_handler(service, {"Export": method}))
        return tuple(out)

    def _call(
        self,
        name: str,
        service: str,
        export: Callable[[bytes, ApiKey], Awaitable[bytes]],
    ) -> Callable[[bytes, aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]:
        async def handle(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
            st = self.st
            try:
                if st.inflight_ingest >= st.settings.max_inflight_ingest:
                    raise self._retry("too many ingest requests in progress")
                st.inflight_ingest += 1
                try:
                    key = await self._authenticate(context, f"gRPC /{service}/Export")
                    response = await export(request, key)
                finally:
                    st.inflight_ingest -= 1
            except _Refusal as refusal:
                metrics.grpc_requests_total.labels(name, refusal.code.name).inc()
                await context.abort(
                    refusal.code,
                    refusal.message,
                    trailing_metadata=trailing_metadata(
                        refusal.code, refusal.message, refusal.retry_after
                    ),
                )
                raise  # not reached: abort raises
            except asyncio.CancelledError:
                raise
            except Exception:
                if context.done():
                    raise
                log.error("unhandled error in gRPC %s export", name, exc_info=True)
                metrics.grpc_requests_total.labels(name, "INTERNAL").inc()
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")
                raise
            metrics.grpc_requests_total.labels(name, "OK").inc()
            return response

        return handle

    def _audit(self, context: Any, route: str, reason: str, key: ApiKey | None = None) -> None:
        record_refusal(self.st, reason, key, route, peer_address(context.peer() or ""))

    def _key_state(self, secret: str) -> str:
        with self.st.db.write() as conn:
            return admin.key_state(conn, secret)

    async def _authenticate(self, context: Any, route: str) -> ApiKey:
        st = self.st
        secret = presented_key(context.invocation_metadata())
        if not secret:
            await run_in_threadpool(self._audit, context, route, "missing_key")
            raise _Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing API key: send authorization: Bearer <key> or x-api-key metadata",
            )
        key = st.cached_key(secret) or await run_in_threadpool(st.lookup_key, secret)
        if key is None:
            reason = await run_in_threadpool(self._key_state, secret)
            await run_in_threadpool(self._audit, context, route, f"{reason}_key")
            raise _Refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                f"API key is {reason}" if reason != "unknown" else "API key is not valid",
            )
        await self._check_key_rate(key)
        if not key.role.allows(Role.INGEST):
            await run_in_threadpool(self._audit, context, route, "forbidden", key)
            raise _Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this key has role {key.role.value}; {Role.INGEST.value} is needed",
            )
        return key

    async def _check_key_rate(self, key: ApiKey) -> None:
        """The per-key request budget that OTLP/HTTP requests draw from too."""
        st = self.st
        if st.limiter is None:
            return
        per_minute = (await config_for(st, key.project_id)).key_requests_per_minute
        if per_minute <= 0:
            return
        decision = await run_in_threadpool(
            st.limiter.check, f"key:{key.key_id}", per_minute / 60.0, per_minute
        )
        if not decision.allowed:
            raise _Refusal(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit of {per_minute} requests per minute for this key exceeded",
                max(1, decision.retry_after_seconds),
            )

    def _retry(self, message: str) -> _Refusal:
        return _Refusal(grpc.StatusCode.UNAVAILABLE, message, self.st.settings.retry_after_seconds)

    # --- the three services ----------------------------------------------------------------------

    async def export_traces(self, body: bytes, key: ApiKey) -> bytes:
        outcome = await process_export(self.st, key, body, PROTOBUF)
        if outcome.status == 200:
            return otlp.encode_response(outcome.rejected, outcome.message, True)[0]
        raise self._from_http(outcome.status, outcome.message, outcome.retry_after_seconds)

    def _from_http(self, status: int, message: str, retry_after: int | None) -> _Refusal:
        """The gRPC status for an HTTP-style outcome of the shared export code."""
        retry = retry_after or self.st.settings.retry_after_seconds
        if status in (400, 413):
            # Undecodable, or more than one request may carry: retrying cannot help.
            return _Refusal(grpc.StatusCode.INVALID_ARGUMENT, message)
        if status == 429:
            return _Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, message, retry)
        if status == 503:
            return _Refusal(grpc.StatusCode.UNAVAILABLE, message, retry)
        return _Refusal(grpc.StatusCode.INTERNAL, message or "internal error")

    async def _signal(
        self,
        body: bytes,
        key: ApiKey,
        ingest: Callable[..., Awaitable[SignalResult]],
    ) -> SignalResult:
        writer = signal_writer(self.st, self.app_state)
        try:
            return await ingest(self.st, writer, key.project_id, body, PROTOBUF)
        except otlp.OtlpDecodeError as exc:
            raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from exc
        except Overloaded as exc:
            raise self._retry(str(exc)) from exc
        except (TimeoutError, Unavailable) as exc:
            raise self._retry(str(exc) or "the write did not complete in time") from exc

    async def export_logs(self, body: bytes, key: ApiKey) -> bytes:
        result = await self._signal(body, key, ingest_logs)
        return encode_logs_response(result, True)[0]

    async def export_metrics(self, body: bytes, key: ApiKey) -> bytes:
        result = await self._signal(body, key, ingest_metrics)
        return encode_metrics_response(result, True)[0]


def bind_address(host: str, port: int) -> str:
    """``host:port`` as gRPC wants it (IPv6 literals in brackets)."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _credentials(cert_file: str, key_file: str) -> grpc.ServerCredentials:
    cert = Path(cert_file).read_bytes()
    private_key = Path(key_file).read_bytes()
    return grpc.ssl_server_credentials([(private_key, cert)])


def build_server(st: AppState, app_state: Any) -> tuple[aio.Server, int]:
    """A started-to-be gRPC server bound to the configured address; returns it and its port."""
    settings = st.settings
    options: list[tuple[str, Any]] = [
        # The same limit as OTLP/HTTP bodies (gRPC applies it after decompression).
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", 4 * 1024 * 1024),
        # Several worker processes share the port; a single process must not silently share
        # it with another server (that would split the data between two databases).
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]
    server = aio.server(options=options)
    receiver = OtlpGrpcReceiver(st, app_state)
    server.add_generic_rpc_handlers(receiver.handlers())
    address = bind_address(settings.host, settings.grpc_port)
    if settings.grpc_tls_cert_file and settings.grpc_tls_key_file:
        credentials = _credentials(settings.grpc_tls_cert_file, settings.grpc_tls_key_file)
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    return server, port


async def serve_grpc(app: Any) -> None:
    """Start-up hook: run the OTLP/gRPC receiver until the application shuts down."""
    st: AppState = app.state.obs
    settings = st.settings
    if not settings.grpc_enabled:
        return
    address = bind_address(settings.host, settings.grpc_port)
    try:
        server, port = build_server(st, app.state)
        await server.start()
    except Exception as exc:
        # The HTTP server keeps running; say loudly that gRPC does not.
        log.error(
            "the OTLP/gRPC receiver could not start on %s: %s (OTLP/HTTP is still served)",
            address,
            exc,
        )
        return
    app.state.grpc_port = port
    log.info(
        "OTLP/gRPC receiver listening on %s",
        bind_address(settings.host, port),
        extra={"grpc_port": port, "tls": bool(settings.grpc_tls_cert_file)},
    )
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(SHUTDOWN_GRACE_SECONDS)
