"""The ingest fast paths give exactly what the straightforward code gives.

* ``normalize.known_values`` (one pass over the attributes) equals looking every group up in
  order of preference.
* Redaction while rows are built (one scan of the body, or of each encoded JSON value) stores
  the same rows as redacting every string of the span first — including the cases a body scan
  cannot see: JSON ``\\u`` escapes and protobuf bytes values.
"""

from __future__ import annotations

import base64
import dataclasses
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from observatory.ingest import otlp
from observatory.ingest.normalize import _GROUPS, _first, known_values, normalize
from observatory.ingest.pipeline import JSON, PROTOBUF, Policy, prepare
from observatory.ingest.redact import Redactor, build_redactor
from observatory.store.writes import span_to_row
from tests.otlp_builder import SpanSpec, json_request, llm_attributes, protobuf_request

QUICK = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = b"k" * 32
ALL_NAMES = sorted({name for names in _GROUPS.values() for name in names})
values = st.none() | st.just("") | st.text(max_size=8) | st.integers() | st.lists(st.integers())


@QUICK
@given(st.dictionaries(st.sampled_from([*ALL_NAMES, "other", "x.y"]), values, max_size=20))
def test_known_values_equals_first_of_each_group(attrs: dict[str, object]) -> None:
    found = known_values(attrs)
    for group, names in _GROUPS.items():
        assert found.get(group) == _first(attrs, names), group


def _slow(redactor: Redactor) -> Redactor:
    """The same policy without the literal-trigger shortcuts: every string is redacted in
    place by the regular expressions before the row is built."""
    slow = dataclasses.replace(redactor)
    slow._triggers = None
    assert not slow.screens_serialized
    return slow


def _rows(body: bytes, kind: str, redactor: Redactor) -> list[tuple[object, ...]]:
    return list(prepare(body, kind, 1, Policy(redactor=redactor)).rows)


SECRET = "sk-proj-" + "A1b2C3d4" * 4
TEXT = st.sampled_from(
    ["hello", SECRET, f"key {SECRET} here", "Bearer abcdefghijklmnopqrstuv", "eyJhbGciOi", "plain"]
)


@QUICK
@given(
    st.lists(TEXT, min_size=1, max_size=4),
    st.sampled_from(["mask", "hash"]),
    st.booleans(),
)
def test_screened_rows_equal_fully_redacted_rows(
    texts: list[str], action: str, as_json: bool
) -> None:
    redactor = build_redactor({"action": action}, KEY)
    assert redactor.screens_serialized
    messages = json.dumps([{"role": "user", "parts": [{"type": "text", "content": texts[0]}]}])
    specs = [
        SpanSpec(
            1,
            i + 1,
            name=text,
            attributes=llm_attributes(
                **{"gen_ai.input.messages": messages, "user.id": texts[-1], "note": text}
            ),
        )
        for i, text in enumerate(texts)
    ]
    body = json_request(specs) if as_json else protobuf_request(specs)
    kind = JSON if as_json else PROTOBUF
    assert _rows(body, kind, redactor) == _rows(body, kind, _slow(redactor))


def test_a_clean_body_is_not_scanned_span_by_span() -> None:
    redactor = build_redactor({}, KEY)
    body = protobuf_request([SpanSpec(1, 1, attributes=llm_attributes(note="nothing secret"))])
    assert redactor.clean_body(body, has_bytes=False)
    secret = protobuf_request([SpanSpec(1, 1, attributes=llm_attributes(note=SECRET))])
    assert not redactor.clean_body(secret, has_bytes=False)
    row = _rows(secret, PROTOBUF, redactor)[0]
    assert SECRET not in str(row) and "[REDACTED:API_KEY]" in str(row)


def test_a_secret_hidden_by_a_json_escape_is_still_redacted() -> None:
    # The message list is a JSON string inside the attribute: "\u0073k-" is "sk-" once parsed,
    # so the raw body holds no trigger, but the stored prompt would.
    hidden = "\\u0073" + SECRET[1:]
    messages = '[{"role": "user", "parts": [{"type": "text", "content": "' + hidden + '"}]}]'
    redactor = build_redactor({}, KEY)
    for kind, build in ((PROTOBUF, protobuf_request), (JSON, json_request)):
        body = build(
            [SpanSpec(1, 1, attributes=llm_attributes(**{"gen_ai.input.messages": messages}))]
        )
        assert not redactor.clean_body(body, has_bytes=False)
        row = _rows(body, kind, redactor)[0]
        assert SECRET not in str(row), kind
        assert _rows(body, kind, redactor) == _rows(body, kind, _slow(redactor))


def test_a_secret_in_a_bytes_value_is_still_redacted() -> None:
    # Protobuf bytes are stored as base64 text; the text is not in the body as such.
    key_id = "AKIA" + "ABCDEFGHIJKLMNOP"
    raw = base64.b64decode(key_id + "AAAA")
    body = protobuf_request([SpanSpec(1, 1, attributes={"blob": raw})])
    batch = otlp.decode_protobuf(body)
    assert batch.has_bytes
    redactor = build_redactor({}, KEY)
    row = _rows(body, PROTOBUF, redactor)[0]
    assert key_id not in str(row)
    assert _rows(body, PROTOBUF, redactor) == _rows(body, PROTOBUF, _slow(redactor))


def test_span_to_row_screen_matches_apply() -> None:
    redactor = build_redactor({"detectors": {"email": True}}, KEY)
    body = protobuf_request(
        [SpanSpec(1, 1, name="mail a@b.example", attributes=llm_attributes(note=SECRET))]
    )
    span = otlp.decode_protobuf(body).spans[0]
    normalize(span)
    screened = span_to_row(1, span, True, redactor)
    _slow(redactor).apply(span)
    assert screened == span_to_row(1, span, True)
