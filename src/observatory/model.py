"""Pure data types shared by ingest, store and the API. No framework imports."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

# OTLP status codes (opentelemetry/proto/trace/v1/trace.proto, Status.StatusCode).
STATUS_UNSET = 0
STATUS_OK = 1
STATUS_ERROR = 2


class Role(StrEnum):
    """What an API key may do. Each role includes the ones before it."""

    INGEST = "ingest"
    READ = "read"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        order = (Role.INGEST, Role.READ, Role.ADMIN)
        if needed is Role.INGEST:
            # Ingest is allowed for ingest and admin keys; a read key only reads.
            return self in (Role.INGEST, Role.ADMIN)
        return order.index(self) >= order.index(needed)


@dataclass(slots=True)
class LlmUsage:
    """Token counts of one model call; None where the instrumentation did not say."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    total_tokens: int | None = None


@dataclass(slots=True, frozen=True)
class Cost:
    """Cost of one model call in USD, exact decimals."""

    input_usd: Decimal
    output_usd: Decimal
    total_usd: Decimal


@dataclass(slots=True)
class Span:
    """One OTLP span plus the canonical LLM fields derived from its attributes."""

    trace_id: str  # 32 lowercase hex characters
    span_id: str  # 16 lowercase hex characters
    parent_span_id: str | None
    name: str
    kind: int
    start_time_unix_nano: int
    end_time_unix_nano: int
    status_code: int = STATUS_UNSET
    status_message: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    resource_attributes: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    scope_name: str | None = None
    scope_version: str | None = None
    # Canonical fields (filled by ingest.normalize).
    service_name: str | None = None
    environment: str | None = None
    provider: str | None = None
    operation: str | None = None
    request_model: str | None = None
    response_model: str | None = None
    usage: LlmUsage = field(default_factory=LlmUsage)
    cost: Cost | None = None
    time_to_first_token_ms: float | None = None
    finish_reason: str | None = None
    session_id: str | None = None
    user_id: str | None = None
    prompt: list[dict[str, Any]] | None = None
    completion: list[dict[str, Any]] | None = None

    @property
    def duration_ms(self) -> float:
        return max(0, self.end_time_unix_nano - self.start_time_unix_nano) / 1e6

    @property
    def is_error(self) -> bool:
        return self.status_code == STATUS_ERROR

    @property
    def model(self) -> str | None:
        """The model that answered, else the one asked for."""
        return self.response_model or self.request_model

    @property
    def is_llm(self) -> bool:
        return self.model is not None


@dataclass(slots=True, frozen=True)
class Project:
    project_id: int
    name: str
    created_at: datetime
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class ApiKey:
    key_id: int
    project_id: int
    project_name: str
    name: str
    role: Role
    key_prefix: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


@dataclass(slots=True, frozen=True)
class ModelPrice:
    """A project's own price for a model, in USD per million tokens."""

    price_id: int
    project_id: int
    provider: str
    model: str
    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    cache_read_usd_per_mtok: Decimal | None = None
    cache_write_usd_per_mtok: Decimal | None = None
