"""Settings (admin keys only): the project, new projects, API keys and custom prices.

Every form carries a CSRF token and every change lands in the audit log. New secrets (an API key,
a new project's admin key) are shown once, in the response to the form that made them.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse, Response

from observatory.api.deps import audit, state
from observatory.model import Role
from observatory.store import admin
from observatory.ui.auth import Forbidden, UiSession, check_csrf, current_session, key_cache
from observatory.ui.pages import page

router = APIRouter(include_in_schema=False)
PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
NOTICES = {
    "revoked": "The key was revoked. Requests with it are refused from now on.",
    "price-saved": "The price was saved. New LLM calls of this model are costed with it.",
    "price-deleted": "The custom price was removed; the catalogue price applies again.",
}
Text = Annotated[str, Form(max_length=512)]


def admin_session(request: Request) -> UiSession:
    session = current_session(request)
    if not session.is_admin:
        raise Forbidden
    return session


def _settings_page(
    request: Request,
    session: UiSession,
    *,
    status: int = 200,
    errors: list[str] | None = None,
    **extra: Any,
) -> Response:
    with state(request).db.read() as conn:
        project = admin.get_project(conn, project_id=session.project_id)
        keys = admin.list_keys(conn, session.project_id)
        prices = admin.list_prices(conn, session.project_id)
        audit_rows = admin.list_audit(conn, session.project_id, limit=25)
    notice = NOTICES.get(request.query_params.get("notice", ""), "")
    return page(
        request,
        session,
        "settings.html",
        {
            "nav": "settings",
            "title": "Settings",
            "project": project,
            "keys": keys,
            "prices": prices,
            "audit_rows": audit_rows,
            "notice": notice,
            "errors": errors or [],
            "now": admin.now(),
            "roles": [r.value for r in Role],
            "new_key": None,
            "new_project": None,
            "form": {},
            **extra,
        },
        status,
    )


@router.get("/settings")
def settings_page(request: Request) -> Response:
    return _settings_page(request, admin_session(request))


@router.post("/settings/keys")
def create_key(
    request: Request,
    csrf_token: Text = "",
    name: Annotated[str, Form(max_length=128)] = "",
    role: Text = "read",
    expires_in_days: Text = "",
) -> Response:
    session = admin_session(request)
    check_csrf(request, csrf_token, session)
    errors = []
    if role not in {r.value for r in Role}:
        errors.append("Choose a role: ingest, read or admin.")
    expires = None
    if expires_in_days.strip():
        try:
            days = int(expires_in_days)
            if not 1 <= days <= 3650:
                raise ValueError
            expires = admin.now() + timedelta(days=days)
        except ValueError:
            errors.append("Expiry is a whole number of days between 1 and 3650, or empty.")
    if errors:
        return _settings_page(request, session, status=422, errors=errors)
    with state(request).db.write() as conn:
        key, secret = admin.create_key(conn, session.project_id, Role(role), name.strip(), expires)
    audit(
        request,
        session.key,
        "key.create",
        object_type="key",
        object_id=str(key.key_id),
        details={"role": key.role.value, "name": key.name, "via": "ui"},
    )
    return _settings_page(request, session, status=201, new_key={"key": key, "secret": secret})


@router.post("/settings/keys/{key_id}/revoke")
def revoke_key(request: Request, key_id: int, csrf_token: Text = "") -> Response:
    session = admin_session(request)
    check_csrf(request, csrf_token, session)
    try:
        with state(request).db.write() as conn:
            admin.revoke_key(conn, key_id, session.project_id)
    except admin.NotFound:
        audit(request, session.key, "key.revoke", "not_found", object_type="key", object_id=key_id)
        return _settings_page(request, session, status=404, errors=["There is no such key."])
    state(request).forget_keys()
    key_cache(request).forget()
    audit(
        request,
        session.key,
        "key.revoke",
        object_type="key",
        object_id=str(key_id),
        details={"via": "ui"},
    )
    return RedirectResponse("/settings?notice=revoked#keys", status_code=303)


def _decimal(raw: str, label: str, errors: list[str], required: bool) -> Decimal | None:
    text = raw.strip()
    if not text:
        if required:
            errors.append(f"{label} is required.")
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        errors.append(f"{label} must be a number (USD per million tokens).")
        return None
    if not value.is_finite() or not 0 <= value <= 1_000_000:
        errors.append(f"{label} must be between 0 and 1,000,000.")
        return None
    return value


@router.post("/settings/prices")
def set_price(
    request: Request,
    csrf_token: Text = "",
    provider: Annotated[str, Form(max_length=64)] = "",
    model: Annotated[str, Form(max_length=256)] = "",
    input_usd_per_mtok: Text = "",
    output_usd_per_mtok: Text = "",
    cache_read_usd_per_mtok: Text = "",
    cache_write_usd_per_mtok: Text = "",
) -> Response:
    session = admin_session(request)
    check_csrf(request, csrf_token, session)
    errors: list[str] = []
    if not model.strip():
        errors.append("Model is required.")
    values = [
        _decimal(input_usd_per_mtok, "Input price", errors, True),
        _decimal(output_usd_per_mtok, "Output price", errors, True),
        _decimal(cache_read_usd_per_mtok, "Cache read price", errors, False),
        _decimal(cache_write_usd_per_mtok, "Cache write price", errors, False),
    ]
    if errors:
        form = {
            "provider": provider,
            "model": model,
            "input": input_usd_per_mtok,
            "output": output_usd_per_mtok,
            "cache_read": cache_read_usd_per_mtok,
            "cache_write": cache_write_usd_per_mtok,
        }
        return _settings_page(request, session, status=422, errors=errors, form=form)
    with state(request).db.write() as conn:
        price = admin.set_price(
            conn,
            session.project_id,
            provider.strip().lower(),
            model.strip(),
            values[0] or Decimal(0),
            values[1] or Decimal(0),
            values[2],
            values[3],
        )
    state(request).forget_prices(session.project_id)
    audit(
        request,
        session.key,
        "price.set",
        object_type="price",
        object_id=str(price.price_id),
        details={"provider": price.provider, "model": price.model, "via": "ui"},
    )
    return RedirectResponse("/settings?notice=price-saved#prices", status_code=303)


@router.post("/settings/prices/{price_id}/delete")
def delete_price(request: Request, price_id: int, csrf_token: Text = "") -> Response:
    session = admin_session(request)
    check_csrf(request, csrf_token, session)
    try:
        with state(request).db.write() as conn:
            admin.delete_price(conn, session.project_id, price_id)
    except admin.NotFound:
        return _settings_page(request, session, status=404, errors=["There is no such price."])
    state(request).forget_prices(session.project_id)
    audit(
        request,
        session.key,
        "price.delete",
        object_type="price",
        object_id=str(price_id),
        details={"via": "ui"},
    )
    return RedirectResponse("/settings?notice=price-deleted#prices", status_code=303)


@router.post("/settings/projects")
def create_project(
    request: Request, csrf_token: Text = "", name: Annotated[str, Form(max_length=200)] = ""
) -> Response:
    session = admin_session(request)
    check_csrf(request, csrf_token, session)
    name = name.strip()
    if not PROJECT_NAME.match(name):
        return _settings_page(
            request,
            session,
            status=422,
            errors=["A project name is 1 to 128 letters, digits, '.', '_' or '-'."],
        )
    try:
        with state(request).db.write() as conn:
            project = admin.create_project(conn, name)
            _, secret = admin.create_key(conn, project.project_id, Role.ADMIN, name="initial admin")
    except admin.Conflict:
        audit(
            request,
            session.key,
            "project.create",
            "conflict",
            object_type="project",
            object_id=name,
        )
        return _settings_page(
            request, session, status=409, errors=[f"A project named {name} already exists."]
        )
    audit(
        request,
        session.key,
        "project.create",
        object_type="project",
        object_id=str(project.project_id),
        details={"name": project.name, "via": "ui"},
    )
    return _settings_page(
        request, session, status=201, new_project={"project": project, "secret": secret}
    )
