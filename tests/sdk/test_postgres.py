"""The SDK against a server on PostgreSQL: same spans, tokens and cost as on SQLite."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import anthropic
import openai

import observatory_sdk
from tests.conftest import Server
from tests.sdk import fake_provider as fp
from tests.sdk.conftest import expected_cost, fetch_trace, flatten, get_json, init_sdk
from tests.sdk.fake_provider import FakeProvider


def test_openai_and_anthropic_on_postgresql(
    server_factory: Callable[..., Server], pg_url: str, provider: FakeProvider
) -> None:
    server = server_factory(database_url=pg_url)
    init_sdk(server)
    oai = openai.OpenAI(api_key="sk-test", base_url=provider.openai_url, max_retries=0)
    ant = anthropic.Anthropic(api_key="sk-ant", base_url=provider.anthropic_url, max_retries=0)
    with observatory_sdk.session("pg-session"), observatory_sdk.span("pg-root") as root:
        oai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        with ant.messages.stream(
            model="claude-sonnet-4-0", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            assert "".join(stream.text_stream) == fp.ANSWER
    detail = fetch_trace(server, root.trace_id, min_spans=3)
    spans = {s["provider"]: s for s in flatten(detail["spans"]) if s["provider"]}
    u, a = fp.OPENAI_USAGE, fp.ANTHROPIC_USAGE
    openai_cost = expected_cost(
        "openai",
        "gpt-4o-mini-2024-07-18",
        u["prompt_tokens"],
        u["completion_tokens"],
        u["cached_tokens"],
    )
    anthropic_input = (
        a["input_tokens"] + a["cache_read_input_tokens"] + a["cache_creation_input_tokens"]
    )
    anthropic_cost = expected_cost(
        "anthropic",
        "claude-sonnet-4-20250514",
        anthropic_input,
        a["output_tokens"],
        a["cache_read_input_tokens"],
        a["cache_creation_input_tokens"],
    )
    assert spans["openai"]["response_model"] == "gpt-4o-mini-2024-07-18"
    assert Decimal(spans["openai"]["total_cost_usd"]) == openai_cost
    assert spans["anthropic"]["response_model"] == "claude-sonnet-4-20250514"
    assert spans["anthropic"]["input_tokens"] == anthropic_input
    assert spans["anthropic"]["time_to_first_token_ms"] > 0
    assert Decimal(spans["anthropic"]["total_cost_usd"]) == anthropic_cost
    assert Decimal(detail["trace"]["total_cost_usd"]) == openai_cost + anthropic_cost
    listing = get_json(server, "/api/v1/traces", session_id="pg-session", range="1h")["data"]
    assert [t["trace_id"] for t in listing] == [root.trace_id]
    assert listing[0]["models"] == ["claude-sonnet-4-20250514", "gpt-4o-mini-2024-07-18"]
