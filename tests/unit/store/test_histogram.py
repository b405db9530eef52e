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


def test_packed_histograms_merge_and_give_the_same_percentiles() -> None:
    rng = random.Random(12)
    quantiles = (0.5, 0.9, 0.95, 0.99)
    for _ in range(200):
        indexes = [0, 1, 2, 150, rng.randrange(histogram.MAX_INDEX + 1)]
        counts = [(rng.choice(indexes), rng.randrange(1, 9)) for _ in range(rng.randrange(1, 40))]
        packed = 0
        for index, count in counts:
            packed += histogram.pack(index, count)
        exact = histogram.percentiles(counts, quantiles)
        assert histogram.packed_percentiles(packed, quantiles) == [exact[q] for q in quantiles]
        lo, stored = histogram.to_stored(packed)
        assert lo == min(i for i, _ in counts) and len(stored) % 8 == 0
        assert histogram.from_stored(lo, stored) == packed
    # Counts far beyond any real bucket do not spill into the next one.
    big = histogram.pack(3, 2**62) + histogram.pack(3, 2**62 - 1) + histogram.pack(4, 1)
    assert histogram.packed_percentiles(big, (0.5, 1.0)) == [
        histogram.bucket_value(3),
        histogram.bucket_value(4),
    ]
    assert histogram.packed_percentiles(0, (0.5,)) == [None]
