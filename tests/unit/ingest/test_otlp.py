from __future__ import annotations

import orjson
import pytest

from observatory.ingest import otlp
from tests.otlp_builder import (
    SpanSpec,
    json_request,
    llm_attributes,
    protobuf_request,
    span_id,
    trace_id,
)


def test_protobuf_and_json_decode_to_the_same_spans() -> None:
    specs = [
        SpanSpec(1, 1, None, "root", attributes={"a": 1, "b": True, "c": 1.5, "d": ["x", "y"]}),
        SpanSpec(1, 2, 1, "child", attributes=llm_attributes()),
    ]
    from_pb = otlp.decode_protobuf(protobuf_request(specs))
    from_json = otlp.decode_json(json_request(specs))
    assert from_pb.rejected == from_json.rejected == 0
    for a, b in zip(from_pb.spans, from_json.spans, strict=True):
        assert (a.trace_id, a.span_id, a.parent_span_id, a.name) == (
            b.trace_id,
            b.span_id,
            b.parent_span_id,
            b.name,
        )
        assert a.attributes == b.attributes
        assert a.start_time_unix_nano == b.start_time_unix_nano
        assert a.resource_attributes == {"service.name": "test-svc"}
    assert from_pb.spans[0].trace_id == trace_id(1)
    assert from_pb.spans[1].parent_span_id == span_id(1)
    assert from_pb.spans[0].attributes["d"] == ["x", "y"]


def test_json_accepts_snake_case_names_and_string_enums() -> None:
    doc = {
        "resource_spans": [
            {
                "scope_spans": [
                    {
                        "spans": [
                            {
                                "trace_id": "AB" * 16,
                                "span_id": "cd" * 8,
                                "name": "x",
                                "kind": "SPAN_KIND_SERVER",
                                "start_time_unix_nano": 5,
                                "end_time_unix_nano": "7",
                                "status": {"code": "STATUS_CODE_ERROR"},
                                "unknownField": {"ignored": True},
                            }
                        ]
                    }
                ]
            }
        ]
    }
    batch = otlp.decode_json(orjson.dumps(doc))
    span = batch.spans[0]
    assert span.trace_id == "ab" * 16 and span.kind == 2 and span.status_code == 2
    assert span.end_time_unix_nano == 7


@pytest.mark.parametrize(
    ("trace_hex", "span_hex", "reason"),
    [
        ("00" * 16, "01" * 8, "all zeros"),
        ("ab" * 15, "01" * 8, "16 bytes"),
        ("ab" * 16, "00" * 8, "all zeros"),
        ("zz" * 16, "01" * 8, "16 bytes"),
    ],
)
def test_invalid_ids_reject_only_that_span(trace_hex: str, span_hex: str, reason: str) -> None:
    specs = [SpanSpec(1, 1), SpanSpec(0, 0, trace_hex=trace_hex, span_hex=span_hex)]
    batch = otlp.decode_json(json_request(specs))
    assert len(batch.spans) == 1 and batch.rejected == 1
    assert reason in batch.error_message


@pytest.mark.parametrize("body", [b"\x0a\xff\xff\xff", b"\xff" * 10])
def test_undecodable_protobuf_raises(body: bytes) -> None:
    with pytest.raises(otlp.OtlpDecodeError):
        otlp.decode_protobuf(body)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b"nope",
        b'{"resourceSpans": 5}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [7]}]}]}',
    ],
)
def test_undecodable_json_raises(body: bytes) -> None:
    with pytest.raises(otlp.OtlpDecodeError):
        otlp.decode_json(body)


def test_response_encodings() -> None:
    body, content_type = otlp.encode_response(2, "bad ids", protobuf=False)
    assert content_type == "application/json"
    assert orjson.loads(body) == {
        "partialSuccess": {"rejectedSpans": "2", "errorMessage": "bad ids"}
    }
    body, content_type = otlp.encode_response(0, "", protobuf=True)
    assert content_type == "application/x-protobuf" and body == b""
