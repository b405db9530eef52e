"""Cost of a model call: the project's own prices first, then the ``genai-prices`` catalogue.

An unknown model gets no cost (None, counted by the caller in a metric) rather than a made-up
zero. Costs are exact decimals in USD.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import genai_prices
from genai_prices import data_snapshot

from observatory.model import Cost, LlmUsage, ModelPrice

_MTOK = Decimal(1_000_000)
# Date suffixes that deployments and snapshots add: gpt-4o-2024-08-06, claude-3-5-sonnet@20241022.
_DATE_SUFFIX = re.compile(r"([-@_]\d{4}-?\d{2}-?\d{2}|[-@]v\d+(:\d+)?|:\d+)$")

# Our canonical provider names that genai-prices spells differently.
_PROVIDER_IDS = {"ibm": None}


def _catalogue_provider(provider: str | None) -> str | None:
    if provider is None:
        return None
    return _PROVIDER_IDS.get(provider, provider)


@lru_cache(maxsize=4096)
def _lookup(provider: str | None, model: str) -> tuple[Any, Any] | None:
    """Resolve (provider, model) to genai-prices' provider and model info, or None."""
    snapshot = data_snapshot.get_snapshot()
    candidates = [model]
    stripped = _DATE_SUFFIX.sub("", model)
    if stripped != model:
        candidates.append(stripped)
    if "/" in model:
        candidates.append(model.rsplit("/", 1)[1])
    for provider_id in (_catalogue_provider(provider), None) if provider else (None,):
        for candidate in candidates:
            try:
                return snapshot.find_provider_model(candidate, None, provider_id, None)
            except LookupError:
                continue
    return None


def _usage(usage: LlmUsage) -> genai_prices.Usage:
    return genai_prices.Usage(
        input_tokens=usage.input_tokens or 0,
        output_tokens=usage.output_tokens or 0,
        cache_read_tokens=usage.cache_read_tokens or None,
        cache_write_tokens=usage.cache_write_tokens or None,
    )


def _exact(found: tuple[Any, Any], usage: LlmUsage, day: date) -> Cost | None:
    prov, info = found
    try:
        calc = info.calc_price(
            _usage(usage),
            prov,
            genai_request_timestamp=datetime(day.year, day.month, day.day, 12, tzinfo=UTC),
            auto_update_timestamp=None,
        )
    except (LookupError, ValueError, ArithmeticError):
        return None
    return Cost(
        input_usd=Decimal(calc.input_price),
        output_usd=Decimal(calc.output_price),
        total_usd=Decimal(calc.total_price),
    )


_PROBE = 1_000_000


@lru_cache(maxsize=4096)
def _linear_rates(provider: str | None, model: str, day: date) -> tuple[Decimal, ...] | None:
    """Per-token prices (input, output, cache read, cache write) when the price is linear.

    genai-prices evaluates a price through a general unit registry (~0.2 ms a call); for the
    common case of flat per-token prices the same exact decimals come from four probes, checked
    once against a mixed usage. Tiered or otherwise non-linear prices return None and are
    computed exactly per call.
    """
    found = _lookup(provider, model)
    if found is None:
        return None
    probes = [
        LlmUsage(input_tokens=_PROBE, output_tokens=0),
        LlmUsage(input_tokens=0, output_tokens=_PROBE),
        LlmUsage(input_tokens=_PROBE, output_tokens=0, cache_read_tokens=_PROBE),
        LlmUsage(input_tokens=_PROBE, output_tokens=0, cache_write_tokens=_PROBE),
    ]
    rates = []
    for probe in probes:
        cost = _exact(found, probe, day)
        if cost is None:
            return None
        rates.append(cost.total_usd / _PROBE)
    check = LlmUsage(
        input_tokens=7_000, output_tokens=3_000, cache_read_tokens=2_000, cache_write_tokens=1_000
    )
    exact = _exact(found, check, day)
    if exact is None or exact.total_usd != _linear(tuple(rates), check).total_usd:
        return None
    return tuple(rates)


def _linear(rates: tuple[Decimal, ...], usage: LlmUsage) -> Cost:
    p_in, p_out, p_read, p_write = rates
    cache_read = usage.cache_read_tokens or 0
    cache_write = usage.cache_write_tokens or 0
    plain = max((usage.input_tokens or 0) - cache_read - cache_write, 0)
    input_usd = plain * p_in + cache_read * p_read + cache_write * p_write
    output_usd = (usage.output_tokens or 0) * p_out
    return Cost(input_usd=input_usd, output_usd=output_usd, total_usd=input_usd + output_usd)


def catalogue_cost(
    provider: str | None, model: str, usage: LlmUsage, at_unix_nano: int
) -> Cost | None:
    day = datetime.fromtimestamp(at_unix_nano / 1e9, tz=UTC).date()
    rates = _linear_rates(provider, model, day)
    if rates is not None:
        return _linear(rates, usage)
    found = _lookup(provider, model)
    if found is None:
        return None
    return _exact(found, usage, day)


def custom_cost(price: ModelPrice, usage: LlmUsage) -> Cost:
    """Cost from a project's own price. Input tokens include cached ones (GenAI semantics)."""
    input_tokens = usage.input_tokens or 0
    cache_read = usage.cache_read_tokens or 0
    cache_write = usage.cache_write_tokens or 0
    plain_input = input_tokens
    input_usd = Decimal(0)
    if price.cache_read_usd_per_mtok is not None and cache_read:
        plain_input -= cache_read
        input_usd += cache_read * price.cache_read_usd_per_mtok / _MTOK
    if price.cache_write_usd_per_mtok is not None and cache_write:
        plain_input -= cache_write
        input_usd += cache_write * price.cache_write_usd_per_mtok / _MTOK
    input_usd += max(plain_input, 0) * price.input_usd_per_mtok / _MTOK
    output_usd = (usage.output_tokens or 0) * price.output_usd_per_mtok / _MTOK
    return Cost(input_usd=input_usd, output_usd=output_usd, total_usd=input_usd + output_usd)


def find_custom_price(
    prices: Sequence[ModelPrice], provider: str | None, model: str
) -> ModelPrice | None:
    """A project price matches on model (exact, or without a date suffix).

    A price whose provider is '' matches any provider."""
    stripped = _DATE_SUFFIX.sub("", model)
    best: ModelPrice | None = None
    for price in prices:
        if price.provider and price.provider != (provider or ""):
            continue
        if price.model == model:
            return price
        if price.model == stripped and best is None:
            best = price
    return best


def compute_cost(
    provider: str | None,
    model: str | None,
    usage: LlmUsage,
    at_unix_nano: int,
    custom_prices: Sequence[ModelPrice] = (),
) -> Cost | None:
    """The cost of one call, or None when the model or the token counts are unknown."""
    if not model or (usage.input_tokens is None and usage.output_tokens is None):
        return None
    if custom_prices:
        price = find_custom_price(custom_prices, provider, model)
        if price is not None:
            return custom_cost(price, usage)
    return catalogue_cost(provider, model, usage, at_unix_nano)
