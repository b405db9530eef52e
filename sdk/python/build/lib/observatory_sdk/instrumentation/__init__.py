"""Instrumentation of LLM client libraries: ``instrument()`` patches, ``uninstrument()`` restores.

Each library is patched at most once, at class level, so clients created before or after
``instrument()`` are covered alike. A library that is not installed is skipped.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from collections.abc import Iterable
from typing import Any

from observatory_sdk._guard import log
from observatory_sdk.instrumentation._base import apply_patches, restore_patches

NAMES = ("openai", "anthropic")

_lock = threading.Lock()
_applied: dict[str, list[tuple[type, str, Any]]] = {}


def instrument(names: Iterable[str] | None = None) -> list[str]:
    """Patch the named client libraries (default: all known ones that are installed).

    Returns the names that are instrumented after the call.
    """
    wanted = NAMES if names is None else tuple(names)
    with _lock:
        for name in wanted:
            if name not in NAMES:
                raise ValueError(f"unknown instrumentation {name!r}; known: {', '.join(NAMES)}")
            if name in _applied or importlib.util.find_spec(name) is None:
                continue
            module = importlib.import_module(f"observatory_sdk.instrumentation._{name}")
            try:
                _applied[name] = apply_patches(module.PATCHES)
            except Exception:
                log.warning("observatory_sdk: could not instrument %s", name, exc_info=True)
        return sorted(_applied)


def uninstrument(names: Iterable[str] | None = None) -> None:
    """Restore the original methods of the named libraries (default: all)."""
    with _lock:
        for name in list(NAMES if names is None else names):
            applied = _applied.pop(name, None)
            if applied:
                restore_patches(applied)


def instrumented() -> list[str]:
    """The libraries currently instrumented."""
    return sorted(_applied)
