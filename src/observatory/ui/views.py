"""The web UI (server-rendered, Jinja2 + a little vendored JavaScript). Installed on the API role.

``install_ui(app)`` mounts ``/static``, the sign-in routes and the pages. Every page needs a UI
session (see auth.py); without one the browser is sent to ``/login``.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.staticfiles import StaticFiles
from starlette.responses import FileResponse, RedirectResponse, Response

from observatory.api.deps import audit, state
from observatory.store import admin
from observatory.ui import admin_pages, alerts_page, auth, pages
from observatory.ui.auth import CsrfFailed, Forbidden, LoginRequired
from observatory.ui.render import STATIC, Renderer

router = APIRouter(include_in_schema=False)
LOGIN_ERRORS = {
    "invalid": "That key is not valid. Check for a missing character and try again.",
    "revoked": "That key was revoked.",
    "expired": "That key has expired.",
    "ingest_only": "That key can only send traces. Sign in with a read or admin key.",
    "link": "This login link is invalid, has expired or was already used. "
    "Sign in with an API key instead.",
    "csrf": "The sign-in form expired. Please try again.",
}


def _login_page(
    request: Request, *, error: str = "", status: int = 200, next_path: str = "/"
) -> Response:
    cookie, token = auth.login_csrf(request)
    response = pages.renderer(request).render(
        request,
        "login.html",
        {
            "title": "Sign in",
            "error": LOGIN_ERRORS.get(error, ""),
            "login_csrf": token,
            "next_path": next_path,
            "signed_out": request.query_params.get("signed_out") == "1",
        },
        status_code=status,
    )
    auth.set_login_csrf_cookie(request, response, cookie)
    return response


@router.get("/login")
def login_form(request: Request) -> Response:
    next_path = auth.safe_next(request.query_params.get("next"))
    token = request.query_params.get("token")
    if token:
        found = auth.redeem_login_link(request, token[:300])
        if found is None:
            return _login_page(request, error="link", status=400)
        response = RedirectResponse(next_path, status_code=303)
        auth.sign_in(request, response, found[0], found[1], "link")
        return response
    try:
        auth.current_session(request)
    except LoginRequired:
        return _login_page(request, next_path=next_path)
    return RedirectResponse(next_path, status_code=303)


@router.post("/login")
def login(
    request: Request,
    key: Annotated[str, Form(max_length=512)] = "",
    csrf_token: Annotated[str, Form(max_length=128)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    next_path = auth.safe_next(next)
    try:
        auth.check_csrf(request, csrf_token, None)
    except CsrfFailed:
        return _login_page(request, error="csrf", status=403, next_path=next_path)
    secret = key.strip()
    st = state(request)
    found = st.lookup_key(secret) if secret else None
    if found is None:
        reason = "invalid"
        if secret:
            with st.db.read() as conn:
                why = admin.key_state(conn, secret)
            reason = why if why in ("revoked", "expired") else "invalid"
        audit(request, None, "ui.login", f"{reason}_key", object_type="session")
        return _login_page(request, error=reason, status=401, next_path=next_path)
    refusal = auth.key_usable(found)
    if refusal is not None:
        audit(request, found, "ui.login", refusal, object_type="session")
        return _login_page(request, error=refusal, status=403, next_path=next_path)
    response = RedirectResponse(next_path, status_code=303)
    auth.sign_in(request, response, found, admin.hash_key(secret), "key")
    return response


@router.post("/logout")
def logout(request: Request, csrf_token: Annotated[str, Form(max_length=128)] = "") -> Response:
    session = auth.current_session(request)
    auth.check_csrf(request, csrf_token, session)
    auth.sign_out(request, session)
    response = RedirectResponse("/login?signed_out=1", status_code=303)
    auth.clear_session_cookie(request, response)
    return response


@router.get("/favicon.ico")
def favicon() -> Response:
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


def install_ui(app: FastAPI) -> None:
    """Mount the UI on ``app``: static files, sign-in, pages and their error handling."""
    app.state.ui_renderer = Renderer()
    app.state.ui_key_cache = auth.KeyCache()
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(router)
    app.include_router(pages.router)
    app.include_router(admin_pages.router)
    app.include_router(alerts_page.router)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired) -> Response:
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query
        if request.method != "GET" or target.startswith("/traces/rows"):
            target = "/traces" if target.startswith("/traces/rows") else "/"
        location = "/login" if target == "/" else f"/login?next={quote(target, safe='')}"
        if request.headers.get("hx-request") == "true":
            return Response(status_code=401, headers={"HX-Redirect": location})
        return RedirectResponse(location, status_code=303)

    def refused(request: Request, title: str, message: str) -> Response:
        session = getattr(request.state, "ui_session", None)
        return pages.renderer(request).render(
            request,
            "error.html",
            {"session": session, "title": title, "message": message},
            status_code=403,
        )

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        return refused(
            request,
            "Admin only",
            "Settings need an admin key. You are signed in with a read key.",
        )

    @app.exception_handler(CsrfFailed)
    async def csrf_failed(request: Request, exc: CsrfFailed) -> Response:
        return refused(
            request,
            "Form expired",
            "This form was not accepted: it expired or came from another site. "
            "Go back, reload the page and try again.",
        )
