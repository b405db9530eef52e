"""What an alert rule is: its validated definition and its JSON form (API, CLI, UI)."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from observatory.alerting import COMPARISONS, METRICS
from observatory.store.alerts import AlertRule

METRIC_DOCS = {
    "cost_usd": "cost of LLM calls in the window, USD (exact decimal)",
    "error_rate": "share of LLM calls that failed, 0 to 1",
    "latency_p50_ms": "median LLM call duration, ms",
    "latency_p90_ms": "90th percentile LLM call duration, ms",
    "latency_p95_ms": "95th percentile LLM call duration, ms",
    "latency_p99_ms": "99th percentile LLM call duration, ms",
    "tokens": "input + output tokens of LLM calls in the window",
    "requests": "number of LLM calls in the window",
}
FILTER_NAMES = ("model", "provider", "service", "environment", "operation")
CHANNEL_TYPES = ("webhook", "slack", "email")
MAX_WINDOW_SECONDS = 31 * 86400
MAX_RULES_PER_PROJECT = 200
MAX_CHANNELS = 10
MAX_RECIPIENTS = 20
MAX_THRESHOLD = Decimal(10) ** 15

Metric = Literal[
    "cost_usd",
    "error_rate",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "tokens",
    "requests",
]
Comparison = Literal[">", ">=", "<", "<="]
assert get_args(Metric) == METRICS and get_args(Comparison) == COMPARISONS

# A deliberately plain address check (no display names, no quoted local parts): the address goes
# into an SMTP envelope and a To: header, so nothing that could break a header may pass.
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_url(url: str) -> str:
    """An absolute http(s) URL with a host; nothing else may be a notification target."""
    if _CONTROL.search(url) or " " in url:
        raise ValueError("the URL may not contain spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("only http:// and https:// URLs are allowed")
    if not parts.hostname:
        raise ValueError("the URL needs a host")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError("the URL has an invalid port") from exc
    return url


def check_email(address: str) -> str:
    address = address.strip()
    if len(address) > 254 or not _EMAIL.match(address):
        raise ValueError(f"{address[:60]!r} is not an e-mail address")
    return address


class ChannelIn(BaseModel):
    """A notification target: ``{"type": "webhook"|"slack", "url": …}`` or
    ``{"type": "email", "to": ["a@example.com", …]}``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["webhook", "slack", "email"]
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    to: list[str] | None = Field(default=None, min_length=1, max_length=MAX_RECIPIENTS)

    @field_validator("to", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v for v in (p.strip() for p in value.split(",")) if v]
        return value

    @model_validator(mode="after")
    def _check(self) -> ChannelIn:
        if self.type == "email":
            if self.url is not None or not self.to:
                raise ValueError("an email channel needs 'to' (one or more addresses), no 'url'")
            self.to = [check_email(a) for a in self.to]
        else:
            if self.to is not None or not self.url:
                raise ValueError(f"a {self.type} channel needs 'url', no 'to'")
            check_url(self.url)
        return self

    def as_dict(self) -> dict[str, Any]:
        if self.type == "email":
            return {"type": "email", "to": list(self.to or [])}
        return {"type": self.type, "url": self.url}


