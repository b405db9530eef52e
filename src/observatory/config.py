"""The one typed registry of settings.

Every setting has an environment variable ``OBSERVATORY_<NAME>``, a default and a docstring, and
is listed in docs/configuration.md (a test keeps the two in step). Secret-bearing settings can also
be read from a file named by ``OBSERVATORY_<NAME>_FILE`` (Docker secrets). Precedence, highest
first: an explicit override (CLI flag) → the environment → the ``_FILE`` variable → the default.
Bad values fail at start-up with a message that names the variable.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


def _parse_int(raw: str) -> int:
    return int(raw.strip().replace("_", ""))


def _parse_float(raw: str) -> float:
    return float(raw.strip())


def _parse_str(raw: str) -> str:
    return raw.strip()


def _parse_optional_str(raw: str) -> str | None:
    value = raw.strip()
    return value or None


@dataclass(frozen=True)
class Setting:
    """One entry of the registry."""

    name: str
    default: Any
    parse: Callable[[str], Any]
    doc: str
    secret: bool = False
    choices: tuple[str, ...] = ()
    minimum: float | None = None

    @property
    def env(self) -> str:
        return f"OBSERVATORY_{self.name.upper()}"


REGISTRY: tuple[Setting, ...] = (
    Setting(
        "data_dir",
        "./data",
        _parse_str,
        "Directory for the embedded database, the generated secret key and the initial admin key.",
    ),
    Setting(
        "database_url",
        None,
        _parse_optional_str,
        "Database URL. Default: "
        "`sqlite:///<data dir>/observatory.db`. PostgreSQL: `postgresql://user:pass@host:5432/db`.",
        secret=True,
    ),
    Setting(
        "database_read_url",
        None,
        _parse_optional_str,
        "Optional read-replica URL; query "
        "traffic goes there and falls back to the primary while it is unreachable.",
        secret=True,
    ),
    Setting(
        "redis_url",
        None,
        _parse_optional_str,
        "Optional Redis URL for the shared cache and "
        "rate limits (`redis://:pass@host:6379/0`, or "
        "`redis+sentinel://:pass@h1:26379,h2:26379/mymaster/0` for Sentinel).",
        secret=True,
    ),
    Setting("host", "127.0.0.1", _parse_str, "Address `observatory serve` binds to."),
    Setting(
        "port",
        8000,
        _parse_int,
        "Port for the HTTP API, the OTLP/HTTP endpoint and the UI.",
        minimum=1,
    ),
    Setting("workers", 1, _parse_int, "Number of server processes.", minimum=1),
    Setting(
        "role",
        "api",
        _parse_str,
        "`api` serves everything; `collector` serves only OTLP ingest, health and metrics.",
        choices=("api", "collector"),
    ),
    Setting("auto_migrate", True, _parse_bool, "Apply database migrations when the server starts."),
    Setting(
        "log_level", "info", _parse_str, "Log level.", choices=("debug", "info", "warning", "error")
    ),
    Setting(
        "log_format",
        "auto",
        _parse_str,
        "`json` lines, human `text`, or `auto` (JSON when stderr is not a terminal).",
        choices=("auto", "json", "text"),
    ),
    Setting(
        "max_body_bytes",
        20 * 1024 * 1024,
        _parse_int,
        "Largest OTLP request body accepted, measured after decompression; larger bodies get 413.",
        minimum=1024,
    ),
    Setting(
        "writer_queue_max_spans",
        200_000,
        _parse_int,
        "Spans that may wait for the writer; beyond this, ingest answers 503 with Retry-After.",
        minimum=1,
    ),
    Setting(
        "writer_batch_max_spans",
        20_000,
        _parse_int,
        "Most spans committed in one transaction by the group-commit writer.",
        minimum=1,
    ),
    Setting(
        "ingest_processes",
        -1,
        _parse_int,
        "Worker processes that decode, normalise, price and redact OTLP trace exports, so "
        "ingest uses every core; -1 picks one per CPU the process may use (its CPU affinity and "
        "cgroup quota, at most 8), 0 decodes in threads of "
        "the server process itself.",
        minimum=-1,
    ),
    Setting(
        "writer_max_wait_ms",
        5.0,
        _parse_float,
        "How long the writer waits for more requests to share a transaction once one is queued.",
        minimum=0,
    ),
    Setting(
        "retry_after_seconds", 2, _parse_int, "Value of Retry-After on 429/503 answers.", minimum=1
    ),
    Setting(
        "request_timeout_seconds",
        30.0,
        _parse_float,
        "How long an ingest request may wait for its commit before it is answered 503.",
        minimum=0.1,
    ),
    Setting(
        "db_pool_size", 10, _parse_int, "Connections per process in the query pool.", minimum=1
    ),
    Setting(
        "partition_days_ahead",
        7,
        _parse_int,
        "PostgreSQL: daily span partitions created ahead of today.",
        minimum=1,
    ),
    Setting(
        "secret_key",
        None,
        _parse_optional_str,
        "Key for signing UI sessions and CSRF tokens "
        "and for keyed hashing; generated into `<data dir>/secret-key` when unset.",
        secret=True,
    ),
    Setting(
        "initial_admin_key",
        None,
        _parse_optional_str,
        "Admin key for project `default` "
        "created on first start against an empty database (generated when unset).",
        secret=True,
    ),
    Setting(
        "trusted_proxies",
        "",
        _parse_str,
        "Comma-separated proxy addresses or CIDRs whose "
        "X-Forwarded-For header is believed for client addresses.",
    ),
    Setting(
        "cache_ttl_seconds",
        10.0,
        _parse_float,
        "Lifetime of cached dashboard query results.",
        minimum=0,
    ),
    Setting(
        "grpc_enabled",
        True,
        _parse_bool,
        "Serve OTLP/gRPC (traces, logs, metrics) beside the HTTP server, in both roles.",
    ),
    Setting(
        "grpc_port",
        4317,
        _parse_int,
        "Port of the OTLP/gRPC receiver (bound on the same host as the HTTP server).",
        minimum=1,
    ),
    Setting(
        "grpc_tls_cert_file",
        None,
        _parse_optional_str,
        "PEM certificate chain for OTLP/gRPC over TLS (with `OBSERVATORY_GRPC_TLS_KEY_FILE`); "
        "plaintext gRPC when unset.",
    ),
    Setting(
        "grpc_tls_key_file",
        None,
        _parse_optional_str,
        "PEM private key for OTLP/gRPC over TLS (with `OBSERVATORY_GRPC_TLS_CERT_FILE`).",
    ),
    Setting(
        "max_attribute_length",
        131_072,
        _parse_int,
        "Longest string attribute value stored; longer values are truncated and their keys "
        "listed in the span attribute `observatory.truncated_attributes`.",
        minimum=256,
    ),
    Setting(
        "max_attributes_per_span",
        1024,
        _parse_int,
        "Attributes kept per span; the rest are dropped and counted in "
        "`observatory.dropped_attributes_count`.",
        minimum=16,
    ),
    Setting(
        "max_events_per_span", 1024, _parse_int, "Events kept per span (the first ones).", minimum=1
    ),
    Setting(
        "max_links_per_span", 128, _parse_int, "Links kept per span (the first ones).", minimum=1
    ),
    Setting(
        "max_spans_per_request",
        100_000,
        _parse_int,
        "Spans one export request may carry; a larger request is refused with 413.",
        minimum=1,
    ),
    Setting(
        "body_read_timeout_seconds",
        30.0,
        _parse_float,
        "Time a client has to send a request body; slower clients get 408.",
        minimum=0.1,
    ),
    Setting(
        "max_inflight_ingest",
        64,
        _parse_int,
        "OTLP requests processed at once per process; more are answered 503 with Retry-After "
        "at once, keeping the server responsive to health checks and queries.",
        minimum=1,
    ),
    Setting(
        "rate_limit_key_requests_per_minute",
        6000,
        _parse_int,
        "Requests per minute each API key may make (API and OTLP); 0 disables. Shared by all "
        "servers through Redis when it is configured.",
        minimum=0,
    ),
    Setting(
        "rate_limit_project_spans_per_second",
        0,
        _parse_int,
        "Spans per second each project may ingest; 0 disables. Per-project overrides in the "
        "project settings (`PUT /api/v1/admin/settings/rate-limits`).",
        minimum=0,
    ),
    Setting(
        "retention_spans_days",
        365,
        _parse_int,
        "Days spans (and their trace summaries) are kept; a project's settings may override it.",
        minimum=1,
    ),
    Setting(
        "retention_rollups_days",
        730,
        _parse_int,
        "Days the per-minute rollups (dashboards, analytics) are kept; overridable per project.",
        minimum=1,
    ),
    Setting(
        "retention_audit_days",
        365,
        _parse_int,
        "Days audit-log entries are kept; at least 365 (one year), overridable per project.",
        minimum=365,
    ),
    Setting(
        "retention_logs_days",
        90,
        _parse_int,
        "Days OTLP log records are kept by the retention job; overridable per project.",
        minimum=1,
    ),
    Setting(
        "retention_interval_seconds",
        3600,
        _parse_int,
        "How often the retention job runs in the server (one server of a cluster); 0 disables it.",
        minimum=0,
    ),
    Setting(
        "cube_interval_seconds",
        60,
        _parse_int,
        "How often the server builds the pre-merged hourly latency histograms (the rollup cube) "
        "of hours whose rollups changed (one server of a cluster); 0 disables it, and dashboards "
        "then read the per-dimension rollups.",
        minimum=0,
    ),
    Setting(
        "alert_interval_seconds",
        60,
        _parse_int,
        "How often in-app alert rules are evaluated (by one server of a cluster); 0 disables "
        "evaluation.",
        minimum=0,
    ),
    Setting(
        "alert_renotify_seconds",
        0,
        _parse_int,
        "Send a reminder this often while an alert rule keeps firing; 0 notifies only when a rule "
        "starts firing and when it resolves.",
        minimum=0,
    ),
    Setting(
        "alert_base_url",
        None,
        _parse_optional_str,
        "The web UI's address as people reach it (`https://observatory.example.com`), for links "
        "in alert notifications; `http://<host>:<port>` when unset.",
    ),
    Setting(
        "alert_timeout_seconds",
        10.0,
        _parse_float,
        "Time limit of one alert notification (a webhook request or an SMTP session).",
        minimum=0.1,
    ),
    Setting(
        "alert_webhook_block_private",
        False,
        _parse_bool,
        "Refuse alert webhooks to loopback, private, link-local and reserved addresses "
        "(server-side request forgery protection; see docs/ALERTS.md).",
    ),
    Setting(
        "smtp_host",
        None,
        _parse_optional_str,
        "SMTP server for alert e-mail; e-mail channels report `not_configured` when unset.",
    ),
    Setting("smtp_port", 587, _parse_int, "SMTP port; 465 means implicit TLS (SMTPS).", minimum=1),
    Setting("smtp_username", None, _parse_optional_str, "SMTP login user (no login when unset)."),
    Setting("smtp_password", None, _parse_optional_str, "SMTP login password.", secret=True),
    Setting(
        "smtp_from",
        "observatory@localhost",
        _parse_str,
        "Sender address of alert e-mail.",
    ),
    Setting(
        "smtp_starttls",
        True,
        _parse_bool,
        "Upgrade SMTP connections with STARTTLS (certificate verified) before logging in.",
    ),
)

_BY_NAME = {s.name: s for s in REGISTRY}


@dataclass(frozen=True)
class Settings:
    """Resolved settings; built by :func:`load_settings`, passed to ``create_app``."""

    data_dir: Path = Path("./data")
    database_url: str = ""
    database_read_url: str | None = None
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    role: str = "api"
    auto_migrate: bool = True
    log_level: str = "info"
    log_format: str = "auto"
    max_body_bytes: int = 20 * 1024 * 1024
    writer_queue_max_spans: int = 200_000
    writer_batch_max_spans: int = 20_000
    ingest_processes: int = -1
    writer_max_wait_ms: float = 5.0
    retry_after_seconds: int = 2
    request_timeout_seconds: float = 30.0
    db_pool_size: int = 10
    partition_days_ahead: int = 7
    secret_key: str | None = field(default=None, repr=False)
    initial_admin_key: str | None = field(default=None, repr=False)
    trusted_proxies: str = ""
    cache_ttl_seconds: float = 10.0
    grpc_enabled: bool = True
    grpc_port: int = 4317
    grpc_tls_cert_file: str | None = None
    grpc_tls_key_file: str | None = None
    max_attribute_length: int = 131_072
    max_attributes_per_span: int = 1024
    max_events_per_span: int = 1024
    max_links_per_span: int = 128
    max_spans_per_request: int = 100_000
    body_read_timeout_seconds: float = 30.0
    max_inflight_ingest: int = 64
    rate_limit_key_requests_per_minute: int = 6000
    rate_limit_project_spans_per_second: int = 0
    retention_spans_days: int = 365
    retention_rollups_days: int = 730
    retention_audit_days: int = 365
    retention_logs_days: int = 90
    retention_interval_seconds: int = 3600
    cube_interval_seconds: int = 60
    alert_interval_seconds: int = 60
    alert_renotify_seconds: int = 0
    alert_base_url: str | None = None
    alert_timeout_seconds: float = 10.0
    alert_webhook_block_private: bool = False
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_from: str = "observatory@localhost"
    smtp_starttls: bool = True

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        nets = []
        for item in self.trusted_proxies.split(","):
            if item.strip():
                nets.append(ipaddress.ip_network(item.strip(), strict=False))
        return tuple(nets)


def _raw_value(setting: Setting, env: Mapping[str, str]) -> str | None:
    if setting.env in env:
        return env[setting.env]
    file_var = setting.env + "_FILE"
    if setting.secret and file_var in env:
        path = Path(env[file_var])
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{file_var}: cannot read {path}: {exc.strerror}") from exc
    return None


def _check(setting: Setting, value: Any) -> None:
    if setting.choices and value not in setting.choices:
        raise ConfigError(f"{setting.env}: {value!r} is not one of {', '.join(setting.choices)}")
    if setting.minimum is not None and value is not None and value < setting.minimum:
        raise ConfigError(f"{setting.env}: {value!r} is below the minimum {setting.minimum}")


def load_settings(
    overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Resolve every setting: overrides → environment → ``_FILE`` → default."""
    env = os.environ if env is None else env
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(overrides) - set(_BY_NAME)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for setting in REGISTRY:
        if setting.name in overrides:
            value = overrides[setting.name]
        else:
            raw = _raw_value(setting, env)
            if raw is None:
                value = setting.default
            else:
                try:
                    value = setting.parse(raw)
                except ValueError as exc:
                    raise ConfigError(f"{setting.env}: {exc}") from exc
        _check(setting, value)
        values[setting.name] = value
    data_dir = Path(values["data_dir"]).expanduser()
    values["data_dir"] = data_dir
    if not values["database_url"]:
        values["database_url"] = f"sqlite:///{(data_dir / 'observatory.db').as_posix()}"
    try:
        Settings(**values).trusted_proxy_networks  # noqa: B018 - validates the CIDRs
    except ValueError as exc:
        raise ConfigError(f"OBSERVATORY_TRUSTED_PROXIES: {exc}") from exc
    if bool(values["grpc_tls_cert_file"]) != bool(values["grpc_tls_key_file"]):
        raise ConfigError(
            "OBSERVATORY_GRPC_TLS_CERT_FILE and OBSERVATORY_GRPC_TLS_KEY_FILE must be set together"
        )
    from observatory.store.engine import DatabaseUrlError, parse_database_url

    for name in ("database_url", "database_read_url"):
        if values[name]:
            try:
                parse_database_url(values[name])
            except DatabaseUrlError as exc:
                raise ConfigError(f"{_BY_NAME[name].env}: {exc}") from exc
    return Settings(**values)


def setting_names() -> list[str]:
    """Every environment variable the registry knows, for docs and tests."""
    return [s.env for s in REGISTRY]
