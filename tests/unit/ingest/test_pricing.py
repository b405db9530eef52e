from __future__ import annotations

from decimal import Decimal

import genai_prices

from observatory.ingest.pricing import compute_cost, custom_cost
from observatory.model import LlmUsage, ModelPrice

T = 1_767_225_600_000_000_000


def catalogue(model: str, provider: str, **usage: int) -> Decimal:
    return Decimal(
        genai_prices.calc_price(
            genai_prices.Usage(**usage), model, provider_id=provider
        ).total_price
    )


def test_catalogue_prices_with_date_suffixes_and_cache() -> None:
    usage = LlmUsage(input_tokens=1000, output_tokens=500, cache_read_tokens=200)
    cost = compute_cost("openai", "gpt-4o-2024-08-06", usage, T)
    assert cost is not None
    assert cost.total_usd == catalogue(
        "gpt-4o", "openai", input_tokens=1000, output_tokens=500, cache_read_tokens=200
    )
    assert cost.input_usd + cost.output_usd == cost.total_usd
    anthropic = compute_cost("anthropic", "claude-3-5-sonnet-20241022", LlmUsage(100, 10), T)
    assert anthropic is not None and anthropic.total_usd > 0


def test_azure_deployment_and_unknown_models() -> None:
    assert compute_cost("azure", "gpt-4o", LlmUsage(1000, 100), T) is not None
    assert compute_cost("openai", "no-such-model-123", LlmUsage(1000, 100), T) is None
    assert compute_cost("openai", "gpt-4o", LlmUsage(), T) is None


def test_custom_price_wins_and_is_exact() -> None:
    price = ModelPrice(1, 1, "", "gpt-4o", Decimal("3"), Decimal("7"), Decimal("1"))
    cost = compute_cost(
        "openai", "gpt-4o-2024-08-06", LlmUsage(1_000_000, 1_000_000, 500_000), T, [price]
    )
    assert cost is not None
    assert cost.input_usd == Decimal("2")  # 0.5M at 3 + 0.5M cached at 1
    assert cost.output_usd == Decimal("7")
    assert custom_cost(price, LlmUsage(1, 0)).total_usd == Decimal("0.000003")
