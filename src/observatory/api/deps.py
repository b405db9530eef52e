"""Shared request plumbing: the application state, authentication, client addresses."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

from observatory import metrics
from observatory.cache import QueryCache
from observatory.cache.ratelimit import Decision, RateLimiter
from observatory.config import Settings
from observatory.ingest.limits import Limits
from observatory.ingest.pipeline import Policy
from observatory.ingest.redact import RedactionConfigError, build_redactor
from observatory.ingest.sampling import SamplingConfigError, build_policy
from observatory.ingest.workers import PreparePool
from observatory.ingest.writer import GroupCommitWriter, is_connectivity_error
from observatory.model import ApiKey, ModelPrice, Role
from observatory.store import admin
from observatory.store.engine import Database

log = logging.getLogger(__name__)
KEY_CACHE_SECONDS = 5.0
CONFIG_CACHE_SECONDS = 10.0
TOUCH_EVERY_SECONDS = 60.0


@dataclass
class AppState:
    """Everything a request handler needs; built by ``create_app``."""

    settings: Settings
    db: Database
    writer: GroupCommitWriter
    cache: QueryCache
    preparer: PreparePool
    started_at: float = field(default_factory=time.time)
    _keys: dict[str, tuple[float, ApiKey]] = field(default_factory=dict)
    limiter: RateLimiter | None = None
    secret_key: str = ""
    inflight_ingest: int = 0
    _configs: dict[int, tuple[float, ProjectConfig]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cached_key(self, secret: str) -> ApiKey | None:
        cached = self._keys.get(admin.hash_key(secret))
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        return None

    def lookup_key(self, secret: str) -> ApiKey | None:
        """Authenticate a secret (cached briefly so ingest does not query per request)."""
        digest = admin.hash_key(secret)
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        with self.db.engine.connect() as conn:
            key = admin.authenticate(conn, secret)
        if key is not None:
            self._touch(key)
            with self._lock:
                if len(self._keys) > 10_000:
                    self._keys.clear()
                self._keys[digest] = (now + KEY_CACHE_SECONDS, key)
        return key

    def _touch(self, key: ApiKey) -> None:
        """Record when a key was last used, at most once a minute per key."""
        last = key.last_used_at
        if last is not None and (admin.now() - last).total_seconds() < TOUCH_EVERY_SECONDS:
            return
        try:
            with self.db.write() as conn:
                admin.touch_key(conn, key.key_id)
        except Exception:  # bookkeeping must never fail a request
            log.debug("could not record the key's last use", exc_info=True)

    def forget_keys(self) -> None:
        with self._lock:
            self._keys.clear()

    def cached_config(self, project_id: int) -> ProjectConfig | None:
        cached = self._configs.get(project_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        return None

    def project_config(self, project_id: int) -> ProjectConfig:
        """The project's ingest policy (prices, redaction, sampling) and rate limits, cached."""
        cached = self.cached_config(project_id)
        if cached is not None:
            return cached
        with self.db.engine.connect() as conn:
            project = admin.get_project(conn, project_id=project_id)
            prices = admin.list_prices(conn, project_id)
        config = build_project_config(self.settings, project.settings, prices, self.secret_key)
        self._configs[project_id] = (time.monotonic() + CONFIG_CACHE_SECONDS, config)
        return config

    def forget_config(self, project_id: int) -> None:
        self._configs.pop(project_id, None)

    # Prices are part of the project configuration.
    forget_prices = forget_config


@dataclass(frozen=True)
class ProjectConfig:
    policy: Policy
    spans_per_second: int  # 0: no limit
    key_requests_per_minute: int  # 0: no limit


def build_project_config(
    settings: Settings, project_settings: dict[str, Any], prices: list[ModelPrice], secret_key: str
) -> ProjectConfig:
    """Combine the global settings with a project's own (settings JSON and prices)."""
    limits = Limits(
        max_attribute_length=settings.max_attribute_length,
        max_attributes_per_span=settings.max_attributes_per_span,
        max_events_per_span=settings.max_events_per_span,
        max_links_per_span=settings.max_links_per_span,
    )
    try:
        redactor = build_redactor(project_settings.get("redaction"), secret_key.encode())
        sampling = build_policy(project_settings.get("sampling"))
    except (RedactionConfigError, SamplingConfigError):
        # Settings are validated when saved; a bad stored value falls back to the defaults.
        log.warning("project settings are invalid; using the defaults", exc_info=True)
        redactor = build_redactor(None, secret_key.encode())
        sampling = build_policy(None)
    limits_cfg = project_settings.get("rate_limits") or {}
    return ProjectConfig(
        policy=Policy(
            limits=limits,
            max_spans=settings.max_spans_per_request,
            prices=tuple(prices),
            redactor=redactor,
            sampling=sampling if sampling.samples else None,
        ),
        spans_per_second=int(
            limits_cfg.get("spans_per_second", settings.rate_limit_project_spans_per_second)
        ),
        key_requests_per_minute=int(
            limits_cfg.get("key_requests_per_minute", settings.rate_limit_key_requests_per_minute)
        ),
    )


def state(request: Request) -> AppState:
    return request.app.state.obs  # type: ignore[no-any-return]


