"""The OTLP receiver and the query API on both databases: ack after commit, idempotent retries,
error paths, project isolation, cost from genai-prices and custom prices."""

from __future__ import annotations

from decimal import Decimal

import genai_prices
import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from tests.integration.conftest import App
from tests.otlp_builder import (
    BASE_NS,
    SpanSpec,
    agent_trace,
    gz,
    json_request,
    llm_attributes,
    protobuf_request,
    trace_id,
)

RANGE = {"start": str(BASE_NS // 10**9 - 3600), "end": str(BASE_NS // 10**9 + 86400)}


def expected_cost(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    calc = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=input_tokens, output_tokens=output_tokens),
        model,
        provider_id="openai",
    )
    return Decimal(calc.total_price)


def test_protobuf_ingest_is_readable_right_after_the_answer(app: App) -> None:
    response = app.ingest(protobuf_request(agent_trace(1, llm_calls=2)))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-protobuf"
    parsed = ExportTraceServiceResponse.FromString(response.content)
    assert not parsed.HasField("partial_success")
    # Ack means committed: the trace is queryable immediately, with cost and tokens.
    detail = app.get(f"/api/v1/traces/{trace_id(1)}")
    assert detail.status_code == 200, detail.text
    body = detail.json()
    assert body["trace"]["span_count"] == 3
    assert body["trace"]["llm_call_count"] == 2
    assert body["trace"]["input_tokens"] == 2000
    assert Decimal(body["trace"]["total_cost_usd"]) == 2 * expected_cost("gpt-4o", 1000, 500)
    root = body["spans"][0]
    assert root["name"] == "agent" and len(root["children"]) == 2
    child = root["children"][0]
    assert child["provider"] == "openai" and child["request_model"] == "gpt-4o"
    assert child["user_id"] == "user-1"  # inherited from the root span of the same request
    assert Decimal(child["total_cost_usd"]) == expected_cost("gpt-4o", 1000, 500)
    assert child["attributes"]["gen_ai.usage.input_tokens"] == 1000


def test_json_and_gzip_ingest(app: App) -> None:
    response = app.ingest(
        gz(json_request(agent_trace(2, llm_calls=1))),
        content_type="application/json",
        **{"Content-Encoding": "gzip"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {}
    listing = app.get("/api/v1/traces", params=RANGE).json()
    assert [t["trace_id"] for t in listing["data"]] == [trace_id(2)]
    assert listing["data"][0]["models"] == ["gpt-4o"]


def test_retried_batch_is_not_stored_or_counted_twice(app: App) -> None:
    body = protobuf_request(agent_trace(3, llm_calls=3))
    for _ in range(3):
        assert app.ingest(body).status_code == 200
    trace = app.get(f"/api/v1/traces/{trace_id(3)}").json()["trace"]
    assert trace["span_count"] == 4
    spans = app.get("/api/v1/spans", params={**RANGE, "limit": 100}).json()["data"]
    assert len(spans) == 4
    summary = app.get("/api/v1/analytics/summary", params=RANGE).json()["total"]
    assert summary["requests"] == 3
    assert summary["input_tokens"] == 3000


def test_partial_success_for_individually_invalid_spans(app: App) -> None:
    specs = agent_trace(4, llm_calls=1)
    specs.append(SpanSpec(4, 999, None, "bad", trace_hex="00" * 16))  # all-zero trace id
    response = app.ingest(json_request(specs), content_type="application/json")
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1"
    assert "trace_id" in partial["errorMessage"]
    assert app.get(f"/api/v1/traces/{trace_id(4)}").json()["trace"]["span_count"] == 2


def test_bad_requests_change_nothing(app: App) -> None:
    assert app.ingest(b"\xff\x00garbage").status_code == 400
    assert app.ingest(b"{not json", content_type="application/json").status_code == 400
    assert app.ingest(b"[1,2]", content_type="application/json").status_code == 400
    unsupported = app.ingest(b"x", content_type="text/plain")
    assert unsupported.status_code == 415
    assert app.ingest(b"x", **{"Content-Encoding": "br"}).status_code == 415
    bad_gzip = app.ingest(b"not gzip", **{"Content-Encoding": "gzip"})
    assert bad_gzip.status_code == 400
    assert app.get("/api/v1/traces", params=RANGE).json()["data"] == []


def test_body_limit_answers_413_also_for_gzip_bombs(app_factory, database_url: str) -> None:  # type: ignore[no-untyped-def]
    small = app_factory(database_url, max_body_bytes=4096)
    big = protobuf_request([SpanSpec(5, 1, attributes={"blob": "x" * 10_000})])
    assert small.ingest(big).status_code == 413
    bomb = gz(b'{"resourceSpans": []' + b" " * 100_000 + b"}")
    assert len(bomb) < 4096
    response = small.ingest(bomb, content_type="application/json", **{"Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert small.ingest(protobuf_request(agent_trace(6, 1))).status_code == 200


def test_authentication_and_roles(app: App) -> None:
    body = protobuf_request(agent_trace(7, 1))
    no_key = app.client.post(
        "/v1/traces", content=body, headers={"Content-Type": "application/x-protobuf"}
    )
    assert no_key.status_code == 401
    assert app.ingest(body, key="obs_wrong").status_code == 401
    read_key = app.create_key("read")
    ingest_key = app.create_key("ingest")
    assert app.ingest(body, key=read_key).status_code == 403
    assert app.ingest(body, key=ingest_key).status_code == 200
    assert app.get("/api/v1/traces", key=ingest_key).status_code == 403
    assert app.get("/api/v1/traces", key=read_key).status_code == 200
    assert app.get("/api/v1/admin/keys", key=read_key).status_code == 403
    # Revocation takes effect at once in the process that revoked.
    keys = app.get("/api/v1/admin/keys").json()["data"]
    ingest_id = next(k["key_id"] for k in keys if k["role"] == "ingest")
    assert (
        app.client.delete(f"/api/v1/admin/keys/{ingest_id}", headers=app.headers()).status_code
        == 200
    )
    assert app.ingest(body, key=ingest_key).status_code == 401
    audit = app.get("/api/v1/admin/audit").json()["data"]
    actions = {(a["action"], a["outcome"]) for a in audit}
    assert ("key.create", "ok") in actions and ("key.revoke", "ok") in actions
    assert ("auth.refused", "forbidden") in actions


def test_projects_are_isolated(app: App) -> None:
    created = app.client.post(
        "/api/v1/admin/projects", json={"name": "other"}, headers=app.headers()
    )
    assert created.status_code == 201, created.text
    other_key = created.json()["admin_key"]
    assert app.ingest(protobuf_request(agent_trace(8, 1)), key=other_key).status_code == 200
    assert app.ingest(protobuf_request(agent_trace(9, 1))).status_code == 200
    mine = [t["trace_id"] for t in app.get("/api/v1/traces", params=RANGE).json()["data"]]
    theirs = [
        t["trace_id"] for t in app.get("/api/v1/traces", key=other_key, params=RANGE).json()["data"]
    ]
    assert mine == [trace_id(9)] and theirs == [trace_id(8)]
    assert app.get(f"/api/v1/traces/{trace_id(8)}").status_code == 404
    assert (
        app.get("/api/v1/analytics/summary", key=other_key, params=RANGE).json()["total"][
            "requests"
        ]
        == 1
    )
    duplicate = app.client.post(
        "/api/v1/admin/projects", json={"name": "other"}, headers=app.headers()
    )
    assert duplicate.status_code == 409


def test_custom_price_overrides_the_catalogue(app: App) -> None:
    response = app.client.put(
        "/api/v1/admin/prices",
        headers=app.headers(),
        json={"model": "my-finetune", "input_usd_per_mtok": "2", "output_usd_per_mtok": "8"},
    )
    assert response.status_code == 200, response.text
    specs = [
        SpanSpec(
            10,
            1,
            attributes=llm_attributes("my-finetune", input_tokens=1_000_000, output_tokens=500_000),
        )
    ]
    specs.append(SpanSpec(10, 2, attributes=llm_attributes("no-such-model-xyz")))
    assert app.ingest(protobuf_request(specs)).status_code == 200
    spans = {s["request_model"]: s for s in app.get("/api/v1/spans", params=RANGE).json()["data"]}
    assert Decimal(spans["my-finetune"]["total_cost_usd"]) == Decimal("6")
    # Unknown models get no cost, never a made-up zero.
    assert spans["no-such-model-xyz"]["total_cost_usd"] is None


def test_trace_list_filters_sorting_and_keyset_pagination(app: App) -> None:
    specs = []
    for n in range(20, 32):
        specs += agent_trace(
            n, llm_calls=1, model="gpt-4o-mini" if n % 2 else "gpt-4o", user=f"user-{n % 3}"
        )
    specs.append(
        SpanSpec(
            40,
            4000,
            None,
            "failing",
            BASE_NS + 40 * 10**9,
            error=True,
            attributes=llm_attributes("gpt-4o"),
        )
    )
    assert app.ingest(protobuf_request(specs)).status_code == 200
    seen: list[str] = []
    cursor = None
    while True:
        params = {**RANGE, "limit": 5, **({"cursor": cursor} if cursor else {})}
        page = app.get("/api/v1/traces", params=params).json()
        seen += [t["trace_id"] for t in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [trace_id(n) for n in [40, *range(31, 19, -1)]]
    by_model = app.get(
        "/api/v1/traces", params={**RANGE, "model": "gpt-4o-mini", "user_id": "user-0"}
    ).json()
    assert sorted(t["trace_id"] for t in by_model["data"]) == [trace_id(21), trace_id(27)]
    errors = app.get("/api/v1/traces", params={**RANGE, "status": "error"}).json()["data"]
    assert [t["trace_id"] for t in errors] == [trace_id(40)]
    by_cost = app.get(
        "/api/v1/traces", params={**RANGE, "sort": "cost", "order": "desc", "limit": 3}
    ).json()
    costs = [Decimal(t["total_cost_usd"]) for t in by_cost["data"]]
    assert costs == sorted(costs, reverse=True)
    page2 = app.get(
        "/api/v1/traces", params={**RANGE, "sort": "cost", "cursor": by_cost["next_cursor"]}
    ).json()
    assert not {t["trace_id"] for t in page2["data"]} & {t["trace_id"] for t in by_cost["data"]}
    named = app.get("/api/v1/traces", params={**RANGE, "name": "fail"}).json()["data"]
    assert [t["trace_id"] for t in named] == [trace_id(40)]
    bad = app.get("/api/v1/traces", params={"cursor": "bm90LWEtY3Vyc29y"})
    assert bad.status_code == 422
    assert app.get("/api/v1/traces", params={"start": "yesterday"}).status_code == 422


def test_span_search_by_attribute(app: App) -> None:
    specs = [
        SpanSpec(50, 1, attributes={**llm_attributes("gpt-4o"), "app.feature": "search"}),
        SpanSpec(50, 2, attributes={**llm_attributes("gpt-4o"), "app.feature": "chat"}),
    ]
    assert app.ingest(protobuf_request(specs)).status_code == 200
    found = app.get("/api/v1/spans", params={**RANGE, "attribute": "app.feature=search"}).json()[
        "data"
    ]
    assert [s["span_id"] for s in found] == [f"{1:016x}"]
    injection = app.get("/api/v1/spans", params={**RANGE, "service": "x' OR '1'='1"}).json()["data"]
    assert injection == []


def test_analytics_grouping_and_timeseries(app: App) -> None:
    specs = []
    for n in range(60, 66):
        specs += agent_trace(
            n,
            llm_calls=2,
            model="gpt-4o" if n < 63 else "gpt-4o-mini",
            start_ns=BASE_NS + (n - 60) * 3600 * 10**9,
            user=f"u{n % 2}",
        )
    assert app.ingest(protobuf_request(specs)).status_code == 200
    groups = app.get("/api/v1/analytics/summary", params={**RANGE, "group_by": "model"}).json()[
        "groups"
    ]
    assert {g["group"]: g["requests"] for g in groups} == {"gpt-4o": 6, "gpt-4o-mini": 6}
    users = app.get("/api/v1/analytics/summary", params={**RANGE, "group_by": "user"}).json()[
        "groups"
    ]
    assert {g["group"]: g["requests"] for g in users} == {"u0": 6, "u1": 6}
    series = app.get("/api/v1/analytics/timeseries", params={**RANGE, "bucket": "1h"}).json()[
        "points"
    ]
    assert [p["requests"] for p in series] == [2] * 6
    assert all(p["bucket_start_unix_s"] % 3600 == 0 for p in series)
    too_many = app.get("/api/v1/analytics/timeseries", params={"range": "30d", "bucket": "1m"})
    assert too_many.status_code == 422


def test_rollup_percentiles_agree_with_exact_ones(app: App) -> None:
    import random

    rng = random.Random(7)
    durations = [rng.lognormvariate(5.5, 1.0) for _ in range(2000)]  # ~250 ms median, long tail
    specs = [
        SpanSpec(70, i + 1, None, "chat", BASE_NS + i * 1_000_000, d, attributes=llm_attributes())
        for i, d in enumerate(durations)
    ]
    assert app.ingest(protobuf_request(specs)).status_code == 200
    latency = app.get("/api/v1/analytics/summary", params=RANGE).json()["total"]["latency_ms"]
    ordered = sorted(durations)
    for q in (50, 90, 95, 99):
        exact = ordered[max(0, -(-q * len(ordered) // 100) - 1)]
        assert abs(latency[f"p{q}"] - exact) / exact < 0.05, (q, latency[f"p{q}"], exact)


def test_openapi_document_lists_the_api(app: App) -> None:
    doc = app.client.get("/openapi.json").json()
    for path in (
        "/v1/traces",
        "/api/v1/traces",
        "/api/v1/traces/{trace_id}",
        "/api/v1/spans",
        "/api/v1/analytics/summary",
        "/api/v1/analytics/timeseries",
        "/api/v1/admin/keys",
    ):
        assert path in doc["paths"], path
    assert orjson.loads(orjson.dumps(doc))  # serialisable


def test_health_and_metrics(app: App) -> None:
    assert app.client.get("/health/live").json()["status"] == "ok"
    ready = app.client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
    app.ingest(protobuf_request(agent_trace(80, 1)))
    text = app.client.get("/metrics").text
    for name in (
        "http_requests_total",
        "http_request_duration_seconds",
        "db_query_duration_seconds",
        "cache_hit_rate",
        "observatory_spans_accepted_total",
        "observatory_writer_queue_depth",
        "observatory_llm_cost_usd_total",
    ):
        assert name in text, name
    response = app.client.get("/health/live", headers={"X-Request-ID": "abc123"})
    assert response.headers["x-request-id"] == "abc123"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_hourly_rollups_answer_exactly_like_minutes(app: App, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import random

    from observatory.store import queries

    rng = random.Random(3)
    specs = []
    for n in range(300):
        start = BASE_NS + rng.randrange(0, 40 * 3600) * 10**9
        specs += agent_trace(
            1000 + n, llm_calls=1, start_ns=start, model=rng.choice(["gpt-4o", "gpt-4o-mini"])
        )
        specs[-1].duration_ms = rng.uniform(5, 5000)
    assert app.ingest(protobuf_request(specs)).status_code == 200
    # A range with partial hours at both ends, and an open one.
    ranges = [
        queries.Filters(
            start_time=BASE_NS + 1234 * 10**9, end_time=BASE_NS + 37 * 3600 * 10**9 + 777 * 10**9
        ),
        queries.Filters(start_time=BASE_NS - 3600 * 10**9),
    ]
    segments = queries.rollup_segments(ranges[0], None)
    assert [s[0].name for s in segments] == ["rollups_1m", "rollups_1h", "rollups_1m"]
    results = {}
    for minutes_only in (False, True):
        if minutes_only:
            monkeypatch.setattr(queries, "HOURLY_FROM_SECONDS", 10**12)
        with app.state.db.read() as conn:
            for i, f in enumerate(ranges):
                for group_by, bucket in (
                    (None, None),
                    ("model", None),
                    (None, "1h"),
                    ("model", "6h"),
                ):
                    results[(minutes_only, i, group_by, bucket)] = queries.analytics(
                        conn, 1, f, group_by=group_by, bucket=bucket
                    )

    def rounded(value: object) -> object:
        # Sums of floats in another order differ in the last bits.
        if isinstance(value, float):
            return round(value, 6)
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rounded(v) for v in value]
        return value

    for key, value in results.items():
        if not key[0]:
            assert rounded(value) == rounded(results[(True, *key[1:])]), key
            assert value and value[0]["requests"] > 0


def test_ingest_invalidates_cached_dashboards(app_factory, database_url, redis_url) -> None:  # type: ignore[no-untyped-def]
    import redis

    app = app_factory(database_url, redis_url=redis_url, cache_ttl_seconds=300)
    client = redis.Redis.from_url(redis_url)
    generation = "obs:gen:1"
    before = int(client.get(generation) or 0)
    assert app.ingest(protobuf_request(agent_trace(90, llm_calls=2))).status_code == 200
    first = app.get("/api/v1/analytics/summary", params=RANGE).json()["total"]["requests"]
    again = app.get("/api/v1/analytics/summary", params=RANGE).json()["total"]["requests"]
    assert first == again == 2
    # The next export commits, and its batch invalidates the project's cached answers (once per
    # committed batch, before the export is answered): the very next read sees it.
    assert app.ingest(protobuf_request(agent_trace(91, llm_calls=3))).status_code == 200
    assert app.get("/api/v1/analytics/summary", params=RANGE).json()["total"]["requests"] == 5
    assert int(client.get(generation) or 0) == before + 2
