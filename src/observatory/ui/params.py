"""Query parameters of the UI pages: the time range picker and the trace filters.

Bad values never fail a page: they are dropped and reported in a banner.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from fastapi import HTTPException
from starlette.datastructures import QueryParams

from observatory.api.params import parse_decimal, parse_range, parse_time
from observatory.store.queries import BUCKET_SECONDS, Filters
from observatory.store.ui_queries import Window

PRESETS = ("15m", "1h", "24h", "7d", "30d")
PRESET_LABELS = {
    "15m": "Last 15 minutes",
    "1h": "Last hour",
    "24h": "Last 24 hours",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
}
# Target at most this many points per chart.
MAX_POINTS = 200
TEXT_FILTERS = ("service", "provider", "model", "operation", "user_id", "session_id", "environment")


@dataclass
class TimeRange:
    key: str  # a preset, or "custom"
    start_ns: int
    end_ns: int | None  # None: up to now
    start_text: str = ""  # custom range, as given
    end_text: str = ""

    @property
    def label(self) -> str:
        return PRESET_LABELS.get(self.key, "Custom range")

    @property
    def effective_end_ns(self) -> int:
        return self.end_ns if self.end_ns is not None else time.time_ns()

    @property
    def bucket(self) -> str:
        """The smallest bucket that keeps a chart under MAX_POINTS points."""
        span_s = max(1, (self.effective_end_ns - self.start_ns) // 1_000_000_000)
        for name, seconds in sorted(BUCKET_SECONDS.items(), key=lambda kv: kv[1]):
            if span_s / seconds <= MAX_POINTS:
                return name
        return "1d"


def _custom_text(value: str) -> str:
    # <input type=datetime-local> sends "2026-01-01T10:00" (no zone); without the page script's
    # conversion to UTC, read it as UTC.
    text = value.strip()
    has_zone = text.endswith(("Z", "z")) or "+" in text[10:] or text.count("-") > 2
    if text and "T" in text and not has_zone:
        return text + "Z"
    return text


def time_range(params: QueryParams, errors: list[str], default: str = "24h") -> TimeRange:
    start_text = params.get("start", "").strip()
    end_text = params.get("end", "").strip()
    key = params.get("range", "").strip() or ("custom" if start_text else default)
    now = time.time_ns()
    if key == "custom" or start_text:
        try:
            start = parse_time(_custom_text(start_text), "start") if start_text else None
            end = parse_time(_custom_text(end_text), "end") if end_text else None
        except HTTPException as exc:
            errors.append(str(exc.detail))
        else:
            if start is not None and (end is None or end > start):
                return TimeRange("custom", start, end, start_text, end_text)
            errors.append("The custom range needs a start before its end.")
        key = default
    if key not in PRESETS:
        try:
            span = parse_range(key)
        except HTTPException:
            errors.append(f"Unknown time range {key[:20]!r}; showing the {default}.")
            key, span = default, parse_range(default)
        return TimeRange(key, now - span, None)
    return TimeRange(key, now - parse_range(key), None)


def custom_input_value(ns: int | None) -> str:
    """A UTC value for <input type=datetime-local> (the page script shows it in local time)."""
    if ns is None:
        return ""
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M")


@dataclass
class TraceQuery:
    filters: Filters
    active: dict[str, str] = field(default_factory=dict)  # param → value, for the filter chips


def trace_filters(params: QueryParams, tr: TimeRange, errors: list[str]) -> TraceQuery:
    f = Filters(start_time=tr.start_ns, end_time=tr.end_ns)
    active: dict[str, str] = {}
    for name in TEXT_FILTERS:
        value = params.get(name, "").strip()[:512]
        if value:
            setattr(f, name, value)
            active[name] = value
    status = params.get("status", "")
    if status in ("ok", "error"):
        f.status = status
        active["status"] = status
    name = params.get("name", "").strip()[:256]
    if name:
        f.name = name
        active["name"] = name
    for param, attr in (("min_cost", "min_cost"), ("max_cost", "max_cost")):
        raw = params.get(param, "").strip()
        if not raw:
            continue
        try:
            number = parse_decimal(raw, param)
        except HTTPException as exc:
            errors.append(str(exc.detail))
            continue
        if number is not None and number >= 0:
            setattr(f, attr, Decimal(number))
            active[param] = raw
    for param in ("min_duration_ms", "max_duration_ms"):
        raw = params.get(param, "").strip()
        if not raw:
            continue
        try:
            number_ms = float(raw)
        except ValueError:
            errors.append(f"{param}: {raw[:20]!r} is not a number")
            continue
        if 0 <= number_ms <= 1e12:
            setattr(f, param, number_ms)
            active[param] = raw
    return TraceQuery(f, active)


def window(params: QueryParams, tr: TimeRange) -> Window:
    return Window(
        start_time=tr.start_ns,
        end_time=tr.end_ns,
        environment=params.get("environment", "").strip()[:512] or None,
        service=params.get("service", "").strip()[:512] or None,
    )


def window_filters(win: Window) -> Filters:
    """The query filters of a window, for the pages that use the trace and analytics queries."""
    return Filters(
        start_time=win.start_time,
        end_time=win.end_time,
        environment=win.environment,
        service=win.service,
        user_id=win.user_id,
    )


def page_number(params: QueryParams) -> int:
    try:
        return max(1, min(int(params.get("page", "1")), 10_000))
    except ValueError:
        return 1
