from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from observatory.store.engine import Database, cluster_lock

KEY = 424242


@pytest.fixture
def two_servers(database_url: str) -> Iterator[tuple[Database, Database]]:
    """Two Database objects on one database, standing for two servers of a cluster."""
    first, second = Database(database_url), Database(database_url)
    try:
        yield first, second
    finally:
        first.dispose()
        second.dispose()


def test_cluster_lock_is_held_by_one_caller_at_a_time(
    two_servers: tuple[Database, Database],
) -> None:
    first, second = two_servers
    with cluster_lock(first, KEY, "test") as held:
        assert held
        with cluster_lock(second, KEY, "test") as other:
            assert not other
        with cluster_lock(second, KEY + 1, "other") as unrelated:
            assert unrelated
    with cluster_lock(second, KEY, "test") as held_after_release:
        assert held_after_release


def test_cluster_lock_with_wait_blocks_until_released(
    two_servers: tuple[Database, Database],
) -> None:
    first, second = two_servers
    acquired = threading.Event()

    def wait_for_lock() -> None:
        with cluster_lock(second, KEY, "test", wait=True) as held:
            assert held
            acquired.set()

    with cluster_lock(first, KEY, "test") as held:
        assert held
        waiter = threading.Thread(target=wait_for_lock)
        waiter.start()
        assert not acquired.wait(0.5)
    waiter.join(timeout=10)
    assert acquired.is_set()


def test_cluster_lock_file_on_sqlite(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'observatory.db'}")
    try:
        with cluster_lock(db, KEY, "test") as held:
            assert held
        assert (tmp_path / "observatory.db.test-lock").exists()
    finally:
        db.dispose()


def test_a_replica_lost_mid_query_sends_the_next_reads_to_the_primary(pg_url: str) -> None:
    import psycopg
    from sqlalchemy.exc import OperationalError

    from tests.conftest import PG_ADMIN_URL, create_pg_database, drop_pg_database

    # Two databases on one server stand for the primary and its replica.
    replica_url = create_pg_database("obs_replica")
    db = Database(pg_url, replica_url, pool_size=2)
    try:

        def database() -> str:
            with db.read() as conn:
                return str(conn.exec_driver_sql("SELECT current_database()").scalar())

        assert database() == replica_url.rsplit("/", 1)[1]
        with pytest.raises(OperationalError), db.read() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            conn.exec_driver_sql("SELECT 1")  # the replica is gone under this query
        assert database() == pg_url.rsplit("/", 1)[1]
    finally:
        db.dispose()
        drop_pg_database(replica_url)
