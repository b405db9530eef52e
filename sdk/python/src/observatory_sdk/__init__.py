"""LLM Observatory SDK: instrument a Python LLM application in two lines.

    import observatory_sdk
    observatory_sdk.init(api_key="obs_...", service_name="my-app")

Everything the application's ``openai`` and ``anthropic`` clients do is then traced with the
OpenTelemetry GenAI semantic conventions and exported to the server's OTLP endpoint. Add
``@observe`` / ``span(...)`` for your own functions, agents and tools, and ``session(...)``,
``user(...)``, ``tags(...)`` to group and label what happens inside. See docs/sdk.md.
"""

from __future__ import annotations

from observatory_sdk._config import ConfigurationError, Settings
from observatory_sdk._context import session, tags, user
from observatory_sdk._decorators import ObservedSpan, current_span, observe, span
from observatory_sdk._setup import flush, init, is_initialized, shutdown
from observatory_sdk._version import __version__
from observatory_sdk.instrumentation import instrument, instrumented, uninstrument

__all__ = [
    "ConfigurationError",
    "ObservedSpan",
    "Settings",
    "__version__",
    "current_span",
    "flush",
    "init",
    "instrument",
    "instrumented",
    "is_initialized",
    "observe",
    "session",
    "shutdown",
    "span",
    "tags",
    "uninstrument",
    "user",
]
