"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from observatory import __version__, metrics
from observatory.api.deps import state

router = APIRouter(tags=["operations"])


@router.get("/health/live", summary="The process is up")
async def live() -> dict[str, Any]:
    return {"status": "ok", "version": __version__}


@router.get("/health/ready", summary="Database, writer and cache are usable")
async def ready(request: Request) -> JSONResponse:
    st = state(request)
    checks: dict[str, Any] = {}

    def probe_db() -> str:
        try:
            st.db.ping()
        except Exception as exc:
            return f"down ({exc.__class__.__name__})"
        return "ok"

    checks["database"] = await run_in_threadpool(probe_db)
    metrics.db_up.set(1 if checks["database"] == "ok" else 0)
    writer = st.writer
    depth = writer.queue_depth
    checks["writer"] = (
        "ok" if writer.healthy else ("down" if not writer.db_available else "stopped")
    )
    checks["writer_queue_depth"] = depth
    checks["writer_queue_limit"] = st.settings.writer_queue_max_spans
    checks["cache"] = await run_in_threadpool(st.cache.status)
    ok = checks["database"] == "ok" and checks["writer"] == "ok"
    if depth >= st.settings.writer_queue_max_spans:
        ok = False
        checks["writer"] = "saturated"
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def prometheus(request: Request) -> Response:
    st = state(request)
    pool = st.db.engine.pool
    checked_out = getattr(pool, "checkedout", None)
    idle = getattr(pool, "checkedin", None)
    if callable(checked_out) and callable(idle):
        metrics.db_pool_connections.labels("checked_out").set(checked_out())
        metrics.db_pool_connections.labels("idle").set(idle())
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
