"""The SDK's settings: an argument to ``init()`` wins, then the environment, then the default."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ENDPOINT = "http://127.0.0.1:8000"
DEFAULT_SERVICE_NAME = "unknown_service"
DEFAULT_EXPORT_TIMEOUT_SECONDS = 10.0
KNOWN_INSTRUMENTATIONS = ("openai", "anthropic")

# Environment variables, all optional (docs/sdk.md lists them).
ENV_ENDPOINT = "OBSERVATORY_ENDPOINT"
ENV_API_KEY = "OBSERVATORY_API_KEY"
ENV_SERVICE_NAME = "OBSERVATORY_SERVICE_NAME"
ENV_ENVIRONMENT = "OBSERVATORY_ENVIRONMENT"
ENV_CAPTURE_CONTENT = "OBSERVATORY_CAPTURE_CONTENT"
ENV_INSTRUMENT = "OBSERVATORY_INSTRUMENT"
ENV_EXPORT_TIMEOUT = "OBSERVATORY_EXPORT_TIMEOUT"
ENV_DISABLED = "OBSERVATORY_SDK_DISABLED"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigurationError(ValueError):
    """An argument or environment variable of ``init()`` has a value the SDK cannot use."""


@dataclass(frozen=True)
class Settings:
    endpoint: str
    api_key: str | None
    service_name: str
    environment: str | None
    capture_content: bool
    instrument: tuple[str, ...]
    export_timeout_seconds: float
    headers: tuple[tuple[str, str], ...] = field(default=())
    enabled: bool = True

    @property
    def traces_url(self) -> str:
        """The OTLP/HTTP traces URL: ``<endpoint>/v1/traces`` unless the endpoint already is one."""
        base = self.endpoint.rstrip("/")
        return base if base.endswith("/v1/traces") else f"{base}/v1/traces"

    def export_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value.strip() if value is not None and value.strip() else None


def _env_secret(name: str) -> str | None:
    """``NAME`` or the content of the file ``NAME_FILE`` names (Docker secrets)."""
    value = _env(name)
    if value is not None:
        return value
    path = _env(f"{name}_FILE")
    if path is None:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        raise ConfigurationError(f"{name}_FILE={path!r} cannot be read: {exc}") from exc


def _bool(name: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigurationError(f"{name} must be true or false, not {raw!r}")


def _instrument(value: bool | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        raw = _env(ENV_INSTRUMENT)
        if raw is None or raw.lower() in ("all", "true"):
            return KNOWN_INSTRUMENTATIONS
        if raw.lower() in ("none", "false", ""):
            return ()
        value = [part.strip() for part in raw.split(",") if part.strip()]
    if value is True:
        return KNOWN_INSTRUMENTATIONS
    if value is False:
        return ()
    names = tuple(dict.fromkeys(str(v).lower() for v in value))
    unknown = [n for n in names if n not in KNOWN_INSTRUMENTATIONS]
    if unknown:
        raise ConfigurationError(
            f"unknown instrumentation {unknown}; known: {', '.join(KNOWN_INSTRUMENTATIONS)}"
        )
    return names


def resolve(
    endpoint: str | None = None,
    api_key: str | None = None,
    service_name: str | None = None,
    environment: str | None = None,
    capture_content: bool | None = None,
    instrument: bool | Iterable[str] | None = None,
    export_timeout_seconds: float | None = None,
    headers: Mapping[str, str] | None = None,
    enabled: bool | None = None,
) -> Settings:
    """Settings from the arguments of ``init()`` and the environment."""
    if enabled is None:
        disabled = _env(ENV_DISABLED)
        enabled = not _bool(ENV_DISABLED, disabled) if disabled is not None else True
    endpoint = endpoint or _env(ENV_ENDPOINT) or DEFAULT_ENDPOINT
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigurationError(f"endpoint must be an http:// or https:// URL, not {endpoint!r}")
    if capture_content is None:
        raw = _env(ENV_CAPTURE_CONTENT)
        capture_content = _bool(ENV_CAPTURE_CONTENT, raw) if raw is not None else True
    if export_timeout_seconds is None:
        raw = _env(ENV_EXPORT_TIMEOUT)
        try:
            export_timeout_seconds = float(raw) if raw else DEFAULT_EXPORT_TIMEOUT_SECONDS
        except ValueError as exc:
            raise ConfigurationError(f"{ENV_EXPORT_TIMEOUT} must be a number of seconds") from exc
    if export_timeout_seconds <= 0:
        raise ConfigurationError("export_timeout_seconds must be positive")
    return Settings(
        endpoint=endpoint,
        api_key=api_key or _env_secret(ENV_API_KEY),
        service_name=(
            service_name
            or _env(ENV_SERVICE_NAME)
            or _env("OTEL_SERVICE_NAME")
            or DEFAULT_SERVICE_NAME
        ),
        environment=environment or _env(ENV_ENVIRONMENT),
        capture_content=bool(capture_content),
        instrument=_instrument(instrument),
        export_timeout_seconds=float(export_timeout_seconds),
        headers=tuple(sorted((headers or {}).items())),
        enabled=bool(enabled),
    )
