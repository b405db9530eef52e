"""Group commit: many requests share one transaction; each is answered only after its commit.

A single writer thread owns the write connection. Requests put their rows on a bounded queue and
await a future. The thread takes everything queued (up to ``batch_max_spans``), commits it in one
transaction and resolves the futures. When the queue is full, or while the database is
unreachable, submissions fail fast with :class:`Overloaded` / :class:`Unavailable` (answered 503
with Retry-After) and nothing is half-written: a failed transaction is rolled back whole.

A batch that fails for a reason other than connectivity (a value the database refuses) is split:
each request is retried alone, and within a failing request each span alone, so only the
offending spans are rejected (reported through ``partial_success``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import InterfaceError as SAInterfaceError
from sqlalchemy.exc import OperationalError as SAOperationalError
from sqlalchemy.exc import TimeoutError as SATimeoutError

from observatory import metrics
from observatory.store.writes import Aggregates, EncodedRows, SpanStore

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The writer queue is full; the client should retry later."""


class Unavailable(Exception):
    """The database cannot be written right now; the client should retry later."""


@dataclass
class WriteResult:
    """What became of one request's rows (duplicates are counted in metrics by the writer)."""

    rejected_rows: list[int] = field(default_factory=list)  # indexes into the submitted rows
    rejected_message: str = ""


@dataclass
class _Pending:
    rows: Sequence[Any]
    aggregates: Aggregates | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[WriteResult]
    project_id: int | None = None
    enqueued_at: float = field(default_factory=time.monotonic)


def _merged(batch: Sequence[_Pending]) -> Aggregates | None:
    """The aggregates of a whole batch, or None unless every request brought its own."""
    if any(p.aggregates is None for p in batch):
        return None
    if len(batch) == 1:
        return batch[0].aggregates
    merged = Aggregates()
    for p in batch:
        assert p.aggregates is not None
        merged.merge(p.aggregates)
    return merged


def _stored(rows: Sequence[Any]) -> int:
    """Rows meant for the spans table (the last element of a row is its "keep" flag)."""
    if isinstance(rows, EncodedRows):
        return rows.stored
    return sum(1 for row in rows if row[-1])


def _concat(parts: list[Sequence[Any]]) -> Sequence[Any]:
    if all(isinstance(part, EncodedRows) for part in parts):
        return EncodedRows.concat(parts)  # type: ignore[arg-type]
    return [row for part in parts for row in part]


def is_connectivity_error(exc: BaseException) -> bool:
    """Errors that mean "the database is not there", as opposed to "this data is wrong"."""
    if isinstance(
        exc,
        psycopg.OperationalError
        | SAOperationalError
        | SAInterfaceError
        | SATimeoutError
        | ConnectionError
        | OSError,
    ):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, psycopg.errors.AdminShutdown | psycopg.errors.CannotConnectNow):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        message = str(exc).lower()
        return "locked" in message or "unable to open" in message or "disk i/o" in message
    return isinstance(exc, psycopg.InterfaceError)


