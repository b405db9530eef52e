"""``create_app(settings)``: wires the store, cache and writer into the ASGI application.

Nothing here reads the environment; settings arrive resolved (see config.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from observatory import __version__, metrics, retention_job
from observatory.alerting.evaluator import alerts_hook
from observatory.api import admin as admin_api
from observatory.api import alerts as alerts_api
from observatory.api import analytics, governance, health, otlp, otlp_signals, traces
from observatory.api.deps import AppState, rate_limit_headers
from observatory.api.errors import COMMON_RESPONSES
from observatory.api.otlp_grpc import serve_grpc
from observatory.cache import QueryCache
from observatory.cache.ratelimit import RateLimiter
from observatory.config import Settings
from observatory.ingest.workers import PreparePool, resolve_processes
from observatory.ingest.writer import GroupCommitWriter, is_connectivity_error
from observatory.model import Role
from observatory.store import admin, cube, partitions
from observatory.store.engine import Database, migrate
from observatory.store.writes import open_span_store

log = logging.getLogger("observatory")
access_log = logging.getLogger("observatory.access")

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"strict-origin-when-cross-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data:; "
        b"connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
    ),
]
# /docs loads Swagger UI from its own bundle; it needs inline scripts.
# /docs is Swagger UI from the vendored bundle; its start-up script is inline.
DOCS_CSP = (
    b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    b"img-src 'self' data:; frame-ancestors 'none'"
)


class RequestMiddleware:
    """Request id, one access-log line per request, HTTP metrics and security headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = ""
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                candidate = value.decode("latin-1")[:64]
                if candidate.replace("-", "").isalnum():
                    request_id = candidate
                break
        request_id = request_id or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status_holder = [500]
        path = scope.get("path", "")

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                names = {h[0].lower() for h in headers}
                for key, value in SECURITY_HEADERS:
                    if key in names:
                        continue
                    if key == b"content-security-policy" and path.startswith(("/docs", "/redoc")):
                        value = DOCS_CSP
                    headers.append((key, value))
                decision = scope["state"].get("rate_limit")
                if decision is not None and b"ratelimit-limit" not in names:
                    for name, text in rate_limit_headers(decision).items():
                        headers.append((name.lower().encode(), text.encode()))
                if scope.get("scheme") == "https" or _forwarded_https(scope):
                    headers.append(
                        (b"strict-transport-security", b"max-age=63072000; includeSubDomains")
                    )
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            metrics.http_requests_total.labels(method, template, str(status_holder[0])).inc()
            metrics.http_request_duration_seconds.labels(method, template).observe(elapsed)
            if template not in ("/health/live", "/metrics"):
                client = scope.get("client")
                access_log.info(
                    "%s %s %d",
                    method,
                    template,
                    status_holder[0],
                    extra={
                        "request_id": request_id,
                        "method": method,
                        "route": template,
                        "status": status_holder[0],
                        "duration_ms": round(elapsed * 1000, 2),
                        "client": client[0] if client else "",
                    },
                )


def _forwarded_https(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"x-forwarded-proto":
            return bool(value.strip().lower() == b"https")
    return False


def secret_key(settings: Settings) -> str:
    """The configured secret key, or one generated once into the data directory."""
    if settings.secret_key:
        return settings.secret_key
    path = settings.data_dir / "secret-key"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def bootstrap(db: Database, settings: Settings) -> str | None:
    """On an empty database: create project ``default`` and an admin key.

    Returns the new key (to print once) or None when the database already had projects. The key
    is also written to ``<data dir>/initial-admin-key`` with mode 0600.
    """
    with db.write() as conn:
        if admin.count_projects(conn) > 0:
            return None
        project = admin.create_project(conn, "default")
        _, secret = admin.create_key(
            conn,
            project.project_id,
            Role.ADMIN,
            name="initial admin",
            key=settings.initial_admin_key,
        )
        admin.record_audit(
            conn,
            action="project.bootstrap",
            outcome="ok",
            project_id=project.project_id,
            object_type="project",
            object_id=str(project.project_id),
            actor="system",
        )
    path = settings.data_dir / "initial-admin-key"
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secret + "\n")
        os.chmod(path, 0o600)
    return secret


