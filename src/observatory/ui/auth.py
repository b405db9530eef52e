"""UI sign-in: signed session cookies, CSRF tokens and one-time login links.

The session cookie never holds the API key. It holds ``v1.<key_id>.<issued>.<sid>.<mac>`` where
the MAC is an HMAC-SHA256 (keyed with the server's secret key) over those fields *and the key's
stored hash*: a forged or edited cookie fails, and revoking (or expiring) the key ends every
session made with it. Signing out is recorded in the audit log, which is checked on each request,
so a copied cookie stops working after sign-out too.

A login link (printed by ``observatory serve`` on first start, like Jupyter's token URL) carries
``<key_id>.<expires>.<nonce>.<mac>``; it is good for one sign-in within 24 hours.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from starlette.responses import Response

from observatory.api.deps import audit, state
from observatory.model import ApiKey, Role
from observatory.store import admin, ui_queries

SESSION_COOKIE = "obs_session"
LOGIN_CSRF_COOKIE = "obs_login_csrf"
SESSION_MAX_AGE_S = 7 * 86400
LOGIN_LINK_MAX_AGE_S = 86400
KEY_CACHE_SECONDS = 5.0


class LoginRequired(Exception):
    """No valid UI session; the handler sends the browser to the login page."""


class Forbidden(Exception):
    """Signed in, but the key's role does not allow this page."""


class CsrfFailed(Exception):
    """A state-changing form arrived without a valid CSRF token (or from another origin)."""


@dataclass(frozen=True)
class UiSession:
    key: ApiKey
    sid: str
    issued_s: int
    csrf_token: str

    @property
    def project_id(self) -> int:
        return self.key.project_id

    @property
    def is_admin(self) -> bool:
        return self.key.role is Role.ADMIN


def _mac(secret: str, purpose: str, payload: str, key_hash: str) -> str:
    digest = hmac.new(
        secret.encode(), f"{purpose}\n{payload}\n{key_hash}".encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _secret(request: Request) -> str:
    value = getattr(request.app.state, "secret_key", None)
    if not value:
        raise RuntimeError("the application's secret key is not set (lifespan not run)")
    return str(value)


# --- keys (cached briefly per application) --------------------------------------------------------


class KeyCache:
    def __init__(self) -> None:
        self._items: dict[int, tuple[float, tuple[ApiKey, str] | None]] = {}
        self._lock = threading.Lock()

    def get(self, request: Request, key_id: int) -> tuple[ApiKey, str] | None:
        now = time.monotonic()
        cached = self._items.get(key_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        # The primary, not a replica: a key created or revoked a moment ago must count.
        with state(request).db.engine.connect() as conn:
            found = ui_queries.key_with_hash(conn, key_id)
        with self._lock:
            if len(self._items) > 10_000:
                self._items.clear()
            self._items[key_id] = (now + KEY_CACHE_SECONDS, found)
        return found

    def forget(self) -> None:
        with self._lock:
            self._items.clear()


def key_cache(request: Request) -> KeyCache:
    cache = getattr(request.app.state, "ui_key_cache", None)
    if cache is None:
        cache = request.app.state.ui_key_cache = KeyCache()
    assert isinstance(cache, KeyCache)
    return cache


def key_usable(key: ApiKey) -> str | None:
    """Why a key cannot sign in to the UI, or None when it can."""
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= admin.now():
        return "expired"
    if key.role not in (Role.READ, Role.ADMIN):
        return "ingest_only"
    return None


# --- session cookies ------------------------------------------------------------------------------


def new_session_cookie(secret: str, key_id: int, key_hash: str, now_s: int) -> tuple[str, str]:
    """The cookie value and its session id."""
    sid = secrets.token_urlsafe(12)
    payload = f"{key_id}.{now_s}.{sid}"
    return f"v1.{payload}.{_mac(secret, 'session', payload, key_hash)}", sid


def _parse_cookie(value: str) -> tuple[int, int, str, str] | None:
    parts = value.split(".")
    if len(parts) != 5 or parts[0] != "v1":
        return None
    try:
        key_id, issued = int(parts[1]), int(parts[2])
    except ValueError:
        return None
    if key_id <= 0 or not parts[3] or not parts[4]:
        return None
    return key_id, issued, parts[3], parts[4]


def current_session(request: Request) -> UiSession:
    """The signed-in session of this request (call from a worker thread), or LoginRequired."""
    cached = getattr(request.state, "ui_session", None)
    if isinstance(cached, UiSession):
        return cached
    value = request.cookies.get(SESSION_COOKIE, "")
    parsed = _parse_cookie(value) if 0 < len(value) < 512 else None
    if parsed is None:
        raise LoginRequired
    key_id, issued, sid, mac = parsed
    now_s = int(time.time())
    if not (now_s - SESSION_MAX_AGE_S <= issued <= now_s + 300):
        raise LoginRequired
    found = key_cache(request).get(request, key_id)
    if found is None:
        raise LoginRequired
    key, key_hash = found
    secret = _secret(request)
    expected = _mac(secret, "session", f"{key_id}.{issued}.{sid}", key_hash)
    if not hmac.compare_digest(expected, mac) or key_usable(key) is not None:
        raise LoginRequired
    with state(request).db.engine.connect() as conn:
        if ui_queries.audit_seen(conn, key.project_id, "ui.logout", sid, issued):
            raise LoginRequired
    session = UiSession(key, sid, issued, _mac(secret, "csrf", sid, key_hash))
    request.state.ui_session = session
    return session


def is_secure(request: Request) -> bool:
    """Cookies get the Secure flag when the browser talks TLS (directly or via the proxy)."""
    proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or proto == "https"


def set_session_cookie(request: Request, response: Response, value: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=SESSION_MAX_AGE_S,
        path="/",
        httponly=True,
        samesite="strict",
        secure=is_secure(request),
    )


def clear_session_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=is_secure(request)
    )


def sign_in(request: Request, response: Response, key: ApiKey, key_hash: str, how: str) -> None:
    """Start a session for ``key`` on ``response`` and record it (worker thread)."""
    value, sid = new_session_cookie(_secret(request), key.key_id, key_hash, int(time.time()))
    set_session_cookie(request, response, value)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    audit(request, key, "ui.login", object_type="session", object_id=sid, details={"via": how})


def sign_out(request: Request, session: UiSession) -> None:
    audit(request, session.key, "ui.logout", object_type="session", object_id=session.sid)


# --- CSRF -----------------------------------------------------------------------------------------


def login_csrf(request: Request, response: Response | None = None) -> tuple[str, str]:
    """(cookie value, form token) for the login form, which has no session yet."""
    value = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not (16 <= len(value) <= 64):
        value = secrets.token_urlsafe(18)
    return value, _mac(_secret(request), "login-csrf", value, "")


def set_login_csrf_cookie(request: Request, response: Response, value: str) -> None:
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        value,
        max_age=3600 * 12,
        path="/",
        httponly=True,
        samesite="strict",
        secure=is_secure(request),
    )


