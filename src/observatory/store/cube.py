"""The rollup cube: hourly latency histograms pre-merged per dimension set.

A dashboard's percentile series over 30 days needs, per point, the latency histogram of every
span in that hour that matches its filter and group. ``rollups_1h_latency`` keeps one row per
(hour, service, provider, model, operation, environment, bucket): ~800,000 rows for 30 days at
10 M spans, too many to add up per request. The cube keeps, per hour, one packed histogram
(store/histogram.to_stored) for every value combination of each set of at most two dimensions
(``dims``, a bit mask over ROLLUP_DIMENSIONS), split by ``llm`` (model != ''). A query whose
filters and grouping use at most two dimensions reads only its own set: for a series grouped by
model that is one row per model and hour, a few thousand rows for 30 days.

The cube is derived, never written by ingest. :func:`compact` (the server runs it every
``OBSERVATORY_CUBE_INTERVAL_SECONDS``; ``observatory rollups compact`` runs it once) rebuilds the
hours whose rollup totals changed since they were built, in one transaction per hour, and stamps
each hour with the totals it was built from (``rollups_1h_cube_hours``). A query uses an hour's
cube rows only while the stamp equals the hour's current totals in ``rollups_1h`` (on PostgreSQL
read from ``rollups_1h_totals``, which triggers keep); the hours that
changed since (the current hour, late spans, erasure, retention) are read from
``rollups_1h_latency`` as before, so answers are the same with or without the cube.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Table,
    cast,
    delete,
    func,
    insert,
    literal_column,
    select,
)

from observatory.store import histogram
from observatory.store.engine import Database, cluster_lock
from observatory.store.schema import (
    CUBE_STAMP_SUMS,
    ROLLUP_DIMENSIONS,
    ROLLUP_SUMS,
    rollups_1h,
    rollups_1h_cube,
    rollups_1h_cube_hours,
    rollups_1h_latency,
    rollups_1h_totals,
)

log = logging.getLogger(__name__)

HOUR = 3600
PG_LOCK_KEY = 727277
MAX_DIMS = 2
# Every dimension set of at most MAX_DIMS dimensions, as bit masks (bit i: ROLLUP_DIMENSIONS[i]).
SETS: tuple[int, ...] = tuple(
    sum(1 << i for i in chosen)
    for size in range(MAX_DIMS + 1)
    for chosen in combinations(range(len(ROLLUP_DIMENSIONS)), size)
)
_MODEL = ROLLUP_DIMENSIONS.index("model")
Stamp = tuple[int, ...]


def mask_of(dimensions: Iterable[str]) -> int | None:
    """The set holding these dimensions (rollup column names), or None when there are too many."""
    mask = 0
    for name in dimensions:
        mask |= 1 << ROLLUP_DIMENSIONS.index(name)
    return mask if mask.bit_count() <= MAX_DIMS else None


# --- building -----------------------------------------------------------------------------------


def _in_range(table: Table, project_id: int | None, lo: int | None, hi: int | None) -> list[Any]:
    c = table.c
    cond = [] if project_id is None else [c.project_id == project_id]
    if lo is not None:
        cond.append(c.bucket_start_unix_s >= lo)
    if hi is not None:
        cond.append(c.bucket_start_unix_s < hi)
    return cond


def _hour_totals(conn: Connection, project_id: int | None, lo: int | None, hi: int | None) -> Any:
    """Per (project, hour) in ``[lo, hi)``: the rollups_1h totals a stamp is made of (on
    PostgreSQL kept up to date by triggers in rollups_1h_totals; on SQLite added up)."""
    if conn.dialect.name == "postgresql":
        t = rollups_1h_totals.c
        return conn.execute(
            select(t.project_id, t.bucket_start_unix_s, *[getattr(t, n) for n in CUBE_STAMP_SUMS])
            .where(*_in_range(rollups_1h_totals, project_id, lo, hi))
            .where(t.requests > 0)
        )
    r = rollups_1h.c
    return conn.execute(
        select(
            r.project_id,
            r.bucket_start_unix_s,
            # BIGINT sums: PostgreSQL would add them up as NUMERIC, slower to sum and to read.
            *[cast(func.sum(getattr(r, name)), BigInteger).label(name) for name in CUBE_STAMP_SUMS],
        )
        .where(*_in_range(rollups_1h, project_id, lo, hi))
        .group_by(r.project_id, r.bucket_start_unix_s)
    )


def _stamps(conn: Connection, project_id: int | None, lo: int | None, hi: int | None) -> Any:
    s = rollups_1h_cube_hours.c
    return conn.execute(
        select(
            s.project_id, s.bucket_start_unix_s, *[getattr(s, n) for n in CUBE_STAMP_SUMS]
        ).where(*_in_range(rollups_1h_cube_hours, project_id, lo, hi))
    )


def _as_stamps(rows: Any) -> dict[tuple[int, int], Stamp]:
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def _positions(mask: int) -> tuple[int, ...]:
    return tuple(i for i in range(len(ROLLUP_DIMENSIONS)) if mask >> i & 1)


CellKey = tuple[int, int, tuple[str, ...]]  # (dims, llm, values of the set's dimensions)


class Cell:
    """One cube row being built: the sums (ROLLUP_SUMS order) and the packed histogram."""

    __slots__ = ("packed", "sums")

    def __init__(self) -> None:
        self.sums: list[Any] = [0] * len(ROLLUP_SUMS)
        self.packed = 0


def hour_cells(
    sums_rows: Iterable[Sequence[Any]], latency_rows: Iterable[Sequence[Any]]
) -> dict[CellKey, Cell]:
    """Cube cells of one hour from its rollups_1h rows ``(*ROLLUP_DIMENSIONS, *ROLLUP_SUMS)`` and
    rollups_1h_latency rows ``(*ROLLUP_DIMENSIONS, bucket_index, count)``."""
    n = len(ROLLUP_DIMENSIONS)
    pickers = [(mask, _positions(mask)) for mask in SETS]
    cells: dict[CellKey, Cell] = {}

    def cells_of(row: Sequence[Any]) -> Iterator[Cell]:
        llm = 1 if row[_MODEL] else 0
        for mask, positions in pickers:
            key = (mask, llm, tuple([row[i] for i in positions]))
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = Cell()
            yield cell

    for row in sums_rows:
        values = row[n:]
        for cell in cells_of(row):
            cell.sums = [a + b for a, b in zip(cell.sums, values, strict=True)]
    for row in latency_rows:
        packed = histogram.pack(row[n], row[n + 1])
        for cell in cells_of(row):
            cell.packed += packed
    return cells


def rebuild_hour(conn: Connection, project_id: int, hour: int) -> Stamp | None:
    """Replace one hour's cube rows and stamp (inside the caller's transaction).

    The totals are read before the rollups: if spans commit in between, the stamp is older than
    the rows and the next query or compaction sees the hour as changed, never the reverse.
    """
    totals = _as_stamps(_hour_totals(conn, project_id, hour, hour + 1))
    conn.execute(
        delete(rollups_1h_cube).where(
            rollups_1h_cube.c.project_id == project_id,
            rollups_1h_cube.c.dims.in_(SETS),
            rollups_1h_cube.c.bucket_start_unix_s == hour,
        )
    )
    conn.execute(
        delete(rollups_1h_cube_hours).where(
            rollups_1h_cube_hours.c.project_id == project_id,
            rollups_1h_cube_hours.c.bucket_start_unix_s == hour,
        )
    )
    stamp = totals.get((project_id, hour))
    if stamp is None:  # the hour's rollups are gone (retention, erasure): so are its cells
        return None
    dims = [getattr(rollups_1h.c, d) for d in ROLLUP_DIMENSIONS]
    sums_rows = conn.execute(
        select(*dims, *[getattr(rollups_1h.c, name) for name in ROLLUP_SUMS]).where(
            rollups_1h.c.project_id == project_id, rollups_1h.c.bucket_start_unix_s == hour
        )
    ).all()
    lat = rollups_1h_latency.c
    latency_rows = conn.execute(
        select(*[getattr(lat, d) for d in ROLLUP_DIMENSIONS], lat.bucket_index, lat.count).where(
            lat.project_id == project_id, lat.bucket_start_unix_s == hour
        )
    ).all()
    params = []
    for (mask, llm, values), cell in hour_cells(sums_rows, latency_rows).items():
        row = dict.fromkeys(ROLLUP_DIMENSIONS, "")
        row.update(zip([ROLLUP_DIMENSIONS[i] for i in _positions(mask)], values, strict=True))
        lo, counts = histogram.to_stored(cell.packed) if cell.packed else (0, b"")
        percentiles = histogram.packed_percentiles(cell.packed, histogram.QUANTILES)
        params.append(
            {
                "project_id": project_id,
                "dims": mask,
                "bucket_start_unix_s": hour,
                "llm": llm,
                **row,
                **dict(zip(ROLLUP_SUMS, cell.sums, strict=True)),
                **dict(zip(histogram.PERCENTILE_NAMES, percentiles, strict=True)),
                "lo": lo,
                "counts": counts,
            }
        )
    if params:
        conn.execute(insert(rollups_1h_cube), params)
    conn.execute(
        insert(rollups_1h_cube_hours),
        [
            {
                "project_id": project_id,
                "bucket_start_unix_s": hour,
                **dict(zip(CUBE_STAMP_SUMS, stamp, strict=True)),
            }
        ],
    )
    return stamp


def changed_hours(
    conn: Connection, before_s: int, since_s: int | None = None
) -> list[tuple[int, int]]:
    """(project, hour) of hours ending by ``before_s`` (and starting at ``since_s`` or later)
    whose stamp is missing or out of date, and of stamps left over from hours whose rollups are
    gone."""
    totals = _as_stamps(_hour_totals(conn, None, since_s, before_s - HOUR + 1))
    stamps = _as_stamps(_stamps(conn, None, since_s, before_s - HOUR + 1))
    changed = [key for key, stamp in totals.items() if stamps.get(key) != stamp]
    changed.extend(key for key in stamps if key not in totals)
    return sorted(changed)


@dataclass
class CompactResult:
    hours: int = 0
    pending: int = 0
    seconds: float = 0.0
    skipped: bool = False


def compact(
    db: Database,
    *,
    now_s: int | None = None,
    max_hours: int | None = None,
    settle_s: int = 60,
    lookback_s: int | None = None,
) -> CompactResult:
    """Rebuild the cube for every changed hour that ended at least ``settle_s`` ago (and, with
    ``lookback_s``, started no longer than that ago: the server's frequent rounds look at recent
    hours only, as comparing every hour ever means reading all of rollups_1h).

    One server of a cluster does it at a time (a cluster lock; the others skip the round). At
    most ``max_hours`` hours are rebuilt per call, newest first; ``pending`` says how many remain.
    """
    started = time.perf_counter()
    now_s = int(time.time()) if now_s is None else now_s
    with cluster_lock(db, PG_LOCK_KEY, "cube") as acquired:
        if not acquired:
            return CompactResult(skipped=True)
        with db.engine.connect() as conn:
            since = None if lookback_s is None else now_s - lookback_s
            todo = changed_hours(conn, now_s - settle_s, since)
            conn.rollback()
        todo.sort(key=lambda key: -key[1])
        chosen = todo if max_hours is None else todo[:max_hours]
        for project_id, hour in chosen:
            with _snapshot(db) as conn:
                rebuild_hour(conn, project_id, hour)
    return CompactResult(
        hours=len(chosen),
        pending=len(todo) - len(chosen),
        seconds=time.perf_counter() - started,
    )


def _snapshot(db: Database) -> Any:
    """A write transaction that reads one snapshot (REPEATABLE READ on PostgreSQL; SQLite's
    write transactions are serialised anyway)."""
    if db.is_postgres:
        return db.engine.execution_options(isolation_level="REPEATABLE READ").begin()
    return db.write()


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Validity:
    """Which hours of a range the cube may answer for."""

    valid: set[int]  # built from the hour's current rollups
    stale: set[int]  # with rollups the cube rows do not reflect (or none): read the rows
    skip: set[int]  # with cube rows that must not be read (stale, or rollups gone)


def validity(conn: Connection, project_id: int, lo: int | None, hi: int | None) -> Validity:
    totals = _as_stamps(_hour_totals(conn, project_id, lo, hi))
    stamps = _as_stamps(_stamps(conn, project_id, lo, hi))
    valid = {key[1] for key, stamp in totals.items() if stamps.get(key) == stamp}
    return Validity(valid, {key[1] for key in totals} - valid, {key[1] for key in stamps} - valid)


@dataclass(frozen=True)
class Cells:
    """The cube cells one dashboard query reads: the set ``mask``, its filter values, LLM calls
    only or all, hours in ``[lo, hi)`` but for ``skip``."""

    project_id: int
    mask: int
    filters: dict[str, str]
    group_column: str | None
    llm_only: bool
    lo: int | None
    hi: int | None
    skip: frozenset[int] = frozenset()

    def _where(self) -> list[Any]:
        c = rollups_1h_cube.c
        cond = [*_in_range(rollups_1h_cube, self.project_id, self.lo, self.hi), c.dims == self.mask]
        cond.extend(getattr(c, column) == value for column, value in self.filters.items())
        if self.llm_only:
            cond.append(c.llm == 1)
        if self.skip:
            cond.append(c.bucket_start_unix_s.not_in(sorted(self.skip)))
        return cond

    def _group(self) -> Any:
        c = rollups_1h_cube.c
        return (getattr(c, self.group_column) if self.group_column else literal_column("''")).label(
            "g"
        )

    def points(self, conn: Connection) -> list[Any]:
        """Rows ``(hour, group value, *ROLLUP_SUMS, *percentiles)``, one per cell: for a series
        whose points are one cell each (hourly, LLM calls only)."""
        c = rollups_1h_cube.c
        return list(
            conn.execute(
                select(
                    c.bucket_start_unix_s,
                    self._group(),
                    *[getattr(c, name) for name in ROLLUP_SUMS],
                    *[getattr(c, name) for name in histogram.PERCENTILE_NAMES],
                ).where(*self._where())
            ).all()
        )

    def sums(self, conn: Connection, bucket: Callable[[Any], Any] | None) -> list[Any]:
        """Rows ``(bucket, group value, *ROLLUP_SUMS)``, added up by the database per
        ``bucket(hour column)`` (0 for the whole range when None) and group."""
        c = rollups_1h_cube.c
        b = (bucket(c.bucket_start_unix_s) if bucket else literal_column("0")).label("b")
        g = self._group()
        keys = [k for k, used in ((b, bucket), (g, self.group_column)) if used]
        return list(
            conn.execute(
                select(b, g, *[func.sum(getattr(c, name)) for name in ROLLUP_SUMS])
                .where(*self._where())
                .group_by(*keys)
            ).all()
        )

    def histograms(self, conn: Connection) -> list[Any]:
        """Rows ``(hour, group value, lo, counts)`` (see histogram.from_stored)."""
        c = rollups_1h_cube.c
        return list(
            conn.execute(
                select(c.bucket_start_unix_s, self._group(), c.lo, c.counts).where(*self._where())
            ).all()
        )


# --- in the server ------------------------------------------------------------------------------

HOURS_PER_ROUND = 240
# Rounds look back this far; every FULL_ROUND_EVERY-th round (and the first) looks at all hours,
# for spans that arrive days late. Meanwhile queries read such hours from the rollup rows.
RECENT_SECONDS = 2 * 86400
FULL_ROUND_EVERY = 60


async def cube_hook(app: Any) -> None:
    """Rebuild changed hours every ``OBSERVATORY_CUBE_INTERVAL_SECONDS`` (0 disables it).

    A round rebuilds at most HOURS_PER_ROUND hours (newest first), so a backlog after an upgrade
    is worked off over a few rounds without holding a thread for long.
    """
    st = app.state.obs
    interval = st.settings.cube_interval_seconds
    if interval <= 0:
        log.info("rollup cube compaction is disabled (OBSERVATORY_CUBE_INTERVAL_SECONDS=0)")
        return
    rounds = 0
    backlog = False  # a full round left hours over: the next rounds are full ones too
    while True:
        full = backlog or rounds % FULL_ROUND_EVERY == 0
        lookback = None if full else RECENT_SECONDS
        rounds += 1
        try:
            result = await asyncio.to_thread(
                compact, st.db, max_hours=HOURS_PER_ROUND, lookback_s=lookback
            )
        except Exception:
            log.warning("rollup cube compaction failed; trying again next round", exc_info=True)
        else:
            if result.hours:
                log.info(
                    "rollup cube: rebuilt %d hours in %.1f s (%d pending)",
                    result.hours,
                    result.seconds,
                    result.pending,
                )
            backlog = full and result.pending > 0
            if result.pending:
                continue  # work off a backlog without waiting a full interval
        await asyncio.sleep(interval)
