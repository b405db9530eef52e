"""PostgreSQL time partitioning of spans: native daily partitions, or a TimescaleDB hypertable.

TimescaleDB is used only when the extension is *available* on the server (detected through
``pg_available_extensions``) and can be created; otherwise spans use declarative range
partitioning with one partition per UTC day and a DEFAULT partition for timestamps outside the
prepared range.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

NANOS_PER_DAY = 86_400 * 1_000_000_000
# Compress chunks older than this (TimescaleDB only).
COMPRESS_AFTER_DAYS = 7


def timescaledb_available(conn: Connection) -> bool:
    row = conn.execute(
        text("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    ).first()
    return row is not None


def is_hypertable(conn: Connection, table: str = "spans") -> bool:
    exists = conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")).first()
    if exists is None:
        return False
    row = conn.execute(
        text("SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = :t"),
        {"t": table},
    ).first()
    return row is not None


def setup_spans_postgres(conn: Connection, columns_sql: str) -> str:
    """Create the spans table; return "timescaledb" or "partitioned"."""
    if timescaledb_available(conn):
        savepoint = conn.begin_nested()
        try:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS timescaledb"))
            conn.execute(text(f"CREATE TABLE spans ({columns_sql})"))
            conn.execute(
                text(
                    "SELECT create_hypertable('spans', 'start_time_unix_nano', "
                    f"chunk_time_interval => {NANOS_PER_DAY}::bigint)"
                )
            )
            # Integer time columns need a "now" function for compression/retention policies.
            conn.execute(
                text(
                    "CREATE OR REPLACE FUNCTION observatory_unix_nano_now() RETURNS BIGINT "
                    "LANGUAGE SQL STABLE AS "
                    "$$ SELECT (extract(epoch FROM now()) * 1e9)::bigint $$"
                )
            )
            conn.execute(text("SELECT set_integer_now_func('spans', 'observatory_unix_nano_now')"))
            conn.execute(
                text(
                    "ALTER TABLE spans SET (timescaledb.compress, "
                    "timescaledb.compress_segmentby = 'project_id', "
                    "timescaledb.compress_orderby = 'start_time_unix_nano DESC')"
                )
            )
            conn.execute(
                text(
                    "SELECT add_compression_policy('spans', "
                    f"compress_after => {COMPRESS_AFTER_DAYS * NANOS_PER_DAY}::bigint)"
                )
            )
        except DBAPIError as exc:
            savepoint.rollback()
            log.warning(
                "TimescaleDB is available but could not be used (%s); using native partitioning",
                exc.orig,
            )
        else:
            savepoint.commit()
            return "timescaledb"
    conn.execute(
        text(f"CREATE TABLE spans ({columns_sql}) PARTITION BY RANGE (start_time_unix_nano)")
    )
    conn.execute(text("CREATE TABLE spans_default PARTITION OF spans DEFAULT"))
    ensure_partitions(conn, date.today(), days_back=1, days_ahead=7)
    return "partitioned"


def partition_name(day: date) -> str:
    return f"spans_p{day:%Y%m%d}"


def day_bounds_nanos(day: date) -> tuple[int, int]:
    start = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1_000_000_000
    return start, start + NANOS_PER_DAY


def existing_partitions(conn: Connection) -> set[str]:
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'spans'"
        )
    )
    return {r[0] for r in rows}


def ensure_partitions(
    conn: Connection, today: date, days_back: int = 1, days_ahead: int = 7
) -> list[str]:
    """Create missing daily partitions around ``today``; move matching rows out of DEFAULT."""
    if is_hypertable(conn):
        return []
    have = existing_partitions(conn)
    created = []
    for offset in range(-days_back, days_ahead + 1):
        day = today + timedelta(days=offset)
        created += _ensure_day(conn, day, have)
    return created


def ensure_partitions_for(conn: Connection, days: set[date]) -> list[str]:
    """Create the partitions for specific days (old data being loaded, for example)."""
    if is_hypertable(conn):
        return []
    have = existing_partitions(conn)
    created = []
    for day in sorted(days):
        created += _ensure_day(conn, day, have)
    return created


def _ensure_day(conn: Connection, day: date, have: set[str]) -> list[str]:
    name = partition_name(day)
    if name in have:
        return []
    lo, hi = day_bounds_nanos(day)
    # A new partition cannot be attached while DEFAULT holds rows of its range, so those rows
    # are moved into it within the same transaction.
    stray = conn.execute(
        text(
            "SELECT count(*) FROM spans_default WHERE start_time_unix_nano >= :lo "
            "AND start_time_unix_nano < :hi"
        ),
        {"lo": lo, "hi": hi},
    ).scalar_one()
    if stray:
        conn.execute(
            text(f"CREATE TABLE {name} (LIKE spans INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        )
        conn.execute(
            text(
                f"WITH moved AS (DELETE FROM spans_default WHERE start_time_unix_nano >= :lo "
                f"AND start_time_unix_nano < :hi RETURNING *) "
                f"INSERT INTO {name} SELECT * FROM moved"
            ),
            {"lo": lo, "hi": hi},
        )
        conn.execute(
            text(f"ALTER TABLE spans ATTACH PARTITION {name} FOR VALUES FROM ({lo}) TO ({hi})")
        )
    else:
        conn.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF spans "
                f"FOR VALUES FROM ({lo}) TO ({hi})"
            )
        )
    have.add(name)
    log.info("created span partition %s", name)
    return [name]


def drop_partitions_before(conn: Connection, cutoff_day: date) -> list[str]:
    """Drop whole day partitions that end on or before ``cutoff_day`` (retention)."""
    dropped = []
    for name in sorted(existing_partitions(conn)):
        if not name.startswith("spans_p"):
            continue
        day = datetime.strptime(name[len("spans_p") :], "%Y%m%d").date()
        if day + timedelta(days=1) <= cutoff_day:
            conn.execute(text(f"DROP TABLE {name}"))
            dropped.append(name)
    return dropped
