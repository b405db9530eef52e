"""Streaming export of spans as CSV, JSON Lines or Parquet, in constant memory.

Rows are read in chunks: on PostgreSQL through one server-side cursor (``stream_results`` with
``yield_per``), elsewhere by keyset pagination on (start time, span_rowid) with a fresh connection
per chunk, so a long export holds no read transaction open on SQLite. Each chunk is encoded and
handed on before the next is read; Parquet is written one row group per chunk.

Rows leave in ascending start time. The fields are those of ``GET /api/v1/spans``: a JSON Lines
row equals the API's span object; CSV has the same columns, with JSON values (attributes, events,
prompt, …) as JSON text and an empty field for null; Parquet has typed columns (costs as
decimal128(20, 10), JSON values as JSON text).
"""

from __future__ import annotations

import csv
import importlib
import io
from collections.abc import Generator, Iterator, Sequence
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import and_, select, tuple_

from observatory.store.engine import Database
from observatory.store.queries import Filters, _money, _span_conditions
from observatory.store.schema import SPAN_COLUMNS, spans

CHUNK_ROWS = 2000
FORMATS = {
    "csv": ("text/csv; charset=utf-8", "csv"),
    "jsonl": ("application/x-ndjson", "jsonl"),
    "parquet": ("application/vnd.apache.parquet", "parquet"),
}

# The export columns, in the order of the API's span objects (store.queries.span_dict): the
# stored span columns without project_id, and the derived ``error`` after ``status_message``.
_STORED: tuple[str, ...] = tuple(c for c in SPAN_COLUMNS if c != "project_id")
_ERROR_AT = _STORED.index("status_message") + 1
COLUMNS: tuple[str, ...] = (*_STORED[:_ERROR_AT], "error", *_STORED[_ERROR_AT:])
JSON_COLUMNS = frozenset(
    {"prompt", "completion", "attributes", "resource_attributes", "events", "links"}
)
MONEY_COLUMNS = frozenset({"input_cost_usd", "output_cost_usd", "total_cost_usd"})
INT_COLUMNS = frozenset(
    {
        "kind",
        "start_time_unix_nano",
        "end_time_unix_nano",
        "status_code",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "total_tokens",
    }
)
FLOAT_COLUMNS = frozenset({"duration_ms", "time_to_first_token_ms"})
_SELECT = [spans.c.span_rowid, *(spans.c[c] for c in _STORED)]


def _order() -> tuple[Any, Any]:
    return spans.c.start_time_unix_nano.asc(), spans.c.span_rowid.asc()


def iter_rows(
    db: Database, project_id: int, filters: Filters, chunk_rows: int = CHUNK_ROWS
) -> Generator[Sequence[Any], None, None]:
    """The project's spans matching ``filters``, ascending by start time, in chunks of rows."""
    if db.is_postgres:
        yield from _iter_cursor(db, project_id, filters, chunk_rows)
    else:
        yield from _iter_keyset(db, project_id, filters, chunk_rows)


def _iter_cursor(
    db: Database, project_id: int, filters: Filters, chunk_rows: int
) -> Iterator[Sequence[Any]]:
    with db.read() as conn:
        streaming = conn.execution_options(stream_results=True, yield_per=chunk_rows)
        query = (
            select(*_SELECT)
            .where(and_(*_span_conditions(conn, project_id, filters)))
            .order_by(*_order())
        )
        result = streaming.execute(query)
        try:
            yield from result.partitions(chunk_rows)
        finally:
            result.close()


def _iter_keyset(
    db: Database, project_id: int, filters: Filters, chunk_rows: int
) -> Iterator[Sequence[Any]]:
    after: tuple[int, int] | None = None
    while True:
        with db.read() as conn:
            cond = _span_conditions(conn, project_id, filters)
            if after is not None:
                cond.append(tuple_(spans.c.start_time_unix_nano, spans.c.span_rowid) > after)
            rows = conn.execute(
                select(*_SELECT).where(and_(*cond)).order_by(*_order()).limit(chunk_rows)
            ).all()
        if not rows:
            return
        yield rows
        if len(rows) < chunk_rows:
            return
        last = rows[-1]
        after = (last.start_time_unix_nano, last.span_rowid)


