"""The PostgreSQL write paths against a real server, and the SQLite path with aggregates.

* ``copy_line`` text reads back exactly (tabs, newlines, backslashes, NULL, numbers, unicode).
* The fast path (COPY into ``spans`` + pre-aggregated upserts) stores the same spans, traces and
  rollups as the general path (staging + ``INSERT … ON CONFLICT`` + SQL rollups), for new
  spans, for sampled-out spans, for durations on the latency buckets' edges and for retried
  batches (which fall back to the general path).
* ``EncodedRows`` survives pickling (the trip back from a worker process) and concatenation.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from observatory.ingest.pipeline import PROTOBUF, Policy, prepare
from observatory.ingest.sampling import SamplingPolicy
from observatory.store import histogram
from observatory.store.schema import SPAN_COLUMNS
from observatory.store.writes import (
    SQLITE_WAL_AUTOCHECKPOINT_PAGES,
    SQLITE_WRITER_CACHE_KIB,
    Aggregates,
    EncodedRows,
    PostgresSpanStore,
    SqliteSpanStore,
    aggregate,
    copy_line,
    encode_rows,
    span_to_row,
)
from tests.conftest import create_pg_database, drop_pg_database
from tests.otlp_builder import BASE_NS, SpanSpec, agent_trace, llm_attributes, protobuf_request

COMPARED = [c for c in SPAN_COLUMNS if c not in ("duration_ms",)]
TABLES = {
    "spans": "trace_id, span_id",
    "traces": "trace_id",
    "rollups_1m": "1, 2, 3, 4, 5, 6, 7",
    "rollups_1h": "1, 2, 3, 4, 5, 6, 7",
    "rollups_1m_latency": "1, 2, 3, 4, 5, 6, 7, 8",
    "rollups_1h_latency": "1, 2, 3, 4, 5, 6, 7, 8",
}


def _migrated(url: str) -> str:
    subprocess.run(
        [str(Path(sys.executable).parent / "observatory"), "migrate"],
        env={"OBSERVATORY_DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
    )
    return url


@pytest.fixture(scope="module")
def two_databases() -> Any:
    urls = [_migrated(create_pg_database("obs_writes")) for _ in range(2)]
    yield urls
    for url in urls:
        drop_pg_database(url)


def _batches() -> list[list[tuple[Any, ...]]]:
    batches = []
    for n in range(4):
        specs = [
            spec
            for t in range(20)
            for spec in agent_trace(
                1000 * n + t + 1, llm_calls=3, start_ns=BASE_NS + (n * 20 + t) * 61_000_000_000
            )
        ]
        batches.append(list(prepare(protobuf_request(specs), PROTOBUF, 1, Policy()).rows))
    # Sampling leaves some spans out: they count in the rollups only.
    sampled = Policy(sampling=SamplingPolicy(rate=0.5, keep_errors=False))
    specs = [s for t in range(30) for s in agent_trace(9000 + t, llm_calls=2)]
    for spec in specs:  # random-looking trace ids, which sampling decides on
        spec.trace_hex = hashlib.md5(str(spec.trace).encode()).hexdigest()
    batches.append(list(prepare(protobuf_request(specs), PROTOBUF, 1, sampled).rows))
    assert any(not row[-1] for row in batches[-1]) and any(row[-1] for row in batches[-1])
    # Durations on the latency buckets' edges: both paths must bucket them as bucket_index does
    # (the general path in SQL, the fast path in Python).
    specs = [s for t in range(50) for s in agent_trace(7000 + t, llm_calls=4)]
    rows = list(prepare(protobuf_request(specs), PROTOBUF, 1, Policy()).rows)
    bounds = histogram.lower_bounds()
    edges = [0.0, histogram.MIN_MS]
    for i in range(0, len(bounds), 3):
        edges += [bounds[i], math.nextafter(bounds[i], 0.0)]
    at = SPAN_COLUMNS.index("duration_ms")
    batches.append(
        [(*row[:at], edges[n % len(edges)], *row[at + 1 :]) for n, row in enumerate(rows)]
    )
    assert len(rows) >= len(edges)
    return batches


def _digits(value: Any) -> Any:
    return float(f"{value:.12g}") if isinstance(value, float) else value


def _dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    with psycopg.connect(url) as conn:
        for table, order in TABLES.items():
            columns = ", ".join(COMPARED) if table == "spans" else "*"
            rows = conn.execute(f"SELECT {columns} FROM {table} ORDER BY {order}").fetchall()
            # Float sums depend on the order of addition; compare them to 12 significant digits.
            out[table] = [tuple(_digits(v) for v in row) for row in rows]
    return out


def test_fast_path_stores_what_the_general_path_stores(two_databases: list[str]) -> None:
    general, fast = (PostgresSpanStore(url) for url in two_databases)
    batches = _batches()
    try:
        for rows in batches:
            assert general.write(rows) == fast.write(encode_rows(rows), aggregate(rows))
        # Retries: a whole batch again, and a batch half old, half new.
        retry = batches[0]
        mixed = batches[1][:50] + batches[2]
        for rows in (retry, mixed, batches[2]):
            assert general.write(rows) == fast.write(encode_rows(rows), aggregate(rows))
    finally:
        general.close()
        fast.close()
    left, right = (_dump(url) for url in two_databases)
    for table in TABLES:
        assert left[table], table
        assert left[table] == right[table], table
    stored = sum(1 for rows in batches for row in rows if row[-1])
    assert len(left["spans"]) == stored


_TOTALS = "project_id, bucket_start_unix_s, requests, errors, input_tokens, output_tokens"


def _hour_totals(url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(rollups_1h_totals as the triggers keep them, the same added up from rollups_1h)."""
    with psycopg.connect(url) as conn:
        kept = conn.execute(f"SELECT {_TOTALS} FROM rollups_1h_totals ORDER BY 1, 2").fetchall()
        added = conn.execute(
            "SELECT project_id, bucket_start_unix_s, sum(requests)::bigint, sum(errors)::bigint, "
            "sum(input_tokens)::bigint, sum(output_tokens)::bigint FROM rollups_1h "
            "GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
    return kept, added


def test_hour_totals_follow_every_change_to_the_hourly_rollups(fresh_pg_url: str) -> None:
    """rollups_1h_totals (triggers on rollups_1h) equal the rollup rows added up after inserts,
    upserts through both write paths, updates and deletes of some of an hour's rows or all."""
    url = _migrated(fresh_pg_url)
    batches = _batches()
    store = PostgresSpanStore(url)
    try:
        for n, rows in enumerate(batches):
            if n % 2:
                store.write(rows)  # the general path: rollups by SQL from the staged rows
            else:
                store.write(encode_rows(rows), aggregate(rows))  # the fast path
            kept, added = _hour_totals(url)
            assert kept == added and kept, n
        store.write(batches[0] + batches[1][:7])  # a retry: only new spans count
    finally:
        store.close()
    kept, added = _hour_totals(url)
    assert kept == added
    hours = [row[1] for row in kept]
    assert len(hours) >= 2
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE rollups_1h SET requests = requests + 2, errors = errors + 1")
        # Part of one hour's rows, then all of another hour's.
        conn.execute(
            "DELETE FROM rollups_1h WHERE bucket_start_unix_s = %s AND model <> ''", [hours[0]]
        )
        conn.execute("DELETE FROM rollups_1h WHERE bucket_start_unix_s = %s", [hours[-1]])
    kept, added = _hour_totals(url)
    assert kept == added
    assert hours[-1] not in [row[1] for row in kept]  # no rollups left: no totals row


def test_copy_lines_read_back_exactly(fresh_pg_url: str) -> None:
    url = _migrated(fresh_pg_url)
    awkward = "tab\there\nnew line\r\\back\\slash \\N é ✓ \x01"
    specs = [
        SpanSpec(
            1,
            1,
            name=awkward,
            attributes=llm_attributes(**{"user.id": awkward, "gen_ai.input.messages": awkward}),
        ),
        SpanSpec(1, 2, parent=1, name="", attributes={"x": "\\"}),
    ]
    rows = list(prepare(protobuf_request(specs), PROTOBUF, 1, Policy()).rows)
    for line in (copy_line(r) for r in rows):
        assert "\n" not in line and line.count("\t") == len(SPAN_COLUMNS) - 1
    store = PostgresSpanStore(url)
    try:
        assert store.write(encode_rows(rows), aggregate(rows)) == 2
    finally:
        store.close()
    with psycopg.connect(url) as conn:
        stored = conn.execute(
            f"SELECT {', '.join(SPAN_COLUMNS)} FROM spans ORDER BY span_id"
        ).fetchall()
    for row, back in zip(rows, stored, strict=True):
        expected = list(row[:-1])
        for i, column in enumerate(SPAN_COLUMNS):
            if column.endswith("_usd") and expected[i] is not None:
                expected[i] = Decimal(expected[i]).quantize(Decimal("1e-10"))
        assert list(back) == expected


def test_encoded_rows_pickle_concat_and_split() -> None:
    specs = [s for t in range(3) for s in agent_trace(t + 1, llm_calls=1)]
    rows = list(prepare(protobuf_request(specs), PROTOBUF, 1, Policy()).rows)
    rows[1] = (*rows[1][:-1], False)
    encoded = encode_rows(rows)
    back = pickle.loads(pickle.dumps(encoded))
    assert len(back) == len(rows) == 6
    assert [e.line for e in back] == [copy_line(r) for r in rows]
    assert [e.keep for e in back] == [bool(r[-1]) for r in rows]
    assert back.stored == 5
    both = EncodedRows.concat([back, encode_rows(rows[:2])])
    assert len(both) == 8 and both.stored == 6
    assert both[7].line == copy_line(rows[1]) and not both[7].keep
    assert both.kept_text().count("\n") == 6
    assert both.staged_text().count("\tf\n") == 2


def test_sqlite_with_aggregates_equals_without(tmp_path: Path) -> None:
    batches = _batches()
    paths = [tmp_path / "a.db", tmp_path / "b.db"]
    for path in paths:
        subprocess.run(
            [str(Path(sys.executable).parent / "observatory"), "migrate"],
            env={"OBSERVATORY_DATABASE_URL": f"sqlite:///{path}", "PATH": "/usr/bin:/bin"},
            check=True,
            capture_output=True,
        )
    plain, with_aggregates = SqliteSpanStore(paths[0]), SqliteSpanStore(paths[1])
    # The writer's own page cache and checkpoint interval (writes.py says why).
    assert plain._conn.execute("PRAGMA cache_size").fetchone() == (-SQLITE_WRITER_CACHE_KIB,)
    assert plain._conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (
        SQLITE_WAL_AUTOCHECKPOINT_PAGES,
    )
    assert plain._conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL: acked = durable
    for rows in [*batches, batches[0], batches[1][:30] + batches[2]]:
        merged = Aggregates()
        merged.merge(aggregate(rows))
        assert plain.write(rows) == with_aggregates.write(rows, merged)
    plain.close()
    with_aggregates.close()
    dumps = []
    for path in paths:
        with sqlite3.connect(path) as conn:
            dumps.append(
                {
                    table: [
                        tuple(_digits(v) for v in row)
                        for row in conn.execute(f"SELECT * FROM {table} ORDER BY {order}")
                    ]
                    for table, order in TABLES.items()
                    if table != "spans"
                }
            )
    assert dumps[0] == dumps[1]
    assert dumps[0]["traces"]


def test_span_to_row_keeps_keep_flag_last() -> None:
    span_rows = prepare(
        protobuf_request([SpanSpec(1, 1, attributes=llm_attributes())]), PROTOBUF, 1, Policy()
    ).rows
    assert span_rows[0][-1] is True
    assert len(span_rows[0]) == len(SPAN_COLUMNS) + 1
    assert span_to_row  # the public builder the loader uses
