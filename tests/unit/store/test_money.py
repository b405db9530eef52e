"""Money leaves the API as a fixed-point decimal string without trailing zeros."""

from __future__ import annotations

import random
from decimal import Decimal

from observatory.store.queries import _money


def _reference(value: Decimal) -> str:
    return format(value.normalize(), "f") if value != 0 else "0"


def test_money_strings() -> None:
    cases = {
        Decimal("0.1476829500"): "0.14768295",
        Decimal("100.0000000000"): "100",
        Decimal("0E-10"): "0",
        Decimal("-0E-10"): "0",
        Decimal("-0.00"): "0",
        Decimal("1E-10"): "0.0000000001",
        Decimal("0.0000010000"): "0.000001",
        Decimal("-0.5000"): "-0.5",
        Decimal("12345678901.1234567890"): "12345678901.123456789",
        Decimal("1E+3"): "1000",
        Decimal("250"): "250",
    }
    for value, text in cases.items():
        assert _money(value) == text, value
    assert _money(None) is None
    assert _money(3) == "3"
    assert _money("0.50") == "0.5"


def test_money_matches_the_reference_on_numeric_20_10() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        units = rng.choice([0, rng.randrange(10), rng.randrange(10**6), rng.randrange(10**20)])
        value = Decimal(units * rng.choice([1, -1])).scaleb(-10)  # NUMERIC(20,10) as read back
        assert _money(value) == _reference(value), value
