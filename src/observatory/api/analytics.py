"""Aggregates for dashboards, served from the per-minute rollups (cached)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from observatory.api.deps import Require, state
from observatory.api.params import common_filters
from observatory.model import ApiKey, Role
from observatory.store import queries
from observatory.store.queries import Filters

router = APIRouter(prefix="/api/v1/analytics", tags=["analytics"])
reader = Require(Role.READ)
DEFAULT_RANGE_NS = 24 * 3600 * 1_000_000_000
GROUPS = "^(model|provider|service|operation|environment|user|session)$"
# At most this many points per series, so a 1m bucket over 30 days is refused, not computed.
MAX_BUCKETS = 5000


def _json(body: dict[str, Any]) -> Response:
    """The answer encoded by orjson directly: a 30-day hourly series grouped by model has ~4,000
    points, which FastAPI's generic encoder takes ~30x longer to walk."""
    return Response(orjson.dumps(body), media_type="application/json")


def _default_range(filters: Filters) -> Filters:
    if filters.start_time is None:
        end = filters.end_time or time.time_ns()
        filters.start_time = end - DEFAULT_RANGE_NS
    return filters


def _cache_key(kind: str, filters: Filters, **extra: Any) -> str:
    # Relative ranges move with the clock; round to the minute so the cache can help.
    data = dict(vars(filters))
    for name in ("start_time", "end_time"):
        if data[name] is not None:
            data[name] = data[name] // 60_000_000_000
    return (
        kind
        + ":"
        + orjson.dumps({**data, **extra}, default=str, option=orjson.OPT_SORT_KEYS).decode()
    )


async def _run(
    request: Request, key: ApiKey, filters: Filters, cache_key: str, **kwargs: Any
) -> list[dict[str, Any]]:
    st = state(request)

    def compute() -> list[dict[str, Any]]:
        with st.db.read() as conn:
            return queries.analytics(conn, key.project_id, filters, **kwargs)

    return await run_in_threadpool(st.cache.get_or_compute, key.project_id, cache_key, compute)


@router.get(
    "/summary",
    summary="Totals over a time range, optionally grouped",
    response_model=dict[str, Any],
)
async def summary(
    request: Request,
    key: Annotated[ApiKey, Depends(reader)],
    filters: Annotated[Filters, Depends(common_filters)],
    group_by: Annotated[str | None, Query(pattern=GROUPS)] = None,
    llm_only: bool = True,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    filters = _default_range(filters)
    rows = await _run(
        request,
        key,
        filters,
        _cache_key("summary", filters, g=group_by, l=llm_only, n=limit),
        group_by=group_by,
        bucket=None,
        llm_only=llm_only,
        limit=limit,
    )
    if group_by is None:
        total = rows[0] if rows else queries._finish(queries._zero_totals(), 0)
        total.pop("group", None)
        total.pop("bucket_start_unix_s", None)
        return _json(
            {
                "start_time_unix_nano": filters.start_time,
                "end_time_unix_nano": filters.end_time,
                "total": total,
            }
        )
    return _json(
        {
            "start_time_unix_nano": filters.start_time,
            "end_time_unix_nano": filters.end_time,
            "group_by": group_by,
            "groups": rows,
        }
    )


@router.get(
    "/timeseries",
    summary="Aggregates per time bucket, optionally per group",
    response_model=dict[str, Any],
)
async def timeseries(
    request: Request,
    key: Annotated[ApiKey, Depends(reader)],
    filters: Annotated[Filters, Depends(common_filters)],
    bucket: Annotated[str, Query(pattern="^(1m|5m|15m|1h|6h|1d)$")] = "1h",
    group_by: Annotated[str | None, Query(pattern=GROUPS)] = None,
    llm_only: bool = True,
) -> Response:
    filters = _default_range(filters)
    assert filters.start_time is not None
    span_ns = (filters.end_time or time.time_ns()) - filters.start_time
    if span_ns // (queries.BUCKET_SECONDS[bucket] * 1_000_000_000) > MAX_BUCKETS:
        raise HTTPException(
            422,
            f"{bucket} buckets over this range make more than {MAX_BUCKETS} points; "
            "choose a larger bucket",
        )
    rows = await _run(
        request,
        key,
        filters,
        _cache_key("ts", filters, b=bucket, g=group_by, l=llm_only),
        group_by=group_by,
        bucket=bucket,
        llm_only=llm_only,
        limit=100_000,
    )
    return _json(
        {
            "start_time_unix_nano": filters.start_time,
            "end_time_unix_nano": filters.end_time,
            "bucket": bucket,
            "group_by": group_by,
            "points": rows,
        }
    )
