"""Per-project sampling of what is stored, decided per trace.

A project's ``settings["sampling"]``: ``{"rate": 0.1, "keep_errors": true,
"keep_slower_than_ms": 10000, "keep_costlier_than_usd": "0.50"}``.

The decision for a trace comes from its id, so every span of a trace gets the same answer in
every request and on every server (like OpenTelemetry's TraceIdRatioBased sampler, which uses the
low 56 bits of the id). A trace that contains an error, a slow span or an expensive span is kept
whole within the request that carries it. Sampled-out spans still count in the rollups and
metrics, so dashboards stay exact while raw storage is sampled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from observatory.model import Span

_MAX_56 = (1 << 56) - 1


class SamplingConfigError(ValueError):
    """A project's sampling settings are not usable."""


@dataclass(frozen=True)
class SamplingPolicy:
    rate: float = 1.0
    keep_errors: bool = True
    keep_slower_than_ms: float | None = None
    keep_costlier_than_usd: Decimal | None = None

    @property
    def samples(self) -> bool:
        return self.rate < 1.0


def validate_policy(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    raw = raw or {}
    unknown = set(raw) - {"rate", "keep_errors", "keep_slower_than_ms", "keep_costlier_than_usd"}
    if unknown:
        raise SamplingConfigError(f"unknown sampling settings: {', '.join(sorted(unknown))}")
    try:
        rate = float(raw.get("rate", 1.0))
    except (TypeError, ValueError) as exc:
        raise SamplingConfigError("rate must be a number between 0 and 1") from exc
    if not 0.0 <= rate <= 1.0:
        raise SamplingConfigError("rate must be between 0 and 1")
    slow = raw.get("keep_slower_than_ms")
    if slow is not None and (not isinstance(slow, int | float) or slow < 0):
        raise SamplingConfigError("keep_slower_than_ms must be a positive number")
    costly = raw.get("keep_costlier_than_usd")
    if costly is not None:
        try:
            costly = str(Decimal(str(costly)))
        except InvalidOperation as exc:
            raise SamplingConfigError("keep_costlier_than_usd must be a decimal number") from exc
    return {
        "rate": rate,
        "keep_errors": bool(raw.get("keep_errors", True)),
        "keep_slower_than_ms": slow,
        "keep_costlier_than_usd": costly,
    }


def build_policy(raw: Mapping[str, Any] | None) -> SamplingPolicy:
    checked = validate_policy(raw)
    costly = checked["keep_costlier_than_usd"]
    return SamplingPolicy(
        rate=checked["rate"],
        keep_errors=checked["keep_errors"],
        keep_slower_than_ms=checked["keep_slower_than_ms"],
        keep_costlier_than_usd=Decimal(costly) if costly is not None else None,
    )


def trace_sampled(trace_id: str, rate: float) -> bool:
    """Deterministic per-trace decision from the low 56 bits of the trace id."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    return int(trace_id[-14:], 16) < rate * _MAX_56


def _must_keep(span: Span, policy: SamplingPolicy) -> bool:
    if policy.keep_errors and span.is_error:
        return True
    if policy.keep_slower_than_ms is not None and span.duration_ms >= policy.keep_slower_than_ms:
        return True
    return (
        policy.keep_costlier_than_usd is not None
        and span.cost is not None
        and span.cost.total_usd >= policy.keep_costlier_than_usd
    )


def decide(spans: Sequence[Span], policy: SamplingPolicy) -> list[bool]:
    """Which spans to store (the others only count in rollups)."""
    if not policy.samples:
        return [True] * len(spans)
    forced = {s.trace_id for s in spans if _must_keep(s, policy)}
    return [s.trace_id in forced or trace_sampled(s.trace_id, policy.rate) for s in spans]
