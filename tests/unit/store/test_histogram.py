from __future__ import annotations

import math
import random

from observatory.store import histogram


def test_bucket_values_are_within_five_percent() -> None:
    rng = random.Random(1)
    for _ in range(10_000):
        value = math.exp(rng.uniform(math.log(0.02), math.log(3_600_000)))
        estimate = histogram.bucket_value(histogram.bucket_index(value))
        assert abs(estimate - value) / value < 0.05


def test_edges_and_percentiles() -> None:
    assert histogram.bucket_index(0) == 0
    assert histogram.bucket_index(float("nan")) == 0
    assert histogram.bucket_index(1e30) == histogram.MAX_INDEX
    counts = [(histogram.bucket_index(v), 1) for v in range(1, 101)]
    pct = histogram.percentiles(counts, (0.5, 0.99))
    assert abs((pct[0.5] or 0) - 50) / 50 < 0.05
    assert abs((pct[0.99] or 0) - 99) / 99 < 0.05
    assert histogram.percentiles([], (0.5,)) == {0.5: None}
