"""Database engines: the primary for writes, an optional replica for reads, and migrations."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

# How long a failed replica is skipped before it is tried again.
REPLICA_RETRY_SECONDS = 5.0


class DatabaseUrlError(ValueError):
    """The database URL is not one this server can use."""


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed database URL."""

    dialect: str  # "sqlite" or "postgresql"
    sqlalchemy_url: str
    sqlite_path: Path | None = None
    libpq_dsn: str | None = None  # for direct psycopg connections (COPY)


def parse_database_url(url: str) -> DatabaseUrl:
    """Accept ``sqlite:///path`` and ``postgresql://…`` (also ``postgres://``, ``+psycopg``)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("sqlite", "sqlite+pysqlite"):
        raw_path = unquote(parts.path)
        if parts.netloc or not raw_path or raw_path == "/":
            raise DatabaseUrlError(
                "SQLite URLs look like sqlite:///relative/path.db or sqlite:////abs/path.db"
            )
        path = Path(raw_path[1:]) if raw_path.startswith("/") else Path(raw_path)
        return DatabaseUrl("sqlite", f"sqlite:///{path.as_posix()}", sqlite_path=path)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
        if not parts.path or parts.path == "/":
            raise DatabaseUrlError(
                "PostgreSQL URLs need a database name: postgresql://user@host:5432/db"
            )
        rest = url.split("://", 1)[1]
        for key, _ in parse_qsl(parts.query):
            if key in ("password",):
                raise DatabaseUrlError("put the password in the URL's user part, not the query")
        return DatabaseUrl(
            "postgresql", f"postgresql+psycopg://{rest}", libpq_dsn=f"postgresql://{rest}"
        )
    raise DatabaseUrlError(
        f"unsupported database URL scheme {scheme!r}; use sqlite:/// or postgresql://"
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: an acknowledged commit survives a crash of the process and of the machine.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _postgres_session(dbapi_connection: Any, _record: Any) -> None:
    # JIT compilation costs seconds on the planner's large estimates for queries over many day
    # partitions (measured: trace list with a model filter 7 s with JIT, 70 ms without) and
    # gains nothing on these short queries. A SET (not a startup option) passes PgBouncer.
    # Dashboard aggregations over the rollup histograms group hundreds of thousands of rows for a
    # 30-day range; with the default 4 MB they sort on disk (measured: 650 ms → 376 ms at 64 MB
    # for an hourly series by model over 10 M spans). Per sort or hash, per connection of the pool.
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET jit = off")
        cursor.execute("SET work_mem = '64MB'")
    dbapi_connection.commit()


def make_engine(url: DatabaseUrl, pool_size: int = 10, *, pooled: bool = True) -> Engine:
    if url.dialect == "sqlite":
        assert url.sqlite_path is not None
        url.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url.sqlalchemy_url,
            connect_args={"check_same_thread": False, "timeout": 10},
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=False,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs: dict[str, Any] = {
        "connect_args": {"connect_timeout": 5, "application_name": "llm-observatory"},
        "pool_pre_ping": True,
    }
    if pooled:
        kwargs.update(
            pool_size=pool_size, max_overflow=pool_size, pool_timeout=10, pool_recycle=1800
        )
    else:
        kwargs["poolclass"] = NullPool
    engine = create_engine(url.sqlalchemy_url, **kwargs)
    event.listen(engine, "connect", _postgres_session)
    return engine


class Database:
    """The primary (writes, admin) and an optional read replica with fallback to the primary."""

    def __init__(self, url: str, read_url: str | None = None, pool_size: int = 10) -> None:
        self.url = parse_database_url(url)
        self.dialect = self.url.dialect
        self.engine = make_engine(self.url, pool_size)
        self.read_url = parse_database_url(read_url) if read_url else None
        self.read_engine = make_engine(self.read_url, pool_size) if self.read_url else None
        self._replica_down_until = 0.0
        self._lock = threading.Lock()

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction on the primary."""
        with self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for queries: the replica when configured and up, else the primary."""
        if self.read_engine is not None and time.monotonic() >= self._replica_down_until:
            try:
                conn = self.read_engine.connect()
                try:
                    # A pooler (PgBouncer) accepts the connection even when the replica behind
                    # it is down; the first statement tells.
                    conn.exec_driver_sql("SELECT 1")
                except BaseException:
                    conn.close()
                    raise
            except (OperationalError, DBAPIError) as exc:
                log.warning(
                    "read replica unreachable, using the primary: %s", exc.__class__.__name__
                )
                self._replica_down()
            else:
                with conn:
                    try:
                        yield conn
                    except DBAPIError as exc:
                        # The replica went away under a running query (stopped, failed over):
                        # this request fails, the next ones read from the primary.
                        if isinstance(exc, OperationalError) or exc.connection_invalidated:
                            log.warning(
                                "read replica lost during a query, using the primary: %s",
                                exc.__class__.__name__,
                            )
                            self._replica_down()
                        raise
                return
        with self.engine.connect() as conn:
            yield conn

    def _replica_down(self) -> None:
        with self._lock:
            self._replica_down_until = time.monotonic() + REPLICA_RETRY_SECONDS

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
        if self.read_engine is not None:
            self.read_engine.dispose()


@contextlib.contextmanager
def cluster_lock(db: Database, key: int, name: str, *, wait: bool = False) -> Iterator[bool]:
    """Hold a lock shared by every process on this database: yields True when it is held.

    PostgreSQL: a session-level advisory lock on ``key``, taken on a dedicated connection and
    held for the whole block (it goes away with the session if the process dies). SQLite: an
    exclusive ``flock`` on ``<database file>.<name>-lock``, which excludes other processes on the
    same machine. With ``wait`` the caller blocks until the lock is free (always yields True);
    without it a lock held elsewhere yields False at once.
    """
    if db.is_postgres:
        conn = db.engine.connect()
        try:
            if wait:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                acquired = True
            else:
                acquired = bool(
                    conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
                )
            conn.commit()
            try:
                yield acquired
            finally:
                if acquired:
                    try:
                        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                        conn.commit()
                    except DBAPIError:
                        conn.invalidate()  # ending the session releases the lock
        finally:
            conn.close()
        return
    assert db.url.sqlite_path is not None
    lock_path = db.url.sqlite_path.with_suffix(db.url.sqlite_path.suffix + f".{name}-lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# Session-level advisory lock keys: migrations 727274, retention 727275, alert evaluator 727276.
MIGRATION_LOCK_KEY = 727274


@contextlib.contextmanager
def migration_lock(db: Database) -> Iterator[None]:
    """Serialise migrations between processes starting together."""
    with cluster_lock(db, MIGRATION_LOCK_KEY, "migrate", wait=True):
        yield


def migrate(db: Database) -> str:
    """Apply every Alembic migration; return the revision the database is at."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    script_location = str(Path(__file__).parent / "migrations")
    cfg = Config()
    cfg.set_main_option("script_location", script_location)
    with migration_lock(db), db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")
        heads = MigrationContext.configure(conn).get_current_heads()
    return ",".join(sorted(heads))


def current_revision(db: Database) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
