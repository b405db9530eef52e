"""Comparing analytics answers computed two ways."""

from __future__ import annotations

import math
from typing import Any


def same_answers(a: Any, b: Any) -> bool:
    """Equal, but for the last bits of float sums added in another order (avg_latency_ms)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_answers(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_answers(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