def client_address(request: Request) -> str:
    """The client's address; X-Forwarded-For is believed only from trusted proxies."""
    peer = request.client.host if request.client else ""
    settings: Settings = state(request).settings
    networks = settings.trusted_proxy_networks
    if not networks or not peer:
        return peer
    try:
        peer_ip = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if not any(peer_ip in net for net in networks):
        return peer
    forwarded = request.headers.get("x-forwarded-for", "")
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    # Walk from the nearest hop back; the first untrusted address is the client.
    for hop in reversed(hops):
        try:
            hop_ip = ipaddress.ip_address(hop)
        except ValueError:
            return hop[:64]
        if not any(hop_ip in net for net in networks):
            return hop
    return hops[0] if hops else peer


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = request.headers.get("x-api-key")
    if api_key:
        return api_key.strip()
    return None


def record_refusal(
    st: AppState, reason: str, key: ApiKey | None, route: str, remote_addr: str
) -> None:
    """Audit a refused authentication (HTTP or gRPC); failing to record it only logs a warning."""
    try:
        with st.db.write() as conn:
            admin.record_audit(
                conn,
                action="auth.refused",
                outcome=reason,
                project_id=key.project_id if key else None,
                key_id=key.key_id if key else None,
                actor=key.key_prefix if key else "",
                object_type="route",
                object_id=route,
                remote_addr=remote_addr,
            )
    except Exception:
        log.warning("could not record a refused authentication in the audit log", exc_info=True)


def _audit_refusal(st: AppState, request: Request, reason: str, key: ApiKey | None = None) -> None:
    route = f"{request.method} {request.url.path}"
    record_refusal(st, reason, key, route, client_address(request))


async def authenticate(request: Request, needed: Role) -> ApiKey:
    """The request's key, or 401 (no/invalid key) / 403 (key lacks the role)."""
    st = state(request)
    cached = getattr(request.state, "api_key", None)
    if isinstance(cached, ApiKey):
        key: ApiKey | None = cached
    else:
        secret = presented_key(request)
        if secret is None:
            secret = getattr(request.state, "session_key", None)
        if not secret:
            await run_in_threadpool(_audit_refusal, st, request, "missing_key")
            raise HTTPException(
                401,
                "missing API key: send Authorization: Bearer <key> or x-api-key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            key = st.cached_key(secret) or await run_in_threadpool(st.lookup_key, secret)
            reason = "valid" if key is not None else await run_in_threadpool(_key_state, st, secret)
        except Exception as exc:
            mapped = database_unavailable(st, exc)
            if mapped is exc:
                raise
            raise mapped from exc
        if key is None:
            await run_in_threadpool(_audit_refusal, st, request, f"{reason}_key")
            raise HTTPException(
                401,
                f"API key is {reason}" if reason != "unknown" else "API key is not valid",
                headers={"WWW-Authenticate": "Bearer"},
            )
        request.state.api_key = key
    assert key is not None
    await _check_key_rate(st, request, key)
    if not key.role.allows(needed):
        await run_in_threadpool(_audit_refusal, st, request, "forbidden", key)
        raise HTTPException(403, f"this key has role {key.role.value}; {needed.value} is needed")
    return key


async def config_for(st: AppState, project_id: int) -> ProjectConfig:
    cached = st.cached_config(project_id)
    if cached is not None:
        return cached
    try:
        return await run_in_threadpool(st.project_config, project_id)
    except Exception as exc:
        mapped = database_unavailable(st, exc)
        if mapped is exc:
            raise
        raise mapped from exc


def database_unavailable(st: AppState, exc: BaseException) -> BaseException:
    """Map "the database is not there" to 503 + Retry-After; other errors stay as they are."""
    if not is_connectivity_error(exc):
        return exc
    metrics.db_up.set(0)
    log.warning("database unavailable: %s", exc.__class__.__name__)
    return HTTPException(
        503,
        "the database is unavailable; retry later",
        headers={"Retry-After": str(st.settings.retry_after_seconds)},
    )


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """The IETF RateLimit header fields (and the widespread X-RateLimit-* forms)."""
    headers = {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(decision.reset_seconds),
        "X-RateLimit-Limit": str(decision.limit),
        "X-RateLimit-Remaining": str(decision.remaining),
    }
    if not decision.allowed:
        headers["Retry-After"] = str(decision.retry_after_seconds)
    return headers


async def _check_key_rate(st: AppState, request: Request, key: ApiKey) -> None:
    """Per-key request budget, shared by every server through Redis (429 when spent)."""
    if st.limiter is None or getattr(request.state, "rate_checked", False):
        return
    request.state.rate_checked = True
    config = await config_for(st, key.project_id)
    per_minute = config.key_requests_per_minute
    if per_minute <= 0:
        return
    decision = await run_in_threadpool(
        st.limiter.check, f"key:{key.key_id}", per_minute / 60.0, per_minute
    )
    request.state.rate_limit = decision
    if not decision.allowed:
        raise HTTPException(
            429,
            f"rate limit of {per_minute} requests per minute for this key exceeded",
            headers=rate_limit_headers(decision),
        )


def _key_state(st: AppState, secret: str) -> str:
    with st.db.write() as conn:
        return admin.key_state(conn, secret)


class Require:
    """FastAPI dependency: ``key: ApiKey = Depends(Require(Role.READ))``."""

    def __init__(self, role: Role) -> None:
        self.role = role

    async def __call__(self, request: Request) -> ApiKey:
        return await authenticate(request, self.role)


def audit(
    request: Request, key: ApiKey | None, action: str, outcome: str = "ok", **fields: Any
) -> None:
    """Record an admin action (synchronously; call from a worker thread)."""
    st = state(request)
    with st.db.write() as conn:
        admin.record_audit(
            conn,
            action=action,
            outcome=outcome,
            project_id=key.project_id if key else None,
            key_id=key.key_id if key else None,
            actor=key.key_prefix if key else "",
            remote_addr=client_address(request),
            **fields,
        )
