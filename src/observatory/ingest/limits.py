"""Size limits on what one span may carry; each is documented in docs/configuration.md.

Over-long string values are truncated (and the keys listed in ``observatory.truncated_attributes``);
attributes beyond the per-span count are dropped (counted in
``observatory.dropped_attributes_count``); events and links beyond their counts are dropped
(counted in ``observatory.dropped_events_count`` / ``observatory.dropped_links_count``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from observatory.model import Span

TRUNCATION_MARK = "…[truncated]"
# Spans must start after this (2000-01-01T00:00:00Z) and at most a day after the server's clock.
MIN_START_NS = 946_684_800 * 1_000_000_000
MAX_FUTURE_NS = 86_400 * 1_000_000_000


@dataclass(frozen=True)
class Limits:
    max_attribute_length: int = 131_072
    max_attributes_per_span: int = 1024
    max_events_per_span: int = 1024
    max_links_per_span: int = 128


def _truncate(value: Any, limit: int) -> tuple[Any, bool]:
    if isinstance(value, str):
        if len(value) > limit:
            return value[:limit] + TRUNCATION_MARK, True
        return value, False
    if isinstance(value, list):
        changed = False
        out = []
        for item in value:
            new, hit = _truncate(item, limit)
            changed |= hit
            out.append(new)
        return out, changed
    if isinstance(value, dict):
        changed = False
        result = {}
        for key, item in value.items():
            new, hit = _truncate(item, limit)
            changed |= hit
            result[key] = new
        return result, changed
    return value, False


def limit_attributes(attributes: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """Apply the count and length limits to one attribute map (returns a new map if changed)."""
    out = attributes
    dropped = len(attributes) - limits.max_attributes_per_span
    if dropped > 0:
        out = dict(list(attributes.items())[: limits.max_attributes_per_span])
        out["observatory.dropped_attributes_count"] = dropped
    truncated = []
    limit = limits.max_attribute_length
    for key, value in out.items():
        kind = type(value)
        if kind is str:
            if len(value) <= limit:
                continue  # the common cases, checked without a call
        elif kind is int or kind is float or kind is bool or value is None:
            continue
        new, hit = _truncate(value, limits.max_attribute_length)
        if hit:
            truncated.append(key)
            if out is attributes:
                out = dict(attributes)
            out[key] = new
    if truncated:
        out["observatory.truncated_attributes"] = truncated
    return out


def apply_limits(span: Span, limits: Limits) -> None:
    """Bound what one span stores, in place (before normalisation reads it)."""
    span.attributes = limit_attributes(span.attributes, limits)
    if len(span.events) > limits.max_events_per_span:
        span.attributes["observatory.dropped_events_count"] = (
            len(span.events) - limits.max_events_per_span
        )
        span.events = span.events[: limits.max_events_per_span]
    for event in span.events:
        attrs = event.get("attributes")
        if attrs:
            event["attributes"] = limit_attributes(attrs, limits)
    if len(span.links) > limits.max_links_per_span:
        span.attributes["observatory.dropped_links_count"] = (
            len(span.links) - limits.max_links_per_span
        )
        span.links = span.links[: limits.max_links_per_span]
    if span.name and len(span.name) > 1024:
        span.name = span.name[:1024] + TRUNCATION_MARK
    if span.status_message and len(span.status_message) > limits.max_attribute_length:
        span.status_message = span.status_message[: limits.max_attribute_length] + TRUNCATION_MARK


def check_time(span: Span, now_ns: int) -> str | None:
    """Why a span's timestamps are unacceptable, or None."""
    if span.start_time_unix_nano < MIN_START_NS:
        return "start time is before the year 2000"
    if span.start_time_unix_nano > now_ns + MAX_FUTURE_NS:
        return "start time is more than a day in the future"
    return None
