"""Data governance: span export, erasure on request, retention settings of a project."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Generator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from observatory.api.deps import Require, audit, client_address, state
from observatory.api.params import AttributeFilters, add_attribute_filters, common_filters
from observatory.model import ApiKey, Role
from observatory.store import admin, erasure, export, retention
from observatory.store.queries import Filters

router = APIRouter(tags=["governance"])
reader = Require(Role.READ)
administrator = Require(Role.ADMIN)


def _secret(request: Request) -> str:
    return str(getattr(request.app.state, "secret_key", "") or "")


def describe_filters(filters: Filters, secret_key: str) -> dict[str, Any]:
    """Filters for the audit log, which cannot be edited: user and session ids (and attribute
    values, which may name a person) only as keyed hashes, so an erasure leaves no trace."""
    out: dict[str, Any] = {}
    for name, value in vars(filters).items():
        if value is None or value == {} or value == "":
            continue
        if name in erasure.SUBJECTS:
            out[name] = erasure.subject_hash(secret_key, name, str(value))
        elif name == "attributes":
            out[name] = {
                k: erasure.subject_hash(secret_key, f"attribute:{k}", str(v))
                for k, v in value.items()
            }
        else:
            out[name] = value if isinstance(value, int | float | str) else str(value)
    return out


async def _stream(first: bytes, chunks: Generator[bytes, None, None]) -> AsyncIterator[bytes]:
    """Hand the export on chunk by chunk, reading the next one in a worker thread."""
    try:
        if first:
            yield first
        while True:
            chunk = await run_in_threadpool(next, chunks, None)
            if chunk is None:
                return
            if chunk:
                yield chunk
    finally:
        # Also on a client that went away: release the cursor and the connection.
        try:
            await run_in_threadpool(chunks.close)
        except BaseException:
            chunks.close()
            raise


@router.get(
    "/api/v1/export/spans",
    summary="Export spans as CSV, JSON Lines or Parquet (streamed)",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {
                "text/csv": {},
                "application/x-ndjson": {},
                "application/vnd.apache.parquet": {},
            },
            "description": "The spans matching the filters, oldest first.",
        }
    },
)
async def export_spans(
    request: Request,
    key: Annotated[ApiKey, Depends(reader)],
    filters: Annotated[Filters, Depends(common_filters)],
    format: Annotated[
        str, Query(pattern="^(csv|jsonl|parquet)$", description="csv, jsonl or parquet")
    ] = "jsonl",
    attribute: AttributeFilters = None,
) -> StreamingResponse:
    add_attribute_filters(filters, attribute)
    st = state(request)
    await run_in_threadpool(
        audit,
        request,
        key,
        "export",
        object_type="spans",
        object_id=format,
        details={"format": format, "filters": describe_filters(filters, _secret(request))},
    )
    chunks = export.export_spans(st.db, key.project_id, filters, format)
    # The first chunk is read before answering, so a failing query gets a proper error status.
    try:
        first = await run_in_threadpool(next, chunks, b"")
    except BaseException:
        chunks.close()
        raise
    media_type, extension = export.FORMATS[format]
    stamp = datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%SZ")
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", key.project_name)[:64]
    filename = f"spans-{safe_name}-{stamp}.{extension}"
    return StreamingResponse(
        _stream(first, chunks),
        media_type=media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        },
    )


class ErasureIn(BaseModel):
    """Exactly one of ``user_id`` and ``session_id``."""

    model_config = ConfigDict(extra="forbid")
    user_id: str | None = Field(default=None, min_length=1, max_length=1024)
    session_id: str | None = Field(default=None, min_length=1, max_length=1024)

    @model_validator(mode="after")
    def exactly_one(self) -> ErasureIn:
        if (self.user_id is None) == (self.session_id is None):
            raise ValueError("give exactly one of user_id and session_id")
        return self


@router.post(
    "/api/v1/admin/erasure",
    tags=["admin"],
    summary="Delete every span of a user id or a session id (right to erasure)",
)
async def erase(
    request: Request, body: ErasureIn, key: Annotated[ApiKey, Depends(administrator)]
) -> dict[str, Any]:
    st = state(request)
    subject = "user_id" if body.user_id is not None else "session_id"
    value = body.user_id if body.user_id is not None else body.session_id
    assert value is not None
    digest = erasure.subject_hash(_secret(request), subject, value)

    def run() -> erasure.ErasureResult:
        started = time.monotonic()
        try:
            result = erasure.erase(
                st.db, key.project_id, user_id=body.user_id, session_id=body.session_id
            )
        except Exception:
            audit(
                request,
                key,
                "data.erase",
                "error",
                object_type=subject,
                object_id=digest,
                details={"subject": subject, "subject_hash": digest},
            )
            raise
        audit(
            request,
            key,
            "data.erase",
            object_type=subject,
            object_id=digest,
            details={
                "subject": subject,
                "subject_hash": digest,
                **result.as_dict(),
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        with contextlib.suppress(Exception):
            st.cache.bump(key.project_id)
        return result

    result = await run_in_threadpool(run)
    return {"subject": subject, "subject_hash": digest, "deleted": result.as_dict()}


class RetentionIn(BaseModel):
    """A project's retention overrides in days; a missing or null field uses the default."""

    model_config = ConfigDict(extra="forbid")
    spans_days: int | None = None
    rollups_days: int | None = None
    audit_days: int | None = None
    logs_days: int | None = None


def _retention_view(st: Any, overrides: dict[str, int]) -> dict[str, Any]:
    defaults = retention.defaults_from_settings(st.settings)
    effective = retention.effective_policy(defaults, {"retention": overrides})
    return {
        "defaults": defaults.as_dict(),
        "project": overrides,
        "effective": effective.as_dict(),
    }


@router.get(
    "/api/v1/admin/settings/retention",
    tags=["admin"],
    summary="The project's retention: defaults, its overrides and the effective days",
)
async def get_retention(
    request: Request, key: Annotated[ApiKey, Depends(administrator)]
) -> dict[str, Any]:
    st = state(request)

    def run() -> dict[str, int]:
        with st.db.read() as conn:
            return retention.project_overrides(conn, key.project_id)

    return _retention_view(st, await run_in_threadpool(run))


@router.put(
    "/api/v1/admin/settings/retention",
    tags=["admin"],
    summary="Replace the project's retention overrides (days per kind; audit at least 365)",
)
async def put_retention(
    request: Request, body: RetentionIn, key: Annotated[ApiKey, Depends(administrator)]
) -> dict[str, Any]:
    st = state(request)
    try:
        overrides = retention.validate_overrides(body.model_dump())
    except retention.RetentionConfigError as exc:
        await run_in_threadpool(
            audit,
            request,
            key,
            "settings.retention",
            "invalid",
            object_type="project",
            object_id=str(key.project_id),
            details={"error": str(exc)},
        )
        raise HTTPException(422, str(exc)) from exc

    def run() -> dict[str, int]:
        with st.db.write() as conn:
            before = retention.project_overrides(conn, key.project_id)
            retention.set_project_overrides(conn, key.project_id, overrides)
            admin.record_audit(
                conn,
                action="settings.retention",
                outcome="ok",
                project_id=key.project_id,
                key_id=key.key_id,
                actor=key.key_prefix,
                object_type="project",
                object_id=str(key.project_id),
                remote_addr=client_address(request),
                details={"before": before, "after": overrides},
            )
        return overrides

    return _retention_view(st, await run_in_threadpool(run))
