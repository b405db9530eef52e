from __future__ import annotations

import orjson
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

from observatory.ingest import otlp, otlp_signals
from observatory.ingest.otlp import OtlpDecodeError


def test_error_message_names_the_first_five_problems_and_counts_the_rest() -> None:
    batch = otlp_signals.DecodedRecords()
    assert batch.error_message == ""
    for n in range(7):
        batch.reject(f"problem {n}")
    assert batch.rejected == 7
    assert batch.error_message == "; ".join(f"problem {n}" for n in range(5)) + " (and 2 more)"


@pytest.mark.parametrize(
    ("request_type", "name"),
    [
        (logs_service_pb2.ExportLogsServiceRequest, "ExportLogsServiceRequest"),
        (metrics_service_pb2.ExportMetricsServiceRequest, "ExportMetricsServiceRequest"),
    ],
)
def test_an_undecodable_protobuf_body_names_the_request_type(request_type: type, name: str) -> None:
    with pytest.raises(OtlpDecodeError, match=f"not a valid OTLP protobuf {name}:"):
        otlp.parse_protobuf(request_type(), b"\xff\xff\xff")


def test_pb_items_hand_over_each_item_with_its_resource_and_scope() -> None:
    request = logs_service_pb2.ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    attribute = resource_logs.resource.attributes.add()
    attribute.key, attribute.value.string_value = "service.name", "svc"
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "lib"
    scope_logs.log_records.add().severity_text = "INFO"
    scope_logs.log_records.add().severity_text = "WARN"
    items = list(otlp_signals.pb_items(request.resource_logs, "scope_logs", "log_records"))
    assert [(r, rj, s.name, i.severity_text) for r, rj, s, i in items] == [
        ({"service.name": "svc"}, '{"service.name":"svc"}', "lib", "INFO"),
        ({"service.name": "svc"}, '{"service.name":"svc"}', "lib", "WARN"),
    ]


_LOG_FIELDS = (
    ("resourceLogs", "resource_logs"),
    ("scopeLogs", "scope_logs"),
    ("logRecords", "log_records"),
)


def test_json_items_accept_snake_case_and_treat_a_bad_scope_as_empty() -> None:
    doc = {
        "resource_logs": [
            {"resource": {"attributes": []}, "scopeLogs": [{"scope": 7, "logRecords": [{"a": 1}]}]}
        ]
    }
    assert list(otlp_signals.json_items(doc, *_LOG_FIELDS)) == [({}, "{}", {}, {"a": 1})]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"[]", "body must be a JSON object with resourceLogs"),
        (b"{", "body is not valid JSON"),
        (b'{"resourceLogs": [1]}', "resourceLogs entries must be objects"),
        (b'{"resourceLogs": [{"scopeLogs": [1]}]}', "scopeLogs entries must be objects"),
        (b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [1]}]}]}', "logRecords entries must"),
        (b'{"resourceLogs": {}}', "resourceLogs must be a list"),
    ],
)
def test_decode_json_refuses_bodies_of_the_wrong_shape(doc: bytes, message: str) -> None:
    def walk(doc: object, batch: otlp_signals.DecodedRecords) -> None:
        assert isinstance(doc, dict)
        list(otlp_signals.json_items(doc, *_LOG_FIELDS))

    with pytest.raises(OtlpDecodeError, match=message):
        otlp_signals.decode_json(doc, "resourceLogs", walk)


def test_decode_json_maps_shape_errors_of_the_walk_to_decode_errors() -> None:
    def walk(doc: object, batch: otlp_signals.DecodedRecords) -> None:
        raise TypeError("unhashable")

    with pytest.raises(OtlpDecodeError, match="does not have the OTLP/JSON shape: unhashable"):
        otlp_signals.decode_json(orjson.dumps({}), "resourceLogs", walk)
