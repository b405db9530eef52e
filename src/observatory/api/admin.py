"""Administration of the caller's own project: keys, custom prices, the audit log.

An admin key is bound to one project and administers that project only. Creating a project
returns an admin key for the new project (shown once); the caller's key gains no access to it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from observatory.api.deps import Require, audit, state
from observatory.api.params import parse_time
from observatory.ingest import redact, sampling
from observatory.model import ApiKey, ModelPrice, Role
from observatory.store import admin

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])
administrator = Require(Role.ADMIN)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class ProjectIn(BaseModel):
    name: str = Field(pattern=NAME_PATTERN, description="Letters, digits, '.', '_' and '-'")


class KeyIn(BaseModel):
    role: Role
    name: str = Field(default="", max_length=128)
    expires_at: datetime | None = None


class PriceIn(BaseModel):
    provider: str = Field(default="", max_length=64, description="'' matches any provider")
    model: str = Field(min_length=1, max_length=256)
    input_usd_per_mtok: Decimal = Field(ge=0, le=1_000_000)
    output_usd_per_mtok: Decimal = Field(ge=0, le=1_000_000)
    cache_read_usd_per_mtok: Decimal | None = Field(default=None, ge=0, le=1_000_000)
    cache_write_usd_per_mtok: Decimal | None = Field(default=None, ge=0, le=1_000_000)


def validate_rate_limits(raw: dict[str, Any]) -> dict[str, Any]:
    """``{"spans_per_second": N, "key_requests_per_minute": N}``; 0 disables, absent = default."""
    unknown = set(raw) - {"spans_per_second", "key_requests_per_minute"}
    if unknown:
        raise ValueError(f"unknown rate limit settings: {', '.join(sorted(unknown))}")
    out = {}
    for name, value in raw.items():
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 10**9:
            raise ValueError(f"{name} must be a whole number from 0 to 1000000000")
        out[name] = value
    return out


def key_json(key: ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "project": key.project_name,
        "name": key.name,
        "role": key.role.value,
        "key_prefix": key.key_prefix,
        "created_at": key.created_at.isoformat(),
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
    }


def price_json(price: ModelPrice) -> dict[str, Any]:
    def s(v: Decimal | None) -> str | None:
        return None if v is None else format(v.normalize(), "f")

    return {
        "price_id": price.price_id,
        "provider": price.provider,
        "model": price.model,
        "input_usd_per_mtok": s(price.input_usd_per_mtok),
        "output_usd_per_mtok": s(price.output_usd_per_mtok),
        "cache_read_usd_per_mtok": s(price.cache_read_usd_per_mtok),
        "cache_write_usd_per_mtok": s(price.cache_write_usd_per_mtok),
    }


@router.get("/project", summary="The caller's project")
async def own_project(
    request: Request, key: Annotated[ApiKey, Depends(administrator)]
) -> dict[str, Any]:
    st = state(request)

    def run() -> dict[str, Any]:
        with st.db.read() as conn:
            project = admin.get_project(conn, project_id=key.project_id)
        return {
            "project_id": project.project_id,
            "name": project.name,
            "created_at": project.created_at.isoformat(),
            "settings": project.settings,
        }

    return await run_in_threadpool(run)


@router.post("/projects", status_code=201, summary="Create a project and an admin key for it")
async def create_project(
    request: Request, body: ProjectIn, key: Annotated[ApiKey, Depends(administrator)]
) -> dict[str, Any]:
    st = state(request)

    def run() -> dict[str, Any]:
        try:
            with st.db.write() as conn:
                project = admin.create_project(conn, body.name)
                new_key, secret = admin.create_key(
                    conn, project.project_id, Role.ADMIN, name="initial admin"
                )
        except admin.Conflict as exc:
            audit(
                request,
                key,
                "project.create",
                "conflict",
                object_type="project",
                object_id=body.name,
            )
            raise HTTPException(409, str(exc)) from exc
        audit(
            request,
            key,
            "project.create",
            object_type="project",
            object_id=str(project.project_id),
            details={"name": project.name},
        )
        return {
            "project_id": project.project_id,
            "name": project.name,
            "admin_key": secret,
            "key": key_json(new_key),
        }

    return await run_in_threadpool(run)


@router.get("/keys", summary="Keys of the caller's project")
async def list_keys(
    request: Request, key: Annotated[ApiKey, Depends(administrator)]
) -> dict[str, Any]:
    st = state(request)

    def run() -> list[ApiKey]:
        with st.db.read() as conn:
            return admin.list_keys(conn, key.project_id)

    return {"data": [key_json(k) for k in await run_in_threadpool(run)]}


@router.post("/keys", status_code=201, summary="Create a key; the secret is returned once")
async def create_key(
    request: Request, body: KeyIn, key: Annotated[ApiKey, Depends(administrator)]
) -> dict[str, Any]:
    st = state(request)

    def run() -> dict[str, Any]:
        with st.db.write() as conn:
            new_key, secret = admin.create_key(
                conn, key.project_id, body.role, body.name, body.expires_at
            )
        audit(
            request,
            key,
            "key.create",
            object_type="key",
            object_id=str(new_key.key_id),
            details={"role": new_key.role.value, "name": new_key.name},
        )
        return {"key": secret, **key_json(new_key)}

    return await run_in_threadpool(run)


@router.delete("/keys/{key_id}", summary="Revoke a key")
async def revoke_key(
    request: Request,
    key_id: Annotated[int, Path(ge=1, le=2**62)],
    key: Annotated[ApiKey, Depends(administrator)],
) -> dict[str, Any]:
    st = state(request)

    def run() -> dict[str, Any]:
        try:
            with st.db.write() as conn:
                revoked = admin.revoke_key(conn, key_id, key.project_id)
        except admin.NotFound as exc:
            audit(request, key, "key.revoke", "not_found", object_type="key", object_id=str(key_id))
            raise HTTPException(404, str(exc)) from exc
        st.forget_keys()
        audit(request, key, "key.revoke", object_type="key", object_id=str(key_id))
        return key_json(revoked)

    return await run_in_threadpool(run)


@router.get("/prices", summary="The project's custom model prices")
async def list_prices(
    request: Request, key: Annotated[ApiKey, Depends(administrator)]
) -> dict[str, Any]:
    st = state(request)

    def run() -> list[ModelPrice]:
        with st.db.read() as conn:
            return admin.list_prices(conn, key.project_id)

    return {"data": [price_json(p) for p in await run_in_threadpool(run)]}


@router.put("/prices", summary="Set the project's price for a model (USD per million tokens)")
async def set_price(
    request: Request, body: PriceIn, key: Annotated[ApiKey, Depends(administrator)]
) -> dict[str, Any]:
    st = state(request)

    def run() -> dict[str, Any]:
        with st.db.write() as conn:
            price = admin.set_price(
                conn,
                key.project_id,
                body.provider,
                body.model,
                body.input_usd_per_mtok,
                body.output_usd_per_mtok,
                body.cache_read_usd_per_mtok,
                body.cache_write_usd_per_mtok,
            )
        st.forget_prices(key.project_id)
        audit(
            request,
            key,
            "price.set",
            object_type="price",
            object_id=str(price.price_id),
            details={"provider": price.provider, "model": price.model},
        )
        return price_json(price)

    return await run_in_threadpool(run)


@router.delete("/prices/{price_id}", summary="Remove a custom price")
async def delete_price(
    request: Request,
    price_id: Annotated[int, Path(ge=1, le=2**62)],
    key: Annotated[ApiKey, Depends(administrator)],
) -> dict[str, Any]:
    st = state(request)

    def run() -> dict[str, Any]:
        try:
            with st.db.write() as conn:
                admin.delete_price(conn, key.project_id, price_id)
        except admin.NotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        st.forget_prices(key.project_id)
        audit(request, key, "price.delete", object_type="price", object_id=str(price_id))
        return {"deleted": price_id}

    return await run_in_threadpool(run)


@router.get("/audit", summary="The project's audit log, newest first")
async def list_audit(
    request: Request,
    key: Annotated[ApiKey, Depends(administrator)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    action: Annotated[
        str | None, Query(max_length=64, description="Only this action, e.g. key.create")
    ] = None,
    outcome: Annotated[
        str | None, Query(max_length=32, description="Only this outcome, e.g. ok, forbidden")
    ] = None,
    since: Annotated[
        str | None, Query(max_length=64, description="From this time (ISO 8601 or unix seconds)")
    ] = None,
) -> dict[str, Any]:
    st = state(request)
    since_at = datetime.fromtimestamp(parse_time(since, "since") / 1e9, tz=UTC) if since else None

    def run() -> list[dict[str, Any]]:
        with st.db.read() as conn:
            return admin.list_audit(
                conn,
                key.project_id,
                limit,
                before_id,
                action=action or None,
                outcome=outcome or None,
                since=since_at,
            )

    return {"data": await run_in_threadpool(run)}


# --- project settings: redaction, sampling, rate limits -----------------------------------------

SETTING_VALIDATORS: dict[str, Any] = {
    "redaction": redact.validate_policy,
    "sampling": sampling.validate_policy,
    "rate-limits": validate_rate_limits,
}
SETTING_KEYS = {"redaction": "redaction", "sampling": "sampling", "rate-limits": "rate_limits"}


@router.get("/settings/{section}", summary="One section of the project's ingest settings")
async def get_settings(
    request: Request,
    section: Annotated[str, Path(pattern="^(redaction|sampling|rate-limits)$")],
    key: Annotated[ApiKey, Depends(administrator)],
) -> dict[str, Any]:
    st = state(request)

    def run() -> dict[str, Any]:
        with st.db.read() as conn:
            project = admin.get_project(conn, project_id=key.project_id)
        stored = project.settings.get(SETTING_KEYS[section]) or {}
        return dict(SETTING_VALIDATORS[section](stored))

    return await run_in_threadpool(run)


@router.put("/settings/{section}", summary="Replace one section of the project's ingest settings")
async def put_settings(
    request: Request,
    section: Annotated[str, Path(pattern="^(redaction|sampling|rate-limits)$")],
    body: dict[str, Any],
    key: Annotated[ApiKey, Depends(administrator)],
) -> dict[str, Any]:
    st = state(request)
    try:
        checked = dict(SETTING_VALIDATORS[section](body))
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc

    def run() -> dict[str, Any]:
        with st.db.write() as conn:
            project = admin.get_project(conn, project_id=key.project_id)
            settings = dict(project.settings)
            settings[SETTING_KEYS[section]] = checked
            admin.update_project_settings(conn, key.project_id, settings)
        st.forget_config(key.project_id)
        audit(
            request,
            key,
            f"settings.{section}",
            object_type="project",
            object_id=str(key.project_id),
            details={"settings": checked},
        )
        return checked

    return await run_in_threadpool(run)
