"""The scheduled retention job: an ``app.state.startup_hooks`` coroutine run by every server.

Every server (and every worker process) runs the loop; the retention lock (a PostgreSQL advisory
lock, a file lock on SQLite) lets exactly one of them work at a time, the others skip that round.
The first round starts shortly after start-up, so servers that restart more often than the
interval still enforce retention. The database work runs in a thread; at shutdown the task is
cancelled and the run stops between two batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from observatory.store.retention import (
    KINDS,
    RetentionInterrupted,
    RetentionReport,
    defaults_from_settings,
    run_retention,
)

log = logging.getLogger(__name__)

FIRST_RUN_DELAY_SECONDS = 60.0


def run_once(st: Any, stop: threading.Event | None = None) -> RetentionReport:
    """One retention round for the application state ``st`` (``api.deps.AppState``)."""
    report = run_retention(st.db, defaults_from_settings(st.settings), actor="system", stop=stop)
    if report.ran:
        totals = {kind: report.total(kind) for kind in KINDS}
        log.info(
            "retention run finished: %s",
            ", ".join(f"{kind} {count}" for kind, count in totals.items()),
            extra={"deleted": totals, "dropped_partitions": report.dropped_partitions},
        )
        for plan in report.projects:
            if plan.project_id is not None and any(plan.counts.values()):
                # Cached dashboard answers may include what was just deleted.
                with contextlib.suppress(Exception):
                    st.cache.bump(plan.project_id)
    return report


async def retention_hook(app: Any) -> None:
    """Run retention every ``OBSERVATORY_RETENTION_INTERVAL_SECONDS`` (0 disables it)."""
    st = app.state.obs
    interval = st.settings.retention_interval_seconds
    if interval <= 0:
        log.info("scheduled retention is disabled (OBSERVATORY_RETENTION_INTERVAL_SECONDS=0)")
        return
    stop = threading.Event()
    try:
        await asyncio.sleep(min(float(interval), FIRST_RUN_DELAY_SECONDS))
        while True:
            try:
                await asyncio.to_thread(run_once, st, stop)
            except RetentionInterrupted:
                return
            except Exception:
                log.warning("retention run failed; trying again next round", exc_info=True)
            await asyncio.sleep(interval)
    finally:
        # Cancelled at shutdown: let a run in its thread stop after the current batch.
        stop.set()
