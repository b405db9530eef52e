"""Query parameters shared by the trace, span and analytics endpoints."""

from __future__ import annotations

import re
import time
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated

from fastapi import HTTPException, Query

from observatory.store.queries import Filters

RANGES = {"m": 60, "h": 3600, "d": 86400}
_RANGE = re.compile(r"^(\d{1,4})([mhd])$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def parse_time(value: str, name: str) -> int:
    """ISO 8601 (``2026-01-01T00:00:00Z``) or unix seconds → unix nanoseconds."""
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError as exc:
            raise HTTPException(
                422, f"{name}: expected ISO 8601 or unix seconds, got {value!r:.40}"
            ) from exc
        if moment.tzinfo is None:
            raise HTTPException(
                422, f"{name}: give a time zone (for example a trailing Z)"
            ) from None
        seconds = moment.timestamp()
    if not 0 <= seconds < 4102444800:  # year 2100
        raise HTTPException(422, f"{name}: {value!r:.40} is out of range")
    return int(seconds * 1e9)


def parse_range(value: str) -> int:
    """``15m``, ``24h``, ``30d`` → nanoseconds."""
    match = _RANGE.match(value.strip())
    if not match or int(match.group(1)) == 0:
        raise HTTPException(
            422, f"range: expected a duration like 15m, 24h or 30d, got {value!r:.20}"
        )
    return int(match.group(1)) * RANGES[match.group(2)] * 1_000_000_000


def parse_decimal(value: str | None, name: str) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        number = Decimal(value)
    except InvalidOperation as exc:
        raise HTTPException(422, f"{name}: {value!r:.40} is not a number") from exc
    if not number.is_finite() or abs(number) > Decimal("1e9"):
        raise HTTPException(422, f"{name}: {value!r:.40} is out of range")
    return number


def check_trace_id(trace_id: str) -> str:
    value = trace_id.strip().lower()
    if not _HEX32.match(value):
        raise HTTPException(422, "trace_id must be 32 hexadecimal characters")
    return value


Text = Annotated[str | None, Query(max_length=512)]
AttributeFilters = Annotated[
    list[str] | None,
    Query(description="Attribute equality, repeatable: attribute=key=value", max_length=20),
]


def add_attribute_filters(filters: Filters, attribute: list[str] | None) -> None:
    """Add ``attribute=key=value`` parameters to ``filters`` as attribute equality; 422 if bad."""
    for item in attribute or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise HTTPException(
                422, "attribute filters look like attribute=gen_ai.request.model=gpt-4o"
            )
        filters.attributes[name[:256]] = value[:1024]


def common_filters(
    start: Annotated[
        str | None, Query(description="Start (ISO 8601 or unix seconds), inclusive", max_length=64)
    ] = None,
    end: Annotated[
        str | None, Query(description="End (ISO 8601 or unix seconds), exclusive", max_length=64)
    ] = None,
    range: Annotated[
        str | None,
        Query(description="Relative range ending now: 15m, 1h, 24h, 7d, 30d", max_length=8),
    ] = None,
    service: Text = None,
    provider: Text = None,
    model: Text = None,
    operation: Text = None,
    status: Annotated[str | None, Query(pattern="^(ok|error)$")] = None,
    user_id: Text = None,
    session_id: Text = None,
    environment: Text = None,
    min_cost: Annotated[str | None, Query(description="Minimum cost in USD", max_length=32)] = None,
    max_cost: Annotated[str | None, Query(description="Maximum cost in USD", max_length=32)] = None,
    min_duration_ms: Annotated[float | None, Query(ge=0, le=1e12)] = None,
    max_duration_ms: Annotated[float | None, Query(ge=0, le=1e12)] = None,
    name: Annotated[
        str | None, Query(description="Substring of the (root) span name", max_length=256)
    ] = None,
) -> Filters:
    f = Filters(
        service=service or None,
        provider=provider or None,
        model=model or None,
        operation=operation or None,
        status=status,
        user_id=user_id or None,
        session_id=session_id or None,
        environment=environment or None,
        min_cost=parse_decimal(min_cost, "min_cost"),
        max_cost=parse_decimal(max_cost, "max_cost"),
        min_duration_ms=min_duration_ms,
        max_duration_ms=max_duration_ms,
        name=name or None,
    )
    now_ns = time.time_ns()
    if range:
        f.start_time = now_ns - parse_range(range)
        f.end_time = None
    if start:
        f.start_time = parse_time(start, "start")
    if end:
        f.end_time = parse_time(end, "end")
    if f.start_time is not None and f.end_time is not None and f.end_time <= f.start_time:
        raise HTTPException(422, "end must be after start")
    return f
