"""Fixed log-scale latency buckets for the rollups, and percentiles from them.

Bucket 0 holds durations up to ``MIN_MS``; bucket ``i >= 1`` holds (MIN_MS·r^(i-1), MIN_MS·r^i]
with r = 2^(1/8) ≈ 1.0905. Reporting the geometric middle of a bucket is within
√r - 1 ≈ 4.4 % of any value in it, which keeps percentiles from rollups within 5 % of the
exact ones.
"""

from __future__ import annotations

import functools
import math
import sys
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import accumulate

MIN_MS = 0.01
# The percentiles the API reports (``latency_ms.p50`` …), and the rollup cube stores per cell.
QUANTILES = (0.5, 0.9, 0.95, 0.99)
PERCENTILE_NAMES = tuple(f"p{int(q * 100)}" for q in QUANTILES)
STEPS_PER_DOUBLING = 8
MAX_INDEX = 320  # ~ 0.01 ms · 2^40 ≈ 127 days
_LOG_RATIO = math.log(2) / STEPS_PER_DOUBLING


def bucket_index(duration_ms: float) -> int:
    if not duration_ms > MIN_MS:  # also catches NaN
        return 0
    index = math.floor(math.log(duration_ms / MIN_MS) / _LOG_RATIO) + 1
    return min(index, MAX_INDEX)


@functools.cache
def lower_bounds() -> tuple[float, ...]:
    """The smallest float of each bucket 1 … MAX_INDEX, ascending: ``bucket_index(d)`` is the
    number of them at most ``d`` (``bisect_right``) for every float ``d`` but NaN.

    SQL can then compute a bucket with comparisons alone, exactly as :func:`bucket_index` does
    here, whatever the database's ``ln()`` rounds to (or whether it has one: SQLite's math
    functions are a compile-time option)."""
    bounds = []
    for index in range(1, MAX_INDEX + 1):
        # The analytic bound lies some ulps (tens at most) off the float where the rounded
        # quotient and log cross over; bucket_index is monotonic, so walk to it.
        value = MIN_MS * math.exp(_LOG_RATIO * (index - 1))
        while bucket_index(value) >= index:
            value = math.nextafter(value, 0.0)
        while bucket_index(value) < index:
            value = math.nextafter(value, math.inf)
        bounds.append(value)
    return tuple(bounds)


def bucket_sql(column: str = "duration_ms") -> str:
    """The same function in PostgreSQL SQL, exact for every float but NaN: how many of
    :func:`lower_bounds` are at most ``column`` (``width_bucket`` over the sorted bounds; each
    bound is written as its shortest round-trip decimal, which PostgreSQL reads back exactly)."""
    bounds = ",".join(repr(bound) for bound in lower_bounds())
    return f"width_bucket({column}, '{{{bounds}}}'::double precision[])"


def bucket_bounds(index: int) -> tuple[float, float]:
    if index <= 0:
        return 0.0, MIN_MS
    return MIN_MS * math.exp(_LOG_RATIO * (index - 1)), MIN_MS * math.exp(_LOG_RATIO * index)


def bucket_value(index: int) -> float:
    """Representative value of a bucket: the geometric middle of its bounds."""
    lo, hi = bucket_bounds(index)
    if index <= 0:
        return hi / 2
    return math.sqrt(lo * hi)


def percentiles(
    counts: Iterable[tuple[int, int]], quantiles: Iterable[float]
) -> dict[float, float | None]:
    """Percentiles (by nearest rank) from (bucket_index, count) pairs."""
    merged: dict[int, int] = {}
    for index, count in counts:
        merged[int(index)] = merged.get(int(index), 0) + int(count)
    total = sum(merged.values())
    result: dict[float, float | None] = {}
    ordered = sorted(merged.items())
    for q in quantiles:
        if total == 0:
            result[q] = None
            continue
        rank = max(1, math.ceil(q * total))
        seen = 0
        for index, count in ordered:
            seen += count
            if seen >= rank:
                result[q] = bucket_value(index)
                break
    return result


# --- packed histograms --------------------------------------------------------------------------
# A histogram can also be one Python int: bucket i's count in bits [64·i, 64·i + 64). Adding two
# such ints adds every bucket at once (a count never reaches 2^63, so no carry crosses a field),
# which makes merging thousands of histograms cheap. Stored, a packed histogram is the first
# non-empty bucket's index and the little-endian 8-byte counts from there to the last one.

FIELD_BITS = 64
_FIELD_BYTES = FIELD_BITS // 8


def pack(index: int, count: int) -> int:
    """``count`` in bucket ``index`` as a packed histogram."""
    return int(count) << (FIELD_BITS * int(index))


def to_stored(packed: int) -> tuple[int, bytes]:
    """(first bucket, counts from it to the last non-empty one) of a non-empty histogram."""
    lo = ((packed & -packed).bit_length() - 1) // FIELD_BITS
    hi = (packed.bit_length() - 1) // FIELD_BITS
    return lo, (packed >> (FIELD_BITS * lo)).to_bytes(_FIELD_BYTES * (hi - lo + 1), "little")


def from_stored(lo: int, counts: bytes) -> int:
    return int.from_bytes(counts, "little") << (FIELD_BITS * lo)


def packed_percentiles(packed: int, quantiles: Sequence[float]) -> list[float | None]:
    """The same percentiles as :func:`percentiles`, in the order given, from a packed
    histogram."""
    if packed <= 0:
        return [None] * len(quantiles)
    lo = ((packed & -packed).bit_length() - 1) // FIELD_BITS
    hi = (packed.bit_length() - 1) // FIELD_BITS
    window = (packed >> (FIELD_BITS * lo)).to_bytes(_FIELD_BYTES * (hi - lo + 1), sys.byteorder)
    running = list(accumulate(memoryview(window).cast("Q")))
    total = running[-1]
    return [_VALUES[lo + bisect_left(running, max(1, math.ceil(q * total)))] for q in quantiles]


_VALUES = [bucket_value(index) for index in range(MAX_INDEX + 1)]