def same_origin(request: Request) -> bool:
    """Browsers send Origin on POST; when present it must be this server."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("x-forwarded-host") or request.headers.get("host", "")
    parts = urlsplit(origin)
    return bool(parts.netloc) and parts.netloc.lower() == host.split(",")[0].strip().lower()


def check_csrf(request: Request, token: str, session: UiSession | None) -> None:
    if not same_origin(request):
        raise CsrfFailed
    if session is not None:
        expected = session.csrf_token
    else:
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not cookie:
            raise CsrfFailed
        expected = _mac(_secret(request), "login-csrf", cookie, "")
    if not token or not hmac.compare_digest(expected, token):
        raise CsrfFailed


# --- login links --------------------------------------------------------------------------------


def login_link_token(secret: str, key_id: int, key_hash: str, now_s: int) -> str:
    payload = f"{key_id}.{now_s + LOGIN_LINK_MAX_AGE_S}.{secrets.token_urlsafe(12)}"
    return f"{payload}.{_mac(secret, 'login-link', payload, key_hash)}"


def login_url(settings: Any, key_secret: str, secret: str, base_url: str) -> str | None:
    """The one-time login link for a freshly created key (printed by ``observatory serve``)."""
    from observatory.store.engine import Database

    db = Database(settings.database_url, None, pool_size=1)
    try:
        with db.read() as conn:
            key = admin.authenticate(conn, key_secret)
    finally:
        db.dispose()
    if key is None:
        return None
    token = login_link_token(secret, key.key_id, admin.hash_key(key_secret), int(time.time()))
    return f"{base_url.rstrip('/')}/login?token={token}"


def redeem_login_link(request: Request, token: str) -> tuple[ApiKey, str] | None:
    """Check a login link and mark it used (worker thread). Returns the key and its hash."""
    parts = token.split(".")
    if len(parts) != 4 or len(token) > 256:
        return None
    try:
        key_id, expires = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    nonce = parts[2]
    if expires < int(time.time()) or not nonce:
        return None
    found = key_cache(request).get(request, key_id) if key_id > 0 else None
    if found is None:
        return None
    key, key_hash = found
    expected = _mac(_secret(request), "login-link", ".".join(parts[:3]), key_hash)
    if not hmac.compare_digest(expected, parts[3]) or key_usable(key) is not None:
        return None
    issued = expires - LOGIN_LINK_MAX_AGE_S
    with state(request).db.engine.connect() as conn:
        used = ui_queries.audit_seen(conn, key.project_id, "ui.login_link", nonce, issued)
    if used:
        audit(request, key, "ui.login_link", "already_used", object_type="link", object_id=nonce)
        return None
    audit(request, key, "ui.login_link", object_type="link", object_id=nonce)
    return key, key_hash


def safe_next(value: str | None) -> str:
    """Only local paths are allowed as the post-login destination (no open redirects)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(ord(ch) < 32 for ch in value) or len(value) > 2000:
        return "/"
    return value
