"""Span export on both databases: CSV, JSON Lines and Parquet round-trip to exactly what the API
returns, filters as in the API, streamed in chunks (in process and from a real server), audited."""

from __future__ import annotations

import csv
import io
import os
import socket
import subprocess
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import psycopg
import pyarrow.parquet as pq
import sqlalchemy

from observatory.store import export
from observatory.store.queries import Filters
from tests.conftest import BIN, Server
from tests.integration.conftest import App
from tests.otlp_builder import BASE_NS, SpanSpec, agent_trace, llm_attributes, protobuf_request

RANGE = {"start": str(BASE_NS // 10**9 - 3600), "end": str(BASE_NS // 10**9 + 86400)}
TRICKY = 'Hi, "quoted", commas\nnew line; ünïcödé ✓ =1+2'


def sample_specs() -> list[SpanSpec]:
    specs = agent_trace(1, llm_calls=2, user="user-1", session="s-1")
    specs += agent_trace(2, llm_calls=1, model="gpt-4o-mini", user="user-2", session="s-2")
    specs.append(
        SpanSpec(
            3,
            301,
            None,
            TRICKY,
            BASE_NS + 3 * 10**9,
            12.5,
            error=True,
            attributes={
                **llm_attributes("gpt-4o", input_tokens=7, output_tokens=3),
                "gen_ai.prompt.0.role": "user",
                "gen_ai.prompt.0.content": TRICKY,
                "gen_ai.completion.0.role": "assistant",
                "gen_ai.completion.0.content": "ok",
                "app.tags": ["a", "b"],
                "app.ratio": 0.1,
                "app.feature": "search",
            },
            events=[{"name": "exception", "attributes": {"exception.message": TRICKY}}],
        )
    )
    specs.append(SpanSpec(4, 401, None, "plain", BASE_NS + 4 * 10**9, 1.0))
    return specs


def api_spans(app: App, key: str | None = None, **params: str) -> list[dict[str, Any]]:
    """Every span the API returns, oldest first (the export's order)."""
    out: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        query = {**RANGE, **params, "order": "asc", "limit": "500"}
        if cursor:
            query["cursor"] = cursor
        page = app.get("/api/v1/spans", key=key, params=query).json()
        out += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            return out
    raise AssertionError("too many pages")


def export_bytes(app: App, fmt: str, key: str | None = None, **params: str) -> bytes:
    response = app.get("/api/v1/export/spans", key=key, params={**RANGE, **params, "format": fmt})
    assert response.status_code == 200, response.text
    return bytes(response.content)


def parse_jsonl(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in body.splitlines()]


def parse_csv(body: bytes) -> list[dict[str, Any]]:
    rows = list(csv.DictReader(io.StringIO(body.decode("utf-8"), newline="")))
    out = []
    for row in rows:
        item: dict[str, Any] = {}
        for column, text in row.items():
            if text == "":
                item[column] = None
            elif column in export.JSON_COLUMNS:
                item[column] = orjson.loads(text)
            elif column in export.INT_COLUMNS:
                item[column] = int(text)
            elif column in export.FLOAT_COLUMNS:
                item[column] = float(text)
            elif column == "error":
                item[column] = text == "true"
            else:
                item[column] = text
        out.append(item)
    return out


def parse_parquet(body: bytes) -> list[dict[str, Any]]:
    table = pq.read_table(io.BytesIO(body))
    assert table.schema.field("total_cost_usd").type.scale == 10
    out = []
    for row in table.to_pylist():
        for column in export.JSON_COLUMNS:
            if row[column] is not None:
                row[column] = orjson.loads(row[column])
        for column in export.MONEY_COLUMNS:
            if row[column] is not None:
                row[column] = export._money(row[column])
        out.append(row)
    return out


def normalise_for_csv(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # CSV cannot tell an empty string from null.
    return [{k: (None if v == "" else v) for k, v in s.items()} for s in spans]


def test_formats_round_trip_to_the_api_spans(app: App) -> None:
    assert app.ingest(protobuf_request(sample_specs())).status_code == 200
    expected = api_spans(app)
    assert len(expected) == 7
    assert any(s["prompt"] for s in expected), "the fixture should carry prompt content"
    costs = [s["total_cost_usd"] for s in expected if s["total_cost_usd"]]
    assert costs and all(Decimal(c) > 0 for c in costs)

    jsonl = parse_jsonl(export_bytes(app, "jsonl"))
    assert jsonl == expected
    assert list(jsonl[0]) == list(export.COLUMNS)

    raw_csv = export_bytes(app, "csv")
    assert raw_csv.startswith(b"trace_id,span_id,")
    assert parse_csv(raw_csv) == normalise_for_csv(expected)

    parquet = parse_parquet(export_bytes(app, "parquet"))
    assert parquet == expected


def test_filters_match_the_api(app: App) -> None:
    assert app.ingest(protobuf_request(sample_specs())).status_code == 200
    for params in (
        {"model": "gpt-4o-mini"},
        {"status": "error"},
        {"user_id": "user-1"},
        {"attribute": "app.feature=search"},
        {"name": "chat"},
        {"session_id": "s-2"},
    ):
        expected = api_spans(app, **params)
        assert expected, params
        assert parse_jsonl(export_bytes(app, "jsonl", **params)) == expected, params
    none = export_bytes(app, "csv", service="no-such-service")
    assert parse_csv(none) == []
    assert pq.read_table(io.BytesIO(export_bytes(app, "parquet", model="none"))).num_rows == 0
    bad = app.get("/api/v1/export/spans", params={"format": "xml"})
    assert bad.status_code == 422


def test_export_needs_a_read_key_and_is_audited(app: App) -> None:
    assert app.ingest(protobuf_request(sample_specs())).status_code == 200
    ingest_key = app.create_key("ingest")
    read_key = app.create_key("read")
    assert app.get("/api/v1/export/spans", key=ingest_key).status_code == 403
    assert app.get("/api/v1/export/spans").status_code == 200
    response = app.get(
        "/api/v1/export/spans", key=read_key, params={"format": "csv", "user_id": "user-1"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert 'filename="spans-default-' in response.headers["content-disposition"]
    entries = app.get("/api/v1/admin/audit", params={"action": "export"}).json()["data"]
    assert [e["object_id"] for e in entries] == ["csv", "jsonl"]
    latest = entries[0]
    assert latest["actor"] == read_key[:12] and latest["outcome"] == "ok"
    assert latest["details"]["format"] == "csv"
    # Filter values that identify a person are kept only as keyed hashes (erasure must work).
    assert latest["details"]["filters"]["user_id"].startswith("hmac-sha256:")
    assert "user-1" not in orjson.dumps(entries).decode()


def test_export_streams_in_chunks(app: App) -> None:
    specs = [
        SpanSpec(
            10, 10_000 + i, None, f"s{i}", BASE_NS + i * 1_000_000, attributes=llm_attributes()
        )
        for i in range(4500)
    ]
    assert app.ingest(protobuf_request(specs)).status_code == 200
    project_id = 1
    # The store reads chunk by chunk (server-side cursor or keyset pages).
    reader = export.iter_rows(app.state.db, project_id, Filters(), chunk_rows=1000)
    try:
        chunks = [next(reader)]
        if app.state.db.is_postgres:
            # Half way, the rest is still on the server, behind a cursor that is fetched from.
            with app.state.db.engine.connect() as conn:
                fetching = conn.execute(
                    sqlalchemy.text(
                        "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid() AND query ILIKE 'FETCH FORWARD %'"
                    )
                ).all()
            assert len(fetching) == 1, fetching
        chunks += list(reader)
    finally:
        reader.close()
    assert [len(c) for c in chunks] == [1000, 1000, 1000, 1000, 500]
    starts = [r.start_time_unix_nano for c in chunks for r in c]
    assert starts == sorted(starts) and len(set(starts)) == 4500

    # The HTTP layer hands each chunk on as its own body message instead of buffering.
    for fmt, minimum in (("jsonl", 3), ("csv", 3), ("parquet", 3)):
        messages = asgi_get(app, f"/api/v1/export/spans?format={fmt}&{_query(RANGE)}")
        start = messages[0]
        assert start["type"] == "http.response.start" and start["status"] == 200
        assert b"content-length" not in {k for k, _ in start["headers"]}
        bodies = [m for m in messages if m["type"] == "http.response.body" and m.get("body")]
        assert len(bodies) >= minimum, (fmt, len(bodies))
        body = b"".join(m["body"] for m in bodies)
        if fmt == "jsonl":
            assert len(body.splitlines()) == 4500
        elif fmt == "csv":
            assert len(parse_csv(body)) == 4500
        else:
            parquet = pq.ParquetFile(io.BytesIO(body))
            assert parquet.metadata.num_rows == 4500 and parquet.num_row_groups >= 2


def _query(params: dict[str, str]) -> str:
    return "&".join(f"{k}={v}" for k, v in params.items())


def asgi_get(app: App, target: str) -> list[dict[str, Any]]:
    """Call the application directly and keep every ASGI message it sends."""
    path, _, query = target.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {app.admin_key}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    messages: list[dict[str, Any]] = []

    async def run() -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await anyio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        await app.client.app(scope, receive, send)

    portal = app.client.portal  # type: ignore[attr-defined]
    portal.call(run)
    return messages


def test_cli_export_to_a_file(app_factory: Callable[..., App], tmp_path: Path) -> None:
    # The CLI runs the same store code as the API (tested on both databases): SQLite suffices.
    app = app_factory(f"sqlite:///{tmp_path / 'export.db'}")
    assert app.ingest(protobuf_request(sample_specs())).status_code == 200
    expected = api_spans(app, model="gpt-4o")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVATORY_")}
    env.update(
        OBSERVATORY_DATA_DIR=str(app.settings.data_dir),
        OBSERVATORY_DATABASE_URL=app.settings.database_url,
    )
    target = tmp_path / "spans.parquet"
    result = subprocess.run(
        [
            str(BIN / "observatory"),
            "export",
            "--project",
            "default",
            "--format",
            "parquet",
            "--output",
            str(target),
            "--model",
            "gpt-4o",
            "--start",
            RANGE["start"],
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert parse_parquet(target.read_bytes()) == expected
    assert not (tmp_path / "spans.parquet.partial").exists()
    to_stdout = subprocess.run(
        [str(BIN / "observatory"), "export", "--project", "default", "--format", "jsonl"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert to_stdout.returncode == 0
    assert parse_jsonl(to_stdout.stdout) == api_spans(app)
    entries = app.get("/api/v1/admin/audit", params={"action": "export"}).json()["data"]
    assert [(e["actor"], e["object_id"]) for e in entries] == [("cli", "jsonl"), ("cli", "parquet")]
    missing = subprocess.run(
        [str(BIN / "observatory"), "export", "--project", "nope", "--format", "csv"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_real_server_sends_the_export_in_pieces(server_factory: Callable[..., Server]) -> None:
    server = server_factory()
    specs = [
        SpanSpec(20, 20_000 + i, None, "x" * 200, BASE_NS + i * 1_000_000) for i in range(3000)
    ]
    with server.client() as client:
        response = client.post(
            "/v1/traces",
            content=protobuf_request(specs),
            headers={"Content-Type": "application/x-protobuf"},
        )
        assert response.status_code == 200, response.text
        with client.stream(
            "GET", "/api/v1/export/spans", params={**RANGE, "format": "jsonl"}
        ) as streamed:
            assert streamed.status_code == 200
            assert streamed.headers.get("transfer-encoding") == "chunked"
            assert "content-length" not in streamed.headers
            pieces = [piece for piece in streamed.iter_raw() if piece]
    assert len(pieces) > 1
    lines = b"".join(pieces).splitlines()
    assert len(lines) == 3000
    assert orjson.loads(lines[0])["span_id"] == f"{20_000:016x}"


def test_client_that_goes_away_releases_the_cursor(
    server_factory: Callable[..., Server], pg_url: str
) -> None:
    server = server_factory(database_url=pg_url)
    specs = [
        # About 19 MB of export: far more than the server can push into socket buffers.
        SpanSpec(30, 30_000 + i, None, "y" * 2500, BASE_NS + i * 1_000_000)
        for i in range(6000)
    ]

    def open_cursors() -> list[Any]:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            return conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND query ILIKE 'FETCH FORWARD %'"
            ).fetchall()

    with server.client() as client:
        response = client.post(
            "/v1/traces",
            content=protobuf_request(specs),
            headers={"Content-Type": "application/x-protobuf"},
        )
        assert response.status_code == 200, response.text
    # A small receive buffer (no autotuning): the server can push only a few MB ahead.
    slow = httpx.HTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)])
    with (
        httpx.Client(
            base_url=server.base_url,
            headers={"Authorization": f"Bearer {server.admin_key}"},
            transport=slow,
            timeout=30,
        ) as client,
        client.stream(
            "GET", "/api/v1/export/spans", params={**RANGE, "format": "jsonl"}
        ) as streamed,
    ):
        first = next(streamed.iter_raw())
        assert first.startswith(b'{"trace_id"')
        # The client stops reading: the export waits, holding its cursor open.
        deadline = time.monotonic() + 10
        while not open_cursors() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(open_cursors()) == 1
    deadline = time.monotonic() + 20
    while open_cursors() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert open_cursors() == []
    with server.client() as client:
        assert client.get("/health/ready").status_code == 200