class FiltersIn(BaseModel):
    """Only LLM calls with these values count (exact match); absent means any."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, min_length=1, max_length=256)
    provider: str | None = Field(default=None, min_length=1, max_length=256)
    service: str | None = Field(default=None, min_length=1, max_length=256)
    environment: str | None = Field(default=None, min_length=1, max_length=256)
    operation: str | None = Field(default=None, min_length=1, max_length=256)

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class RuleIn(BaseModel):
    """An alert rule as created or replaced through the API, the CLI or the UI."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    metric: Metric
    comparison: Comparison = ">"
    threshold: Decimal = Field(
        ge=0,
        le=MAX_THRESHOLD,
        max_digits=28,
        decimal_places=10,
        description="A decimal number; give it as a string to keep it exact (cost in USD).",
    )
    window_seconds: StrictInt = Field(ge=1, le=MAX_WINDOW_SECONDS)
    filters: FiltersIn = Field(default_factory=FiltersIn)
    channels: list[ChannelIn] = Field(default_factory=list, max_length=MAX_CHANNELS)
    enabled: StrictBool = True

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        value = value.strip()
        if not value or _CONTROL.search(value):
            raise ValueError("the name must be non-empty text without control characters")
        return value

    @model_validator(mode="after")
    def _check(self) -> RuleIn:
        if self.metric == "error_rate" and self.threshold > 1:
            raise ValueError("an error_rate threshold is a share from 0 to 1 (0.05 = 5 %)")
        return self

    def definition(self) -> dict[str, Any]:
        """The columns ``store.alerts`` stores."""
        return {
            "name": self.name,
            "metric": self.metric,
            "comparison": self.comparison,
            "threshold": decimal_text(self.threshold),
            "window_seconds": self.window_seconds,
            "filters": self.filters.as_dict(),
            "channels": [c.as_dict() for c in self.channels],
            "enabled": self.enabled,
        }


def decimal_text(value: Decimal) -> str:
    """A decimal as plain text without exponent or trailing zeros (``1E+3`` → ``1000``)."""
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def redact_url(url: str) -> str:
    """Scheme, host and port only: webhook URLs often carry a token in the path or query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    rest = "/…" if (parts.path not in ("", "/") or parts.query) else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def channel_target(channel: dict[str, Any], reveal: bool = False) -> str:
    """Where a channel sends to, for people: the full URL only when ``reveal``."""
    if channel.get("type") == "email":
        return ", ".join(channel.get("to") or [])
    url = str(channel.get("url") or "")
    return url if reveal else redact_url(url)


def public_channels(channels: list[dict[str, Any]], reveal: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for channel in channels:
        if channel.get("type") == "email":
            out.append({"type": "email", "to": list(channel.get("to") or [])})
        else:
            out.append({"type": channel.get("type"), "url": channel_target(channel, reveal)})
    return out


def rule_json(rule: AlertRule, reveal: bool = False) -> dict[str, Any]:
    """A rule for the API; webhook URLs in full only for admins (``reveal``)."""

    def iso(value: Any) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "rule_id": rule.rule_id,
        "project": rule.project_name,
        "name": rule.name,
        "metric": rule.metric,
        "comparison": rule.comparison,
        "threshold": rule.threshold,
        "window_seconds": rule.window_seconds,
        "filters": rule.filters,
        "channels": public_channels(rule.channels, reveal),
        "enabled": rule.enabled,
        "state": rule.state,
        "last_value": rule.last_value,
        "last_evaluated_at": iso(rule.last_evaluated_at),
        "last_changed_at": iso(rule.last_changed_at),
        "created_at": iso(rule.created_at),
        "updated_at": iso(rule.updated_at),
    }


def audit_details(definition: dict[str, Any]) -> dict[str, Any]:
    """A definition for the audit log, without secrets in webhook URLs."""
    return {
        **{k: v for k, v in definition.items() if k != "channels"},
        "channels": public_channels(definition.get("channels") or [], reveal=False),
    }


def describe(rule: AlertRule) -> str:
    """``cost_usd > 5 over 1h (model=gpt-4o)``."""
    filters = ", ".join(f"{k}={v}" for k, v in sorted(rule.filters.items()))
    window = window_text(rule.window_seconds)
    text = f"{rule.metric} {rule.comparison} {rule.threshold} over {window}"
    return f"{text} ({filters})" if filters else text


def window_text(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_window(text: str) -> int:
    """``300``, ``300s``, ``5m``, ``1h``, ``1d`` → seconds."""
    match = re.fullmatch(r"\s*(\d{1,7})\s*([smhd]?)\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a window; use seconds or 30s, 5m, 1h, 1d")
    number, unit = int(match.group(1)), match.group(2) or "s"
    return number * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