class GroupCommitWriter:
    """Owns the write connection and the writer thread."""

    def __init__(
        self,
        store_factory: Callable[[], SpanStore],
        *,
        queue_max_spans: int,
        batch_max_spans: int,
        max_wait_ms: float,
        on_commit: Callable[[set[int]], None] | None = None,
    ) -> None:
        self._store_factory = store_factory
        self._store: SpanStore | None = None
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._queue_max = queue_max_spans
        self._batch_max = batch_max_spans
        self._max_wait = max_wait_ms / 1000.0
        self._on_commit = on_commit
        self._pending_spans = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._accepting = False
        self.db_available = True
        self.last_error: str | None = None
        self._retry_at = 0.0

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="observatory-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, let everything queued commit, then end the thread."""
        self._accepting = False
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    @property
    def queue_depth(self) -> int:
        return self._pending_spans

    @property
    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.db_available

    # --- submission ------------------------------------------------------------------------------

    async def submit(
        self,
        rows: Sequence[Any],
        timeout: float,
        aggregates: Aggregates | None = None,
        project_id: int | None = None,
    ) -> WriteResult:
        """Queue rows (with their aggregates, if computed) and wait until they are committed.

        ``project_id`` (the rows' project) is handed to ``on_commit`` once the batch holding them
        commits and before this returns: the server invalidates that project's cached answers
        there, once per batch rather than once per request.
        """
        if not rows:
            return WriteResult()
        if not self._accepting:
            raise Unavailable("the server is shutting down")
        if not self.db_available and time.monotonic() < self._retry_at:
            raise Unavailable(self.last_error or "the database is unavailable")
        with self._lock:
            if self._pending_spans + len(rows) > self._queue_max and self._pending_spans > 0:
                raise Overloaded("the ingest queue is full")
            self._pending_spans += len(rows)
            metrics.writer_queue_depth.set(self._pending_spans)
        loop = asyncio.get_running_loop()
        pending = _Pending(rows, aggregates, loop, loop.create_future(), project_id)
        self._queue.put(pending)
        # The write may still commit after a timeout; a retry of the same spans is idempotent.
        return await asyncio.wait_for(asyncio.shield(pending.future), timeout)

    # --- the writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while True:
            item = self._queue.get()
            if item is None:
                stopping = True
                if self._queue.empty():
                    break
                continue
            batch = [item]
            size = len(item.rows)
            deadline = time.monotonic() + self._max_wait
            while size < self._batch_max:
                remaining = deadline - time.monotonic()
                try:
                    nxt = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    continue
                batch.append(nxt)
                size += len(nxt.rows)
            self._commit(batch)
            if stopping and self._queue.empty():
                break
        if self._store is not None:
            try:
                self._store.close()
            except Exception:
                log.debug("closing the write connection failed", exc_info=True)

    def _finish(self, pending: _Pending, result: WriteResult | BaseException) -> None:
        with self._lock:
            self._pending_spans -= len(pending.rows)
            metrics.writer_queue_depth.set(self._pending_spans)

        def resolve() -> None:
            if pending.future.done():
                return
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)

        # A closed loop means nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            pending.loop.call_soon_threadsafe(resolve)

    def _write(self, rows: Sequence[Any], aggregates: Aggregates | None = None) -> int:
        if self._store is None:
            self._store = self._store_factory()
        started = time.perf_counter()
        inserted = self._store.write(rows, aggregates)
        elapsed = time.perf_counter() - started
        metrics.writer_batch_commit_seconds.observe(elapsed)
        metrics.db_query_duration_seconds.labels("ingest_commit").observe(elapsed)
        metrics.writer_batch_spans.observe(len(rows))
        return inserted

    def _mark_down(self, exc: BaseException) -> None:
        self.db_available = False
        self.last_error = f"the database is unavailable ({exc.__class__.__name__})"
        self._retry_at = time.monotonic() + 1.0
        metrics.db_up.set(0)
        if self._store is not None:
            try:
                self._store.close()
            except Exception:
                log.debug("closing the broken write connection failed", exc_info=True)
            self._store = None

    def _mark_up(self) -> None:
        if not self.db_available:
            log.info("database writes recovered")
        self.db_available = True
        self.last_error = None
        metrics.db_up.set(1)

    def _commit(self, batch: list[_Pending]) -> None:
        rows = _concat([p.rows for p in batch])
        try:
            inserted = self._write(rows, _merged(batch))
        except Exception as exc:
            if is_connectivity_error(exc):
                log.warning("database write failed, answering 503: %s", exc.__class__.__name__)
                self._mark_down(exc)
                for p in batch:
                    self._finish(p, Unavailable(self.last_error or "the database is unavailable"))
                return
            log.warning(
                "batch of %d spans failed (%s); isolating the offending spans",
                len(rows),
                exc.__class__.__name__,
            )
            for p in batch:
                self._commit_alone(p)
            return
        self._committed(inserted, _stored(rows), batch)
        for p in batch:
            self._finish(p, WriteResult())

    def _committed(self, inserted: int, submitted: int, batch: Sequence[_Pending]) -> None:
        self._mark_up()
        metrics.spans_duplicate_total.inc(max(0, submitted - inserted))
        if self._on_commit is None:
            return
        projects = {p.project_id for p in batch if p.project_id is not None}
        try:
            self._on_commit(projects)
        except Exception:  # the data is committed whatever the callback does
            log.warning("the commit callback failed", exc_info=True)

    def _commit_alone(self, pending: _Pending) -> None:
        try:
            inserted = self._write(pending.rows, pending.aggregates)
        except Exception as exc:
            if is_connectivity_error(exc):
                self._mark_down(exc)
                self._finish(pending, Unavailable(self.last_error or "the database is unavailable"))
                return
            self._finish(pending, self._commit_each(pending, exc))
            return
        self._committed(inserted, _stored(pending.rows), [pending])
        self._finish(pending, WriteResult())

    def _commit_each(
        self, pending: _Pending, first_error: BaseException
    ) -> WriteResult | BaseException:
        rows = pending.rows
        inserted = 0
        rejected: list[int] = []
        message = f"rejected by the database: {str(first_error).splitlines()[0][:200]}"
        for index, row in enumerate(rows):
            try:
                new = self._write([row])
            except Exception as exc:
                if is_connectivity_error(exc):
                    self._mark_down(exc)
                    return Unavailable(self.last_error or "the database is unavailable")
                rejected.append(index)
                continue
            inserted += new
        self._committed(inserted, _stored(rows) - len(rejected), [pending])
        return WriteResult(rejected, message if rejected else "")
