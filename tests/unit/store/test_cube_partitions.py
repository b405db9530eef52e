"""Migration 0009 on a real PostgreSQL: the rollup cube becomes one list partition per dimension
set, its rows come along, and the downgrade puts them back in a plain table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config

from observatory.store import cube
from observatory.store.engine import Database

MIGRATIONS = Path(cube.__file__).parent / "migrations"


def _alembic(db: Database, action: str, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)


def _rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT dims, bucket_start_unix_s, model, requests, cost_usd, lo, counts "
        "FROM rollups_1h_cube ORDER BY dims, bucket_start_unix_s, model"
    ).fetchall()


def _kind(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT relkind FROM pg_class WHERE relname = 'rollups_1h_cube'").fetchone()
    assert row is not None
    return str(row[0])


def test_cube_rows_move_into_partitions_and_back(fresh_pg_url: str) -> None:
    db = Database(fresh_pg_url)
    try:
        _alembic(db, "upgrade", "0008_rollup_cube")
        with psycopg.connect(fresh_pg_url) as conn:
            for n, mask in enumerate((*cube.SETS, 31)):  # 31: a set no partition names
                conn.execute(
                    "INSERT INTO rollups_1h_cube (project_id, dims, bucket_start_unix_s, llm, "
                    "model, requests, errors, input_tokens, output_tokens, cache_read_tokens, "
                    "cache_write_tokens, reasoning_tokens, cost_usd, duration_ms_sum, p50, lo, "
                    "counts) VALUES (1, %s, %s, 1, %s, %s, 0, 10, 5, 0, 0, 0, 0.0012345, 12.5, "
                    "3.0, 2, %s)",
                    (mask, 3600 * (n + 1), f"m{n}", n + 1, bytes([n, 0, 0, 0, 0, 0, 0, 0])),
                )
            before = _rows(conn)
        _alembic(db, "upgrade", "heads")
        with psycopg.connect(fresh_pg_url) as conn:
            assert _rows(conn) == before
            assert _kind(conn) == "p"  # partitioned
            by_partition = dict(
                conn.execute(
                    "SELECT tableoid::regclass::text, count(*) FROM rollups_1h_cube GROUP BY 1"
                ).fetchall()
            )
            assert by_partition["rollups_1h_cube_d4"] == 1
            assert by_partition["rollups_1h_cube_default"] == 1  # mask 31
            assert len(by_partition) == len(cube.SETS) + 1
            # The primary key still holds across partitions: a second row for a key fails.
            conn.execute("SAVEPOINT dup")
            try:
                conn.execute(
                    "INSERT INTO rollups_1h_cube SELECT * FROM rollups_1h_cube WHERE dims = 4"
                )
            except psycopg.errors.UniqueViolation:
                conn.execute("ROLLBACK TO SAVEPOINT dup")
            else:
                raise AssertionError("duplicate cube key accepted")
        _alembic(db, "downgrade", "0008_rollup_cube")
        with psycopg.connect(fresh_pg_url) as conn:
            assert _rows(conn) == before
            assert _kind(conn) == "r"  # a plain table
    finally:
        db.dispose()
