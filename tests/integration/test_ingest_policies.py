"""Redaction, sampling, limits and rate limits on the ingest path."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Callable

import httpx
import psycopg
import pytest
from sqlalchemy import text

from tests.conftest import Server
from tests.integration.conftest import App
from tests.otlp_builder import (
    BASE_NS,
    SpanSpec,
    agent_trace,
    json_request,
    llm_attributes,
    protobuf_request,
    trace_id,
)

RANGE = {"start": str(BASE_NS // 10**9 - 3600), "end": str(BASE_NS // 10**9 + 40 * 86400)}
SAMPLES = {
    "email": "jane.doe@example.com",
    "phone": "+1 415-555-0132",
    "credit_card": "4111 1111 1111 1111",
    "us_ssn": "123-45-6789",
    "ip_address": "203.0.113.77",
    "api_key": "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    "anthropic": "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz012345",
    "bearer_token": "Bearer abcdefghijklmnopqrstuvwxyz012345",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "private_key": "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\n"
    "-----END RSA PRIVATE KEY-----",
}
ALL_ON = {
    "detectors": {
        name: True
        for name in (
            "email",
            "phone",
            "credit_card",
            "us_ssn",
            "ip_address",
            "api_key",
            "bearer_token",
            "jwt",
            "private_key",
        )
    }
}


def leaky_span(n: int) -> list[SpanSpec]:
    blob = " | ".join(SAMPLES.values())
    messages = json.dumps(
        [{"role": "user", "parts": [{"type": "text", "content": f"my data: {blob}"}]}]
    )
    return [
        SpanSpec(
            n,
            1,
            None,
            f"call for {SAMPLES['email']}",
            attributes={
                **llm_attributes("gpt-4o"),
                "gen_ai.input.messages": messages,
                "app.customer": SAMPLES["email"],
                "app.card": SAMPLES["credit_card"],
                "net.peer.ip": SAMPLES["ip_address"],
                "nested": [SAMPLES["us_ssn"], "ok"],
            },
            events=[{"name": "gen_ai.user.message", "attributes": {"content": SAMPLES["phone"]}}],
        )
    ]


def everything_stored(app: App) -> str:
    """Every text column of every span, as stored."""
    with app.state.db.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM spans")).all()
    return "\n".join(str(tuple(r)) for r in rows)


def put(app: App, section: str, body: dict) -> None:  # type: ignore[type-arg]
    response = app.client.put(f"/api/v1/admin/settings/{section}", json=body, headers=app.headers())
    assert response.status_code == 200, response.text


def test_no_detector_sample_survives_mask(app: App, caplog: pytest.LogCaptureFixture) -> None:
    put(app, "redaction", ALL_ON)
    assert app.ingest(protobuf_request(leaky_span(1))).status_code == 200
    stored = everything_stored(app)
    api = (
        app.get(f"/api/v1/traces/{trace_id(1)}").text + app.get("/api/v1/spans", params=RANGE).text
    )
    for name, sample in SAMPLES.items():
        needle = sample.splitlines()[1] if name == "private_key" else sample
        for where, haystack in (("database", stored), ("api", api), ("logs", caplog.text)):
            assert needle not in haystack, (name, where)
    span = app.get("/api/v1/spans", params=RANGE).json()["data"][0]
    assert span["attributes"]["app.customer"] == "[REDACTED:EMAIL]"
    assert span["attributes"]["nested"] == ["[REDACTED:US_SSN]", "ok"]
    assert "[REDACTED:CREDIT_CARD]" in span["prompt"][0]["parts"][0]["content"]
    assert span["name"] == "call for [REDACTED:EMAIL]"
    # Numbers that fail the Luhn check are not cards.
    assert (
        app.ingest(
            protobuf_request([SpanSpec(2, 1, attributes={"order": "4111 1111 1111 1112"})])
        ).status_code
        == 200
    )
    order = app.get(f"/api/v1/traces/{trace_id(2)}").json()["spans"][0]["attributes"]["order"]
    assert order == "4111 1111 1111 1112"


def test_hash_keeps_equal_values_joinable_and_drop_removes_content(app: App) -> None:
    put(
        app,
        "redaction",
        {**ALL_ON, "action": "hash", "custom": [{"name": "ticket", "pattern": "TCK-[0-9]{6}"}]},
    )
    specs = [
        SpanSpec(
            3,
            1,
            attributes={
                "a": "mail jane.doe@example.com",
                "b": "jane.doe@example.com",
                "c": "ticket TCK-123456",
            },
        )
    ]
    assert app.ingest(protobuf_request(specs)).status_code == 200
    attrs = app.get(f"/api/v1/traces/{trace_id(3)}").json()["spans"][0]["attributes"]
    token = attrs["b"]
    assert token.startswith("[EMAIL:") and attrs["a"] == f"mail {token}"
    assert attrs["c"].startswith("ticket [TICKET:")
    put(app, "redaction", {**ALL_ON, "action": "drop"})
    assert app.ingest(protobuf_request(leaky_span(4))).status_code == 200
    span = app.get(f"/api/v1/traces/{trace_id(4)}").json()["spans"][0]
    assert span["prompt"] is None
    assert span["attributes"]["app.customer"] == "[REDACTED]"
    assert span["attributes"]["gen_ai.request.model"] == "gpt-4o"


def test_store_no_content_at_all(app: App) -> None:
    put(app, "redaction", {"store_content": False})
    specs = [
        SpanSpec(
            5,
            1,
            attributes={
                **llm_attributes(),
                "gen_ai.input.messages": '[{"role":"user","content":"secret plan"}]',
                "gen_ai.prompt.0.content": "secret plan",
                "input.value": "secret plan",
            },
            events=[{"name": "gen_ai.choice", "attributes": {"message": "secret plan"}}],
        )
    ]
    assert app.ingest(protobuf_request(specs)).status_code == 200
    assert "secret plan" not in everything_stored(app)
    span = app.get(f"/api/v1/traces/{trace_id(5)}").json()["spans"][0]
    assert span["prompt"] is None and span["completion"] is None
    assert span["input_tokens"] == 1000  # usage is not content


def test_bad_redaction_settings_are_refused(app: App) -> None:
    for body in (
        {"detectors": {"dna": True}},
        {"action": "shred"},
        {"custom": [{"name": "x", "pattern": "("}]},
        {"custom": [{"name": "x", "pattern": "a*"}]},
    ):
        response = app.client.put(
            "/api/v1/admin/settings/redaction", json=body, headers=app.headers()
        )
        assert response.status_code == 422, body
    assert app.get("/api/v1/admin/settings/redaction").json()["action"] == "mask"


def test_sampled_dashboards_equal_unsampled_ones(app: App) -> None:
    other = app.client.post(
        "/api/v1/admin/projects", json={"name": "sampled"}, headers=app.headers()
    )
    sampled_key = other.json()["admin_key"]
    response = app.client.put(
        "/api/v1/admin/settings/sampling",
        headers=app.headers(sampled_key),
        json={"rate": 0.25, "keep_errors": True},
    )
    assert response.status_code == 200, response.text
    specs = []
    for n in range(100, 180):
        specs += agent_trace(n, llm_calls=2, start_ns=BASE_NS + n * 10**9)
    specs.append(SpanSpec(999, 1, None, "boom", BASE_NS, error=True, attributes=llm_attributes()))
    for spec in specs:  # random-looking trace ids, as real tracers make them
        spec.trace_hex = hashlib.md5(str(spec.trace).encode()).hexdigest()
    body = protobuf_request(specs)
    assert app.ingest(body).status_code == 200
    assert app.ingest(body, key=sampled_key).status_code == 200
    full = app.get("/api/v1/analytics/summary", params={**RANGE, "group_by": "model"}).json()
    part = app.get(
        "/api/v1/analytics/summary", key=sampled_key, params={**RANGE, "group_by": "model"}
    ).json()
    assert full == part
    series_full = app.get("/api/v1/analytics/timeseries", params={**RANGE, "bucket": "1h"}).json()[
        "points"
    ]
    series_part = app.get(
        "/api/v1/analytics/timeseries", key=sampled_key, params={**RANGE, "bucket": "1h"}
    ).json()
    assert series_full == series_part["points"]
    stored = app.get("/api/v1/traces", key=sampled_key, params={**RANGE, "limit": 500}).json()[
        "data"
    ]
    assert 5 < len(stored) < 60  # about a quarter of 81
    error_trace = hashlib.md5(b"999").hexdigest()
    assert error_trace in {t["trace_id"] for t in stored}  # errors are always kept
    kept = {t["trace_id"] for t in stored}
    for t in stored:  # whole traces are kept, never parts
        assert t["span_count"] == (1 if t["trace_id"] == error_trace else 3)
    assert len(kept) == len(stored)


def test_limits_truncate_drop_and_reject(
    app_factory: Callable[..., App], database_url: str
) -> None:
    app = app_factory(
        database_url,
        max_attribute_length=1000,
        max_attributes_per_span=20,
        max_spans_per_request=50,
        max_events_per_span=2,
    )
    attrs = {f"k{i}": i for i in range(30)}
    attrs["k0"] = "y" * 5000
    events = [{"name": f"e{i}"} for i in range(5)]
    far_future = BASE_NS + 10 * 365 * 86400 * 10**9
    specs = [
        SpanSpec(6, 1, attributes=attrs, events=events),
        SpanSpec(6, 2, start_ns=far_future),
        SpanSpec(6, 3, start_ns=10**9),
        SpanSpec(6, 4, attributes={"ratio": float("nan")}),
    ]
    response = app.ingest(json_request(specs), content_type="application/json")
    assert response.status_code == 200, response.text
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "2"
    assert "future" in partial["errorMessage"] and "2000" in partial["errorMessage"]
    spans = {s["span_id"]: s for s in app.get("/api/v1/spans", params={"limit": 10}).json()["data"]}
    first = spans[f"{1:016x}"]["attributes"]
    assert len(first["k0"]) < 1100 and first["k0"].endswith("…[truncated]")
    assert first["observatory.truncated_attributes"] == ["k0"]
    assert first["observatory.dropped_attributes_count"] == 10
    assert first["observatory.dropped_events_count"] == 3
    assert len(spans[f"{1:016x}"]["events"]) == 2
    assert spans[f"{4:016x}"]["attributes"]["ratio"] == "NaN"
    many = [SpanSpec(7, i + 1) for i in range(51)]
    assert app.ingest(protobuf_request(many)).status_code == 413


def test_key_rate_limit_answers_429_with_headers(app: App) -> None:
    put(app, "rate-limits", {"key_requests_per_minute": 5})
    read_key = app.create_key("read")
    statuses = []
    for _ in range(8):
        response = app.get("/api/v1/traces", key=read_key)
        statuses.append(response.status_code)
    assert statuses[:5] == [200] * 5 and 429 in statuses
    limited = app.get("/api/v1/traces", key=read_key)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert (
        limited.headers["ratelimit-limit"] == "5" and limited.headers["ratelimit-remaining"] == "0"
    )
    ok = app.get("/api/v1/traces")  # another key has its own budget
    assert ok.status_code == 200
    assert "ratelimit-remaining" in ok.headers


def test_project_span_rate_limit_is_shared_by_two_servers(
    server_factory: Callable[..., Server], fresh_pg_url: str, redis_url: str
) -> None:
    env = {
        "OBSERVATORY_REDIS_URL": redis_url,
        "OBSERVATORY_RATE_LIMIT_PROJECT_SPANS_PER_SECOND": "10",
    }
    first = server_factory(database_url=fresh_pg_url, env=env)
    second = server_factory(database_url=fresh_pg_url, env=env)
    headers = {"Content-Type": "application/x-protobuf"}
    with first.client() as a, second.client(key=first.admin_key) as b:
        # A budget of 10 spans, refilled at 10 a second; each request carries 5 spans.
        statuses = [
            a.post("/v1/traces", content=protobuf_request(agent_trace(1, 4)), headers=headers),
            a.post("/v1/traces", content=protobuf_request(agent_trace(2, 4)), headers=headers),
            b.post("/v1/traces", content=protobuf_request(agent_trace(3, 4)), headers=headers),
        ]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    # The second server refused although it had seen no traffic: the bucket is shared.
    assert int(statuses[2].headers["retry-after"]) >= 1


def test_slow_body_gets_408_and_does_not_block_others(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory(
        env={"OBSERVATORY_BODY_READ_TIMEOUT_SECONDS": "1", "OBSERVATORY_MAX_INFLIGHT_INGEST": "1"}
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
        slow.sendall(
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            + f"Authorization: Bearer {server.admin_key}\r\n".encode()
            + b"Content-Length: 100000\r\n\r\n"
            + b"\x0a" * 10
        )
        time.sleep(0.3)
        # The one in-flight slot is taken: ingest is shed at once, health and queries answer.
        with server.client() as client:
            shed = client.post(
                "/v1/traces",
                content=protobuf_request(agent_trace(1, 1)),
                headers={"Content-Type": "application/x-protobuf"},
            )
            assert shed.status_code == 503 and shed.headers["retry-after"]
            assert client.get("/health/live").status_code == 200
            assert client.get("/api/v1/traces").status_code == 200
        reply = slow.recv(1000)
    assert reply.startswith(b"HTTP/1.1 408")
    with server.client() as client:
        assert (
            client.post(
                "/v1/traces",
                content=protobuf_request(agent_trace(2, 1)),
                headers={"Content-Type": "application/x-protobuf"},
            ).status_code
            == 200
        )
    _ = (httpx, psycopg)
