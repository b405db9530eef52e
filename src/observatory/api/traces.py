"""Trace list, trace detail and span search."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from starlette.concurrency import run_in_threadpool

from observatory.api.deps import Require, state
from observatory.api.params import (
    AttributeFilters,
    add_attribute_filters,
    check_trace_id,
    common_filters,
)
from observatory.model import ApiKey, Role
from observatory.store import queries
from observatory.store.queries import Filters

router = APIRouter(prefix="/api/v1", tags=["traces"])
reader = Require(Role.READ)


async def _page(
    request: Request,
    search: Callable[..., queries.Page],
    project_id: int,
    filters: Filters,
    sort: str,
    order: str,
    limit: int,
    cursor: str | None,
) -> dict[str, Any]:
    """One page of ``queries.list_traces`` or ``search_spans`` (``order`` is ``asc`` or
    ``desc``); a bad cursor is a 422."""
    st = state(request)

    def run() -> queries.Page:
        with st.db.read() as conn:
            return search(
                conn,
                project_id,
                filters,
                sort=sort,
                descending=order == "desc",
                limit=limit,
                cursor=cursor,
            )

    try:
        result = await run_in_threadpool(run)
    except queries.BadCursor as exc:
        raise HTTPException(422, str(exc)) from exc
    return {"data": result.items, "next_cursor": result.next_cursor}


@router.get("/traces", summary="List traces, one row per trace")
async def list_traces(
    request: Request,
    key: Annotated[ApiKey, Depends(reader)],
    filters: Annotated[Filters, Depends(common_filters)],
    sort: Annotated[str, Query(pattern="^(start_time|duration|cost|tokens|spans)$")] = "start_time",
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> dict[str, Any]:
    return await _page(
        request, queries.list_traces, key.project_id, filters, sort, order, limit, cursor
    )


@router.get("/traces/{trace_id}", summary="One trace with every span as a tree")
async def get_trace(
    request: Request, trace_id: str, key: Annotated[ApiKey, Depends(reader)]
) -> dict[str, Any]:
    trace_id = check_trace_id(trace_id)
    st = state(request)

    def run() -> dict[str, Any] | None:
        with st.db.read() as conn:
            return queries.get_trace(conn, key.project_id, trace_id)

    result = await run_in_threadpool(run)
    if result is None:
        raise HTTPException(404, f"trace {trace_id} not found")
    return result


@router.get("/spans", summary="Search spans")
async def search_spans(
    request: Request,
    key: Annotated[ApiKey, Depends(reader)],
    filters: Annotated[Filters, Depends(common_filters)],
    attribute: AttributeFilters = None,
    sort: Annotated[str, Query(pattern="^(start_time|duration|cost|tokens)$")] = "start_time",
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> dict[str, Any]:
    add_attribute_filters(filters, attribute)
    return await _page(
        request, queries.search_spans, key.project_id, filters, sort, order, limit, cursor
    )
