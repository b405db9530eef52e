"""Analytics over raw spans (store/queries.py ``_analytics_raw``: user and session breakdowns,
filters the rollups lack) on both databases: the database aggregates, and the answers are those of
the Python aggregation over every matching span it replaced, kept here as the reference."""

from __future__ import annotations

import math
import random
from typing import Any

from sqlalchemy import Double, and_, func, literal, literal_column, select, union_all
from sqlalchemy.engine import Connection

from observatory.store import histogram, queries
from observatory.store.schema import spans, traces
from tests.compare import same_answers
from tests.integration.conftest import App
from tests.otlp_builder import BASE_NS, SpanSpec, llm_attributes, protobuf_request

HOUR_NS = 3600 * 10**9
RANGE = {"start_time": BASE_NS, "end_time": BASE_NS + 80 * HOUR_NS}
USERS = ["user-1", "user-2", "user-3", "user-4", None]
SESSIONS = ["session-1", "session-2", "session-3", None]
# The last model has no price: its spans have no cost.
MODELS = [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("acme", "no-such-model-xyz")]
BOUNDS = histogram.lower_bounds()


def _reference(
    conn: Connection,
    project_id: int,
    f: queries.Filters,
    *,
    group_by: str | None,
    bucket: str | None,
    llm_only: bool,
    limit: int,
) -> list[dict[str, Any]]:
    """The aggregation _analytics_raw did before: every matching span to Python."""
    step = queries.BUCKET_SECONDS[bucket] if bucket else None
    s = spans.c
    trace_level = group_by in queries.GROUP_BY_RAW or bool(f.user_id or f.session_id)
    user_id, session_id = f.user_id, f.session_id
    f = queries.Filters(**{**vars(f), "user_id": None, "session_id": None})
    cond = queries._span_conditions(conn, project_id, f)
    if user_id:
        cond.append(func.coalesce(s.user_id, traces.c.user_id) == user_id)
    if session_id:
        cond.append(func.coalesce(s.session_id, traces.c.session_id) == session_id)
    if llm_only:
        cond.append(func.coalesce(s.response_model, s.request_model).is_not(None))
    if group_by in queries.GROUP_BY_RAW:
        name = queries.GROUP_BY_RAW[group_by]
        group_col: Any = func.coalesce(getattr(s, name), getattr(traces.c, name))
    elif group_by == "model":
        group_col = func.coalesce(s.response_model, s.request_model, "")
    elif group_by:
        group_col = func.coalesce(getattr(s, queries.GROUP_BY_ROLLUP[group_by]), "")
    else:
        group_col = literal_column("''")
    secs = s.start_time_unix_nano.op("/")(1_000_000_000)
    b = (queries._bucket_expr(secs, step) if step else literal_column("0")).label("b")
    query = select(
        b,
        group_col.label("g"),
        s.status_code,
        s.input_tokens,
        s.output_tokens,
        s.cache_read_tokens,
        s.cache_write_tokens,
        s.reasoning_tokens,
        s.total_cost_usd,
        s.duration_ms,
    )
    if trace_level:
        query = query.join(
            traces, and_(traces.c.project_id == s.project_id, traces.c.trace_id == s.trace_id)
        )
    rows = conn.execute(query.where(*cond)).all()
    accs: dict[tuple[int, Any], dict[str, Any]] = {}
    hists: dict[tuple[int, Any], int] = {}
    for row in rows:
        key = (int(row.b), row.g)
        acc = accs.get(key)
        if acc is None:
            acc = accs[key] = queries._zero_totals()
            hists[key] = 0
        acc["requests"] += 1
        acc["errors"] += row.status_code == 2
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
        ):
            acc[name] += getattr(row, name) or 0
        acc["cost_usd"] += row.total_cost_usd or 0
        acc["duration_ms_sum"] += row.duration_ms
        hists[key] += histogram.pack(histogram.bucket_index(row.duration_ms), 1)
    out = []
    for key, acc in accs.items():
        item = queries._finish(acc, hists[key])
        item["bucket_start_unix_s"] = key[0] if step else None
        item["group"] = key[1] if group_by else None
        out.append(item)
    return queries._order_and_limit(out, bucket, limit)


def _edge_durations_ms() -> list[float]:
    """Floats where bucket_index changes or is clamped, and their neighbours."""
    out = [0.0, -0.0, -1.0, -1e300, 5e-324, histogram.MIN_MS, 1e20, 1e300]
    for index, bound in enumerate(BOUNDS, start=1):
        analytic = histogram.MIN_MS * math.exp(math.log(2) / 8 * (index - 1))
        for value in (bound, analytic):
            below = math.nextafter(value, -math.inf)
            out += [value, below, math.nextafter(below, -math.inf)]
            out.append(math.nextafter(value, math.inf))
    rng = random.Random(3)
    out += [math.exp(rng.uniform(-8.0, 25.0)) for _ in range(500)]
    return out


def _bucket_indexes_in_sql(conn: Connection, durations_ms: list[float]) -> list[int]:
    result = []
    for start in range(0, len(durations_ms), 200):  # SQLite: at most 500 SELECTs in a UNION
        rows = union_all(
            *[
                select(literal(n).label("n"), literal(d, Double).label("d"))
                for n, d in enumerate(durations_ms[start : start + 200])
            ]
        ).subquery()
        query = select(queries._latency_bucket(conn, rows.c.d)).order_by(rows.c.n)
        result += [int(index) for index in conn.execute(query).scalars()]
    return result


