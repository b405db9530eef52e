"""Property-based tests: no input makes the decoders or the normaliser fail in an undefined way."""

from __future__ import annotations

import contextlib
import json

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from observatory.ingest import otlp
from observatory.ingest.normalize import normalize
from observatory.ingest.pipeline import JSON, PROTOBUF, Policy, TooManySpans, prepare
from observatory.ingest.redact import build_redactor
from observatory.model import Span
from tests.otlp_builder import SpanSpec, json_request, protobuf_request

json_leaf = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)
# What the decoders can produce: OTLP integers are int64.
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
attr_values = st.recursive(
    st.none() | st.booleans() | int64 | st.floats() | st.text(max_size=200),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4)
    ),
    max_leaves=20,
)
semconv_keys = st.sampled_from(
    [
        "gen_ai.provider.name",
        "gen_ai.system",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "llm.input_messages.0.message.content",
        "gen_ai.prompt.0.role",
        "gen_ai.prompt.x.content",
        "llm.output_messages.1.message.tool_calls.0.tool_call.function.arguments",
        "openinference.span.kind",
        "llm.request.type",
        "gen_ai.response.finish_reasons",
        "gen_ai.response.time_to_first_chunk",
        "session.id",
        "user.id",
        "input.value",
    ]
) | st.text(max_size=30)
QUICK = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@QUICK
@given(st.binary(max_size=2000))
def test_protobuf_decoder_only_raises_decode_errors(body: bytes) -> None:
    try:
        batch = otlp.decode_protobuf(body)
    except otlp.OtlpDecodeError:
        return
    assert batch.rejected >= 0


@QUICK
@given(json_values)
def test_json_decoder_only_raises_decode_errors(doc: object) -> None:
    for wrapped in (
        doc,
        {"resourceSpans": doc},
        {"resourceSpans": [{"scopeSpans": [{"spans": doc}]}]},
        {"resourceSpans": [{"scopeSpans": [{"spans": [doc]}]}]},
    ):
        with contextlib.suppress(otlp.OtlpDecodeError):
            otlp.decode_json(json.dumps(wrapped).encode())


@QUICK
@given(
    st.dictionaries(semconv_keys, attr_values, max_size=12),
    st.lists(
        st.fixed_dictionaries(
            {
                "name": st.sampled_from(
                    [
                        "gen_ai.user.message",
                        "gen_ai.choice",
                        "gen_ai.client.inference.operation.details",
                        "x",
                    ]
                ),
                "attributes": st.dictionaries(
                    st.sampled_from(
                        ["content", "message", "role", "gen_ai.input.messages", "finish_reason"]
                    ),
                    attr_values,
                    max_size=3,
                ),
            }
        ),
        max_size=3,
    ),
)
def test_normalizer_never_fails(attributes: dict, events: list) -> None:  # type: ignore[type-arg]
    span = Span("ab" * 16, "cd" * 8, None, "s", 0, 1, 2, attributes=attributes, events=events)
    normalize(span)
    orjson.dumps([span.prompt, span.completion], option=orjson.OPT_NON_STR_KEYS, default=str)


@QUICK
@given(st.dictionaries(semconv_keys, attr_values, max_size=12), st.booleans())
def test_whole_pipeline_with_redaction_never_fails(attributes: dict, as_json: bool) -> None:  # type: ignore[type-arg]
    clean = {k: v for k, v in attributes.items() if v is not None and not isinstance(v, dict)}
    spec = SpanSpec(1, 1, attributes=clean)
    body = json_request([spec]) if as_json else protobuf_request([spec])
    policy = Policy(
        redactor=build_redactor({"detectors": {"email": True, "ip_address": True}}, b"k")
    )
    try:
        prepared = prepare(body, JSON if as_json else PROTOBUF, 1, policy)
    except (otlp.OtlpDecodeError, TooManySpans):
        return
    assert len(prepared.rows) + prepared.rejected == 1
