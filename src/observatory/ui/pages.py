"""The read-only pages: overview, traces, trace detail, sessions, users and models.

Handlers are plain functions (FastAPI runs them in a worker thread) built on the same query
functions the REST API uses, scoped to the signed-in key's project.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from observatory.api.deps import state
from observatory.ingest import pricing
from observatory.model import LlmUsage
from observatory.store import admin, queries, ui_queries
from observatory.store.queries import TRACE_SORTS, Filters
from observatory.ui import charts, params
from observatory.ui.auth import UiSession, current_session
from observatory.ui.render import Renderer
from observatory.ui.waterfall import flatten, pick_span, span_view

router = APIRouter(include_in_schema=False)
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
SPAN_ID = re.compile(r"^[0-9a-f]{16}$")
PAGE_SIZES = (25, 50, 100)
LIST_PAGE = 50


def renderer(request: Request) -> Renderer:
    return request.app.state.ui_renderer  # type: ignore[no-any-return]


def page(
    request: Request, session: UiSession, name: str, context: dict[str, Any], status: int = 200
) -> Response:
    return renderer(request).render(
        request, name, {"session": session, **context}, status_code=status
    )


def not_found(request: Request, session: UiSession, what: str) -> Response:
    return page(request, session, "error.html", {"title": "Not found", "message": what}, 404)


def _options(conn: Any, project_id: int, *dims: str) -> dict[str, list[str]]:
    return {dim: queries.distinct_values(conn, project_id, dim) for dim in dims}


def _cached(request: Request, project_id: int, key: str, compute: Any) -> Any:
    return state(request).cache.get_or_compute(project_id, "ui:" + key, compute)


# --- overview -----------------------------------------------------------------------------------


@router.get("/")
def overview(request: Request) -> Response:
    session = current_session(request)
    pid = session.project_id
    errors: list[str] = []
    tr = params.time_range(request.query_params, errors)
    win = params.window(request.query_params, tr)
    f = params.window_filters(win)
    bucket = tr.bucket
    end_ns = tr.effective_end_ns
    minute = end_ns // 60_000_000_000
    cache_key = orjson.dumps(
        [tr.start_ns // 60_000_000_000, minute, win.environment, win.service, bucket]
    ).decode()

    def compute() -> dict[str, Any]:
        with state(request).db.read() as conn:
            total = queries.analytics(conn, pid, f)
            points = queries.analytics(conn, pid, f, bucket=bucket)
            by_model = queries.analytics(conn, pid, f, bucket=bucket, group_by="model")
            tops = {
                dim: queries.analytics(conn, pid, f, group_by=dim, limit=1000)
                for dim in ("model", "provider", "service")
            }
            # Users are not in the rollups; the trace summaries aggregate them in SQL.
            users = {
                order: [
                    charts.user_row(row)
                    for row in ui_queries.list_users(conn, pid, win, sort=order, limit=charts.TOP_N)
                ]
                for order in ("cost", "llm_calls")
            }
        return {
            "total": total,
            "points": points,
            "by_model": by_model,
            "tops": tops,
            "users": users,
        }

    data = _cached(request, pid, "overview:" + cache_key, compute)
    with state(request).db.read() as conn:
        options = _options(conn, pid, "environment", "service")
    total = data["total"][0] if data["total"] else None
    xs = charts.buckets(tr.start_ns, end_ns, bucket)
    chart_data = charts.overview_charts(data["points"], data["by_model"], xs)
    tops = {dim: charts.top_lists(rows) for dim, rows in data["tops"].items()}
    tops["user"] = charts.top_users(data["users"]["cost"], data["users"]["llm_calls"])
    return page(
        request,
        session,
        "overview.html",
        {
            "nav": "overview",
            "title": "Overview",
            "errors": errors,
            "tr": tr,
            "win": win,
            "options": options,
            "total": total,
            "chart_data": chart_data,
            "tops": tops,
            "custom_value": params.custom_input_value,
        },
    )


# --- traces ---------------------------------------------------------------------------------------


def _trace_list(request: Request, session: UiSession) -> dict[str, Any]:
    qp = request.query_params
    errors: list[str] = []
    tr = params.time_range(qp, errors)
    tq = params.trace_filters(qp, tr, errors)
    sort = qp.get("sort", "start_time")
    sort = sort if sort in TRACE_SORTS else "start_time"
    order = "asc" if qp.get("order") == "asc" else "desc"
    try:
        limit = int(qp.get("limit", "50"))
    except ValueError:
        limit = 50
    limit = limit if limit in PAGE_SIZES else 50
    cursor = qp.get("cursor") or None
    with state(request).db.read() as conn:
        try:
            result = queries.list_traces(
                conn,
                session.project_id,
                tq.filters,
                sort=sort,
                descending=order == "desc",
                limit=limit,
                cursor=cursor,
            )
        except queries.BadCursor:
            errors.append("That page link is no longer valid; showing the first page.")
            cursor = None
            result = queries.list_traces(
                conn, session.project_id, tq.filters, sort=sort, descending=order == "desc"
            )
        options = _options(conn, session.project_id, "environment", "service", "model", "provider")
    return {
        "nav": "traces",
        "title": "Traces",
        "errors": errors,
        "tr": tr,
        "active": tq.active,
        "sort": sort,
        "order": order,
        "limit": limit,
        "cursor": cursor,
        "traces": result.items,
        "next_cursor": result.next_cursor,
        "options": options,
        "live": qp.get("live") == "1" and cursor is None,
        "custom_value": params.custom_input_value,
        "refreshed_ns": time.time_ns(),
    }


@router.get("/traces")
def traces_page(request: Request) -> Response:
    session = current_session(request)
    return page(request, session, "traces.html", _trace_list(request, session))


@router.get("/traces/rows")
def trace_rows(request: Request) -> Response:
    """The table body alone, for live refresh."""
    session = current_session(request)
    return page(request, session, "_trace_rows.html", _trace_list(request, session))


@router.get("/traces/{trace_id}")
def trace_page(request: Request, trace_id: str) -> Response:
    session = current_session(request)
    trace_id = trace_id.strip().lower()
    if not TRACE_ID.match(trace_id):
        return not_found(request, session, "A trace id is 32 hexadecimal characters.")
    with state(request).db.read() as conn:
        data = queries.get_trace(conn, session.project_id, trace_id)
    if data is None:
        return not_found(request, session, f"There is no trace {trace_id} in this project.")
    rows = flatten(data["trace"], data["spans"])
    selected = pick_span(rows, request.query_params.get("span", ""))
    return page(
        request,
        session,
        "trace.html",
        {
            "nav": "traces",
            "title": data["trace"]["name"] or trace_id,
            "trace": data["trace"],
            "rows": rows,
            "span": span_view(selected, data["trace"]) if selected else None,
            "selected_id": selected["span_id"] if selected else "",
        },
    )


@router.get("/traces/{trace_id}/spans/{span_id}")
def span_panel(request: Request, trace_id: str, span_id: str) -> Response:
    """One span's detail panel (htmx swaps it in; a plain visit goes to the trace page)."""
    session = current_session(request)
    trace_id, span_id = trace_id.strip().lower(), span_id.strip().lower()
    if not TRACE_ID.match(trace_id) or not SPAN_ID.match(span_id):
        return not_found(request, session, "No such span.")
    if request.headers.get("hx-request") != "true":
        return RedirectResponse(f"/traces/{trace_id}?span={span_id}", status_code=303)
    with state(request).db.read() as conn:
        data = queries.get_trace(conn, session.project_id, trace_id)
    if data is None:
        return not_found(request, session, "No such span.")
    rows = flatten(data["trace"], data["spans"])
    selected = pick_span(rows, span_id)
    if selected is None or selected["span_id"] != span_id:
        return not_found(request, session, "No such span.")
    return page(request, session, "_span_panel.html", {"span": span_view(selected, data["trace"])})


