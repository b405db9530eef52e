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
