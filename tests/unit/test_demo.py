"""``observatory demo``: the generated traces look like real agent traffic and decode cleanly."""

from __future__ import annotations

from collections import Counter

from observatory import demo
from observatory.ingest.normalize import normalize
from observatory.ingest.otlp import decode_protobuf
from observatory.ingest.pricing import compute_cost

NOW_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z


def test_same_seed_and_clock_give_the_same_traces() -> None:
    first = demo.build_traces(30, 2, seed=5, now_ns=NOW_NS)
    second = demo.build_traces(30, 2, seed=5, now_ns=NOW_NS)
    assert demo.encode(first) == demo.encode(second)
    other = demo.build_traces(30, 2, seed=6, now_ns=NOW_NS)
    assert demo.encode(other) != demo.encode(first)


def test_traces_span_the_requested_days_and_end_before_now() -> None:
    traces = demo.build_traces(200, 3, seed=1, now_ns=NOW_NS)
    assert len(traces) == 200
    starts = [min(s.start_ns for s in t.spans) for t in traces]
    assert min(starts) >= NOW_NS - 3 * 86400 * demo.NS
    assert max(starts) < NOW_NS
    # Spread over the range, with some traffic in the last hour.
    assert max(starts) - min(starts) > 2 * 86400 * demo.NS
    assert any(s > NOW_NS - 3600 * demo.NS for s in starts)
    for trace in traces:
        root = trace.spans[0]
        assert root.parent_span_id is None
        assert all(s.start_ns >= root.start_ns and s.end_ns <= root.end_ns for s in trace.spans)


def test_protobuf_decodes_into_llm_calls_tools_sessions_and_errors() -> None:
    traces = demo.build_traces(150, 2, seed=3, now_ns=NOW_NS)
    batch = decode_protobuf(demo.encode(traces))
    assert batch.rejected == 0
    spans = [normalize(s) for s in batch.spans]
    assert len(spans) == sum(len(t.spans) for t in traces)
    llm = [s for s in spans if s.is_llm and s.operation == "chat"]
    providers = Counter(s.provider for s in llm)
    assert set(providers) >= {"openai", "anthropic", "google", "mistral"}
    assert len({s.model for s in llm}) >= 5
    assert any(s.operation == "execute_tool" for s in spans)
    assert any(s.operation == "embeddings" for s in spans)
    assert {s.service_name for s in spans} == set(demo.SERVICES)
    assert {s.environment for s in spans} == {"production", "staging"}
    errors = [s for s in spans if s.is_error]
    assert errors and len(errors) < len(spans) * 0.2
    sessions = Counter(s.session_id for s in spans if s.session_id and s.parent_span_id is None)
    assert any(count > 1 for count in sessions.values())  # conversations of several traces
    assert len({s.user_id for s in spans if s.user_id}) >= 10
    # Content is recorded the GenAI way: messages with parts, and tool calls in completions.
    answered = [s for s in llm if s.completion]
    assert answered and all(s.prompt for s in answered)
    assert any(
        part.get("type") == "tool_call" for s in answered for part in s.completion[0]["parts"]
    )
    # Every model the demo uses has a catalogue price, so the dashboard shows cost.
    for span in llm:
        if not span.is_error:
            cost = compute_cost(span.provider, span.model, span.usage, span.start_time_unix_nano)
            assert cost is not None and cost.total_usd > 0, span.model


def test_follow_mode_traces_start_in_the_last_seconds() -> None:
    traces = demo.build_traces(3, 30 / 86400, seed=2, now_ns=NOW_NS)
    for trace in traces:
        start = min(s.start_ns for s in trace.spans)
        assert NOW_NS - 31 * demo.NS <= start < NOW_NS