async def _partition_maintenance(db: Database, settings: Settings) -> None:
    """Keep daily partitions prepared ahead (PostgreSQL); runs hourly."""
    while True:
        await asyncio.sleep(3600)
        try:
            await asyncio.to_thread(_ensure_partitions, db, settings)
        except Exception:
            log.warning("partition maintenance failed", exc_info=True)


def _ensure_partitions(db: Database, settings: Settings) -> None:
    with db.write() as conn:
        partitions.ensure_partitions(
            conn, datetime.now(tz=UTC).date(), 1, settings.partition_days_ahead
        )


def create_app(settings: Settings, *, print_banner: bool = False) -> FastAPI:
    """Build the application. The database is opened, migrated and bootstrapped on start-up."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database_url, settings.database_read_url, settings.db_pool_size)
    cache = QueryCache(settings.redis_url, settings.cache_ttl_seconds)
    url = db.url

    def store_factory() -> Any:
        return open_span_store(url.dialect, dsn=url.libpq_dsn, path=url.sqlite_path)

    def invalidate(projects: set[int]) -> None:
        # In the writer thread, after the batch committed and before its requests are answered:
        # a client that reads right after its export never gets an answer cached before it.
        for project_id in projects:
            cache.bump(project_id)

    writer = GroupCommitWriter(
        store_factory,
        queue_max_spans=settings.writer_queue_max_spans,
        batch_max_spans=settings.writer_batch_max_spans,
        max_wait_ms=settings.writer_max_wait_ms,
        on_commit=invalidate,
    )
    preparer = PreparePool(
        resolve_processes(settings.ingest_processes), encode=url.dialect == "postgresql"
    )
    st = AppState(
        settings=settings,
        db=db,
        writer=writer,
        cache=cache,
        preparer=preparer,
        limiter=RateLimiter(cache.redis),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.auto_migrate:
            revision = await asyncio.to_thread(migrate, db)
            log.info("database schema at revision %s", revision)
        if db.is_postgres:
            await asyncio.to_thread(_ensure_partitions, db, settings)
        new_key = await asyncio.to_thread(bootstrap, db, settings)
        app.state.secret_key = await asyncio.to_thread(secret_key, settings)
        st.secret_key = app.state.secret_key
        app.state.initial_admin_key = new_key
        if new_key and print_banner:
            _print_banner(settings, new_key)
        metrics.db_up.set(1)
        await asyncio.to_thread(preparer.start)
        writer.start()
        tasks = []
        if db.is_postgres:
            tasks.append(asyncio.create_task(_partition_maintenance(db, settings)))
        for hook in app.state.startup_hooks:
            tasks.append(asyncio.create_task(hook(app)))
        # Everything built so far (the app, its routes and models, the SQL metadata) lives as
        # long as the process: keep the collector from walking it again on every full collection,
        # which otherwise lands as a pause of tens of ms in whichever request allocates then.
        gc.collect()
        gc.freeze()
        log.info("ready", extra={"role": settings.role, "database": db.dialect})
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            log.info("draining the writer queue (%d spans)", writer.queue_depth)
            await asyncio.to_thread(writer.stop)
            await asyncio.to_thread(preparer.stop)
            db.dispose()

    is_api = settings.role == "api"
    app = FastAPI(
        title="LLM Observatory",
        version=__version__,
        description="OpenTelemetry-native observability for LLM applications.",
        lifespan=lifespan,
        docs_url=None,  # served below from the vendored Swagger UI, no CDN
        redoc_url=None,
        openapi_url="/openapi.json" if is_api else None,
    )
    app.state.obs = st
    app.state.startup_hooks = [retention_job.retention_hook]
    app.add_middleware(RequestMiddleware)
    app.include_router(health.router)
    app.include_router(otlp.router)
    app.include_router(otlp_signals.router)
    app.state.startup_hooks.append(serve_grpc)
    app.state.startup_hooks.append(alerts_hook)
    app.state.startup_hooks.append(cube.cube_hook)
    if is_api:
        app.include_router(otlp_signals.query_router, responses=COMMON_RESPONSES)
        app.include_router(traces.router, responses=COMMON_RESPONSES)
        app.include_router(analytics.router, responses=COMMON_RESPONSES)
        app.include_router(alerts_api.router, responses=COMMON_RESPONSES)
        # Before the admin router: its /settings/{section} would shadow /settings/retention.
        app.include_router(governance.router, responses=COMMON_RESPONSES)
        app.include_router(admin_api.router, responses=COMMON_RESPONSES)
        from observatory.ui.views import install_ui

        @app.get("/docs", include_in_schema=False)
        async def api_docs() -> HTMLResponse:
            return get_swagger_ui_html(
                openapi_url="/openapi.json",
                title="LLM Observatory API",
                swagger_js_url="/static/vendor/swagger-ui-bundle.js",
                swagger_css_url="/static/vendor/swagger-ui.css",
                swagger_favicon_url="/static/favicon.svg",
            )

        install_ui(app)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The shape FastAPI documents for 422 (HTTPValidationError), without echoing the input.
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        request_id = request.scope.get("state", {}).get("request_id", "")
        if is_connectivity_error(exc):
            # A query that found no database: the client may retry, this is not a bug.
            metrics.db_up.set(0)
            log.warning(
                "database unavailable in %s %s: %s",
                request.method,
                request.url.path,
                exc.__class__.__name__,
                extra={"request_id": request_id},
            )
            return JSONResponse(
                {"detail": "the database is unavailable; retry later", "request_id": request_id},
                status_code=503,
                headers={"Retry-After": str(settings.retry_after_seconds)},
            )
        log.error(
            "unhandled error in %s %s",
            request.method,
            request.url.path,
            exc_info=exc,
            extra={"request_id": request_id},
        )
        return JSONResponse({"detail": "internal error", "request_id": request_id}, status_code=500)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail: Any = exc.detail
        if exc.status_code == 422 and isinstance(detail, str):
            detail = [{"loc": [], "msg": detail, "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    return app


def _print_banner(settings: Settings, key: str) -> None:
    """Print the new admin key once, for the person at the terminal.

    When stdout is not a terminal (a container's log, a log collector) the key itself is not
    printed, only where to find it: keys never go into logs.
    """
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host  # noqa: S104 # nosec B104
    base = f"http://{host}:{settings.port}"
    key_file = Path(settings.data_dir) / "initial-admin-key"
    shown = key if sys.stdout.isatty() else f"$(cat {key_file})"
    # Like Jupyter's token URL: a one-time link (24 hours) that signs the browser in. It is a
    # credential too, so it is only printed to a terminal.
    web_ui = f"  Web UI: {base}/ (sign in with the admin key)\n\n"
    if settings.role == "api" and sys.stdout.isatty():
        try:
            from observatory.ui.auth import login_url

            link = login_url(settings, key, secret_key(settings), base)
        except Exception:  # the banner must never stop the server from starting
            log.warning("could not make a login link for the web UI", exc_info=True)
            link = None
        if link:
            web_ui = f"  Open the web UI (one-time login link, valid 24 hours):\n\n      {link}\n\n"
    print(
        "\n"
        "  LLM Observatory is ready. A project 'default' and an admin key were created.\n"
        f"  Admin key (shown once, also in {key_file}):\n\n"
        f"      {shown}\n\n"
        f"{web_ui}"
        "  Send traces with any OpenTelemetry exporter:\n\n"
        f"      export OTEL_EXPORTER_OTLP_TRACES_ENDPOINT={base}/v1/traces\n"
        f'      export OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer%20{shown}"\n\n'
        f"  API docs: {base}/docs\n",
        flush=True,
    )