# --- encoders ----------------------------------------------------------------------------------


def _value(row: Any, column: str) -> Any:
    if column == "error":
        return row.status_code == 2
    return getattr(row, column)


def jsonl_chunk(rows: Sequence[Any]) -> bytes:
    """One JSON object per line, the same object ``GET /api/v1/spans`` returns."""
    out = bytearray()
    for row in rows:
        item: dict[str, Any] = {}
        for column in COLUMNS:
            value = _value(row, column)
            if column in JSON_COLUMNS:
                # Stored JSON text is embedded as is, never decoded and re-encoded.
                item[column] = None if value is None else orjson.Fragment(value)
            elif column in MONEY_COLUMNS:
                item[column] = _money(value)
            else:
                item[column] = value
        out += orjson.dumps(item)
        out += b"\n"
    return bytes(out)


def _csv_text(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column in MONEY_COLUMNS:
        return _money(value) or ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def csv_header() -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(COLUMNS)
    return buffer.getvalue().encode()


def csv_chunk(rows: Sequence[Any]) -> bytes:
    """RFC 4180 rows (CRLF line ends, quotes where needed); null is an empty field."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for row in rows:
        writer.writerow([_csv_text(c, _value(row, c)) for c in COLUMNS])
    return buffer.getvalue().encode()


class _Drain(io.RawIOBase):
    """A write-only file that keeps what was written until it is drained."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def drain(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def _pyarrow() -> tuple[Any, Any]:
    # pyarrow ships no type information; imported on first use (only Parquet needs it).
    return importlib.import_module("pyarrow"), importlib.import_module("pyarrow.parquet")


def parquet_schema() -> Any:
    pa, _ = _pyarrow()
    fields = []
    for column in COLUMNS:
        if column == "error":
            kind = pa.bool_()
        elif column in ("kind", "status_code"):
            kind = pa.int32()
        elif column in INT_COLUMNS:
            kind = pa.int64()
        elif column in FLOAT_COLUMNS:
            kind = pa.float64()
        elif column in MONEY_COLUMNS:
            kind = pa.decimal128(20, 10)
        else:
            kind = pa.string()
        fields.append(pa.field(column, kind))
    return pa.schema(fields)


_TEN_PLACES = Decimal("1e-10")


def _parquet_value(column: str, value: Any) -> Any:
    if value is not None and column in MONEY_COLUMNS:
        return Decimal(value).quantize(_TEN_PLACES)
    return value


def parquet_stream(chunks: Iterator[Sequence[Any]]) -> Iterator[bytes]:
    """A Parquet file, written and handed on one row group per chunk (zstd compressed)."""
    pa, pq = _pyarrow()
    schema = parquet_schema()
    sink = _Drain()
    writer = pq.ParquetWriter(sink, schema, compression="zstd")
    try:
        for rows in chunks:
            arrays = [
                pa.array([_parquet_value(c, _value(r, c)) for r in rows], type=schema.field(c).type)
                for c in COLUMNS
            ]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            data = sink.drain()
            if data:
                yield data
    finally:
        writer.close()
    tail = sink.drain()
    if tail:
        yield tail


def encode(fmt: str, chunks: Iterator[Sequence[Any]]) -> Iterator[bytes]:
    """The export byte stream of ``chunks`` in format ``fmt`` (csv, jsonl or parquet)."""
    if fmt == "jsonl":
        for rows in chunks:
            yield jsonl_chunk(rows)
    elif fmt == "csv":
        yield csv_header()
        for rows in chunks:
            yield csv_chunk(rows)
    elif fmt == "parquet":
        yield from parquet_stream(chunks)
    else:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")


def export_spans(
    db: Database, project_id: int, filters: Filters, fmt: str, chunk_rows: int = CHUNK_ROWS
) -> Generator[bytes, None, None]:
    """The whole export as a generator of byte chunks; close it to stop early."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    chunks = iter_rows(db, project_id, filters, chunk_rows)
    try:
        yield from encode(fmt, chunks)
    finally:
        chunks.close()