def test_the_latency_bucket_in_sql_is_bucket_index_for_every_value(
    app_factory, database_url
) -> None:  # type: ignore[no-untyped-def]
    assert len(BOUNDS) == histogram.MAX_INDEX
    assert list(BOUNDS) == sorted(set(BOUNDS))  # strictly ascending
    durations_ms = _edge_durations_ms()
    app = app_factory(database_url)
    with app.state.db.read() as conn:
        in_sql = _bucket_indexes_in_sql(conn, durations_ms)
    mismatches = [
        (d, got, histogram.bucket_index(d))
        for d, got in zip(durations_ms, in_sql, strict=True)
        if got != histogram.bucket_index(d)
    ]
    assert mismatches == []
    assert {0, 1, 9, histogram.MAX_INDEX} <= set(in_sql)


def _duration_ms_of(ns: int) -> float:
    """A SpanSpec duration that protobuf_request turns into exactly ``ns`` nanoseconds."""
    duration_ms = ns / 1e6
    while int(duration_ms * 1e6) < ns:
        duration_ms = math.nextafter(duration_ms, math.inf)
    while int(duration_ms * 1e6) > ns:
        duration_ms = math.nextafter(duration_ms, 0.0)
    return duration_ms


def _durations_ms(rng: random.Random) -> list[float]:
    """Zero, bucket boundaries to the nanosecond (0.02 ms starts bucket 9 exactly), huge
    durations past the last bucket, and ordinary ones."""
    out = [0.0, 0.02, 0.04, 2e10, 1e11, 5e12]
    for bound in BOUNDS[:290:17]:  # nanosecond durations stay exact below 2**53
        ns = math.ceil(bound * 1e6)
        out += [_duration_ms_of(ns - 1), _duration_ms_of(ns), _duration_ms_of(ns + 1)]
    out += [rng.lognormvariate(6.0, 1.5) for _ in range(len(out))]
    return out


def _ingest(app: App, rng: random.Random) -> None:
    durations = _durations_ms(rng)
    rng.shuffle(durations)
    specs: list[SpanSpec] = []
    span = 0
    for trace in range(1, 91):
        start = BASE_NS + rng.randrange(0, 72 * 3600) * 10**9
        attributes = {
            key: value
            for key, value in (("user.id", rng.choice(USERS)), ("session.id", rng.choice(SESSIONS)))
            if value is not None
        }
        span += 1
        root = span
        duration_ms = durations[len(specs) % len(durations)]
        specs.append(SpanSpec(trace, root, None, "agent", start, duration_ms, False, attributes))
        for child in range(rng.randrange(1, 5)):
            span += 1
            provider, model = rng.choice(MODELS)
            attributes = llm_attributes(
                model=model,
                provider=provider,
                input_tokens=rng.randrange(0, 5000),
                output_tokens=rng.randrange(0, 2000),
            )
            if rng.random() < 0.3:
                attributes["gen_ai.usage.cache_read.input_tokens"] = rng.randrange(0, 1000)
                attributes["gen_ai.usage.reasoning.output_tokens"] = rng.randrange(0, 500)
            if rng.random() < 0.15:  # the span's own user wins over its trace's
                attributes["user.id"] = rng.choice(USERS[:-1])
            is_tool = rng.random() < 0.15
            specs.append(
                SpanSpec(
                    trace,
                    span,
                    root,
                    "tool" if is_tool else f"chat {model}",
                    start + (child + 1) * 10**6,
                    durations[len(specs) % len(durations)],
                    error=rng.random() < 0.2,
                    attributes={} if is_tool else attributes,
                )
            )
    for batch in range(0, len(specs), 100):
        response = app.ingest(protobuf_request(specs[batch : batch + 100]))
        assert response.status_code == 200, response.text


FILTERS: list[dict[str, Any]] = [
    {},
    {"status": "error"},
    {"status": "ok"},
    {"min_duration_ms": 0.02},
    {"user_id": "user-2"},
    {"session_id": "session-1", "status": "ok"},
]


def test_raw_analytics_aggregate_in_the_database_as_in_python(app_factory, database_url) -> None:  # type: ignore[no-untyped-def]
    app = app_factory(database_url)
    _ingest(app, random.Random(11))
    with app.state.db.read() as conn:
        stored = conn.execute(
            select(spans.c.duration_ms, queries._latency_bucket(conn, spans.c.duration_ms))
        ).all()
        assert len(stored) > 300
        assert [index for _, index in stored] == [histogram.bucket_index(d) for d, _ in stored]
        # The edges arrived: zero, bucket 9's exact lower bound, past the last bucket.
        assert BOUNDS[8] == 0.02
        durations = {d for d, _ in stored}
        assert {0.0, 0.02} <= durations and max(durations) > BOUNDS[-1]
        compared = 0
        for filters in FILTERS:
            f = queries.Filters(**RANGE, **filters)
            for group_by in ("user", "session", "model", None):
                for bucket in (None, "1h", "1d"):
                    for llm_only, limit in ((True, 100), (False, 100), (True, 3)):
                        kwargs: dict[str, Any] = {
                            "group_by": group_by,
                            "bucket": bucket,
                            "llm_only": llm_only,
                            "limit": limit,
                        }
                        got = queries._analytics_raw(conn, 1, f, **kwargs)
                        want = _reference(conn, 1, f, **kwargs)
                        assert want, (filters, kwargs)
                        assert same_answers(got, want), (filters, kwargs, got, want)
                        # The histograms are the same, not only close: percentiles exactly.
                        assert [i["latency_ms"] for i in got] == [i["latency_ms"] for i in want]
                        compared += len(want)
        assert compared > 1000
