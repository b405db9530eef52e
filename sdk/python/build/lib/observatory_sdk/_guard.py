"""The rule that keeps the SDK harmless: its own failures never reach the application.

Every piece of SDK code that runs inside an application call goes through :func:`safely`. A bug
in the SDK, an unexpected response shape or an OpenTelemetry error is logged at DEBUG level on the
``observatory_sdk`` logger and the application carries on with exactly the result or exception it
would have had without the SDK.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, TypeVar

log = logging.getLogger("observatory_sdk")

T = TypeVar("T")


class _Failed:
    """Marker returned by :func:`safely` when the guarded call raised."""

    def __repr__(self) -> str:
        return "FAILED"


FAILED: Any = _Failed()


def safely(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``func``; on any ``Exception`` log it and return :data:`FAILED` instead.

    ``BaseException`` subclasses that are not ``Exception`` (KeyboardInterrupt, SystemExit,
    cancellation) are not the SDK's to swallow and propagate.
    """
    try:
        return func(*args, **kwargs)
    except Exception:
        log.debug("observatory_sdk: internal error in %r (ignored)", func, exc_info=True)
        return FAILED  # type: ignore[no-any-return]