# --- sessions and users -------------------------------------------------------------------------


def _grouped_list(
    request: Request,
    session: UiSession,
    query: Callable[..., list[dict[str, Any]]],
    sorts: tuple[str, ...],
    default_sort: str,
    *,
    user_filter: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One page of the sessions or users list: the template context and every row read.

    ``query`` is ``ui_queries.list_sessions`` or ``list_users``; ``user_filter`` honours a
    ``user_id`` parameter. One row more than a page is read to know whether there is a next page.
    """
    qp = request.query_params
    errors: list[str] = []
    tr = params.time_range(qp, errors, default="7d")
    win = params.window(qp, tr)
    if user_filter:
        win.user_id = qp.get("user_id", "").strip()[:512] or None
    sort = qp.get("sort", default_sort)
    sort = sort if sort in sorts else default_sort
    number = params.page_number(qp)
    with state(request).db.read() as conn:
        rows = query(
            conn,
            session.project_id,
            win,
            sort=sort,
            limit=LIST_PAGE + 1,
            offset=(number - 1) * LIST_PAGE,
        )
        options = _options(conn, session.project_id, "environment", "service")
    context = {
        "errors": errors,
        "tr": tr,
        "win": win,
        "options": options,
        "rows": rows[:LIST_PAGE],
        "more": len(rows) > LIST_PAGE,
        "page_number": number,
        "sort": sort,
        "custom_value": params.custom_input_value,
    }
    return context, rows


@router.get("/sessions")
def sessions_page(request: Request) -> Response:
    session = current_session(request)
    context, _ = _grouped_list(
        request,
        session,
        ui_queries.list_sessions,
        ui_queries.SESSION_SORTS,
        "last_seen",
        user_filter=True,
    )
    return page(
        request, session, "sessions.html", {"nav": "sessions", "title": "Sessions", **context}
    )


@router.get("/sessions/{session_id:path}")
def session_page(request: Request, session_id: str) -> Response:
    session = current_session(request)
    session_id = session_id[:512]
    if not session_id:
        return RedirectResponse("/sessions", status_code=303)
    with state(request).db.read() as conn:
        result = queries.list_traces(
            conn,
            session.project_id,
            Filters(session_id=session_id),
            sort="start_time",
            descending=False,
            limit=500,
        )
        turns = result.items
        previews = ui_queries.trace_previews(conn, session.project_id, turns)
    if not turns:
        return not_found(request, session, "There is no session with this id in this project.")
    totals = {
        "traces": len(turns),
        "llm_calls": sum(t["llm_call_count"] for t in turns),
        "errors": sum(t["error_count"] for t in turns),
        "tokens": sum(t["total_tokens"] for t in turns),
        "cost": sum((Decimal(t["total_cost_usd"] or 0) for t in turns), Decimal(0)),
        "start": turns[0]["start_time_unix_nano"],
        "end": max(t["end_time_unix_nano"] for t in turns),
        "users": sorted({t["user_id"] for t in turns if t["user_id"]}),
    }
    return page(
        request,
        session,
        "session.html",
        {
            "nav": "sessions",
            "title": f"Session {session_id}",
            "session_id": session_id,
            "turns": turns,
            "previews": previews,
            "totals": totals,
            "truncated": result.next_cursor is not None,
        },
    )


@router.get("/users")
def users_page(request: Request) -> Response:
    session = current_session(request)
    context, rows = _grouped_list(
        request, session, ui_queries.list_users, ui_queries.USER_SORTS, "cost"
    )
    top_cost = max((r["total_cost_usd"] for r in rows), default=Decimal(0)) or Decimal(1)
    return page(
        request,
        session,
        "users.html",
        {"nav": "users", "title": "Users", **context, "top_cost": top_cost},
    )


@router.get("/users/{user_id:path}")
def user_page(request: Request, user_id: str) -> Response:
    session = current_session(request)
    user_id = user_id[:512]
    if not user_id:
        return RedirectResponse("/users", status_code=303)
    qp = request.query_params
    errors: list[str] = []
    tr = params.time_range(qp, errors, default="30d")
    win = params.window(qp, tr)
    win.user_id = user_id
    f = params.window_filters(win)
    with state(request).db.read() as conn:
        summary = ui_queries.list_users(conn, session.project_id, win, limit=1)
        models = queries.analytics(conn, session.project_id, f, group_by="model")
        sessions = ui_queries.list_sessions(conn, session.project_id, win, limit=20)
        recent = queries.list_traces(conn, session.project_id, f, limit=20).items
        options = _options(conn, session.project_id, "environment", "service")
    return page(
        request,
        session,
        "user.html",
        {
            "nav": "users",
            "title": f"User {user_id}",
            "user_id": user_id,
            "errors": errors,
            "tr": tr,
            "win": win,
            "options": options,
            "summary": summary[0] if summary else None,
            "models": models,
            "sessions": sessions,
            "recent": recent,
            "custom_value": params.custom_input_value,
        },
    )


# --- models ---------------------------------------------------------------------------------------


def price_used(custom: list[Any], provider: str, model: str, now_ns: int) -> dict[str, Any] | None:
    """The price cost was computed with: the project's own, else the genai-prices catalogue."""
    price = pricing.find_custom_price(custom, provider or None, model)
    if price is not None:
        return {
            "source": "custom",
            "input": price.input_usd_per_mtok,
            "output": price.output_usd_per_mtok,
            "cache_read": price.cache_read_usd_per_mtok,
        }
    million = 1_000_000
    cost_in = pricing.catalogue_cost(
        provider or None, model, LlmUsage(input_tokens=million, output_tokens=0), now_ns
    )
    cost_out = pricing.catalogue_cost(
        provider or None, model, LlmUsage(input_tokens=0, output_tokens=million), now_ns
    )
    if cost_in is None or cost_out is None:
        return None
    return {
        "source": "catalogue",
        "input": cost_in.total_usd,
        "output": cost_out.total_usd,
        "cache_read": None,
    }


@router.get("/models")
def models_page(request: Request) -> Response:
    session = current_session(request)
    qp = request.query_params
    errors: list[str] = []
    tr = params.time_range(qp, errors, default="7d")
    win = params.window(qp, tr)
    f = params.window_filters(win)
    with state(request).db.read() as conn:
        rows = ui_queries.model_usage(conn, session.project_id, win)
        custom = admin.list_prices(conn, session.project_id)
        series = queries.analytics(conn, session.project_id, f, bucket=tr.bucket, group_by="model")
        options = _options(conn, session.project_id, "environment", "service")
    now_ns = time.time_ns()
    for row in rows:
        row["price"] = price_used(custom, row["provider"], row["model"], now_ns)
        row["cost_per_request"] = row["cost_usd"] / row["requests"] if row["requests"] else None
    total_cost = sum((r["cost_usd"] for r in rows), Decimal(0))
    xs = charts.buckets(tr.start_ns, tr.effective_end_ns, tr.bucket)
    return page(
        request,
        session,
        "models.html",
        {
            "nav": "models",
            "title": "Models",
            "errors": errors,
            "tr": tr,
            "win": win,
            "options": options,
            "rows": rows,
            "total_cost": total_cost,
            "total_requests": sum(r["requests"] for r in rows),
            "chart_data": charts.requests_by_model(series, xs),
            "custom_value": params.custom_input_value,
        },
    )
