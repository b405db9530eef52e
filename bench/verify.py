"""Is every acknowledged span readable? Counted directly in the database, ours or the peer's.

Every trace id of request ``seq`` starts with ``Workload.trace_prefix(seq)`` (16 hex digits), so
the acknowledged requests' prefixes go into a temporary table and one join counts the stored
spans that belong to them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg

# How to reach the trace id of a stored span, per schema.
_SPAN_TRACE = {
    "observatory": ("spans s", "s.trace_id"),
    "phoenix": ("spans s JOIN traces t ON t.id = s.trace_rowid", "t.trace_id"),
}


def _libpq(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def _sqlite_path(url: str) -> Path:
    raw = url.split(":///", 1)[1]
    return Path(raw)


def count_spans(url: str) -> int:
    """All rows of the ``spans`` table (same name in our schema and Phoenix's)."""
    if url.startswith("sqlite"):
        with sqlite3.connect(f"file:{_sqlite_path(url)}?mode=ro", uri=True, timeout=30) as conn:
            return int(conn.execute("SELECT count(*) FROM spans").fetchone()[0])
    with psycopg.connect(_libpq(url), connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM spans").fetchone()
        return int(row[0]) if row else 0


def count_acked(url: str, prefixes: Iterable[str], schema: str = "observatory") -> dict[str, Any]:
    """Stored spans whose trace id starts with one of ``prefixes``, and all stored spans."""
    source, trace_col = _SPAN_TRACE[schema]
    values = sorted(set(prefixes))
    if url.startswith("sqlite"):
        with sqlite3.connect(f"file:{_sqlite_path(url)}?mode=ro", uri=True, timeout=30) as conn:
            conn.execute("CREATE TEMP TABLE acked (prefix TEXT PRIMARY KEY)")
            conn.executemany("INSERT INTO acked VALUES (?)", [(v,) for v in values])
            readable = conn.execute(
                f"SELECT count(*) FROM {source} JOIN acked a "
                f"ON substr(lower({trace_col}), 1, 16) = a.prefix"
            ).fetchone()[0]
            total = conn.execute("SELECT count(*) FROM spans").fetchone()[0]
    else:
        with psycopg.connect(_libpq(url), connect_timeout=5) as conn:
            conn.execute("CREATE TEMP TABLE acked (prefix TEXT PRIMARY KEY)")
            with conn.cursor().copy("COPY acked (prefix) FROM STDIN") as copy:
                for value in values:
                    copy.write_row((value,))
            row = conn.execute(
                f"SELECT count(*) FROM {source} JOIN acked a "
                f"ON left(lower({trace_col}), 16) = a.prefix"
            ).fetchone()
            readable = row[0] if row else 0
            row = conn.execute("SELECT count(*) FROM spans").fetchone()
            total = row[0] if row else 0
    return {"readable_acked_spans": int(readable), "stored_spans": int(total)}
