"""``init()``, ``flush()`` and ``shutdown()``: the tracer provider and the export pipeline.

Shape of what ``init()`` builds::

    TracerProvider (the application's global one if it already has an SDK provider, else ours)
      └─ ObservatoryProcessor   stamps session/user/tags, drops duplicate vendor spans
           └─ BatchSpanProcessor → OTLPSpanExporter (HTTP, protobuf, gzip) → <endpoint>/v1/traces

The ``ObservatoryProcessor`` is added to a provider once; calling ``init()`` again swaps the batch
processor inside it (new endpoint, key, timeout) instead of stacking a second exporter, so spans
are never exported twice.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from observatory_sdk import _attributes as attr
from observatory_sdk import _config, _context
from observatory_sdk._guard import log, safely
from observatory_sdk._version import __version__

TRACER_NAME = "observatory_sdk"

# Set in the context for the duration of an instrumented LLM call. Spans that the provider's own
# client library starts inside it (anthropic >= 2 traces its calls natively) describe the same
# call; exporting both would count the call, its tokens and its cost twice.
IN_LLM_CALL_KEY = otel_context.create_key("observatory_sdk.in_llm_call")
NATIVE_CLIENT_SCOPES = frozenset({"com.anthropic.sdk.python"})


class CountingExporter(SpanExporter):
    """Counts failed exports so that ``flush()`` can say whether the server took the spans."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.failures = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:
            log.debug("observatory_sdk: span export raised", exc_info=True)
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self.failures += 1
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class ObservatoryProcessor(SpanProcessor):
    """Stamps context values on starting spans and forwards ended spans to a swappable exporter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inner: SpanProcessor | None = None
        self._exporter: CountingExporter | None = None
        self._environment: str | None = None
        self._dropped: set[int] = set()

    def configure(
        self,
        inner: SpanProcessor | None,
        environment: str | None,
        exporter: CountingExporter | None = None,
    ) -> None:
        """Install a new export pipeline; the previous one is flushed and shut down."""
        with self._lock:
            old, self._inner, self._exporter = self._inner, inner, exporter
            self._environment = environment
        if old is not None:
            safely(old.shutdown)

    @property
    def active(self) -> bool:
        return self._inner is not None

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        safely(self._stamp, span, parent_context)
        inner = self._inner
        if inner is not None:
            safely(inner.on_start, span, parent_context)

    def _stamp(self, span: Span, parent_context: otel_context.Context | None) -> None:
        existing = span.attributes or {}
        for key, value in _context.stamped_attributes(parent_context).items():
            if key not in existing:
                span.set_attribute(key, value)
        if self._environment and attr.ENVIRONMENT not in existing:
            span.set_attribute(attr.ENVIRONMENT, self._environment)
        scope = span.instrumentation_scope
        if (
            scope is not None
            and scope.name in NATIVE_CLIENT_SCOPES
            and otel_context.get_value(IN_LLM_CALL_KEY, parent_context)
        ):
            with self._lock:
                if len(self._dropped) < 100_000:
                    self._dropped.add(span.get_span_context().span_id)

    def on_end(self, span: ReadableSpan) -> None:
        span_id = span.context.span_id if span.context is not None else None
        if self._dropped and span_id in self._dropped:
            with self._lock:
                self._dropped.discard(span_id)
            return
        inner = self._inner
        if inner is not None:
            safely(inner.on_end, span)

    def shutdown(self) -> None:
        self.configure(None, self._environment)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        inner, exporter = self._inner, self._exporter
        if inner is None:
            return True
        failures_before = exporter.failures if exporter is not None else 0
        result = safely(inner.force_flush, timeout_millis)
        failures_after = exporter.failures if exporter is not None else 0
        return result is True and failures_after == failures_before


class _State:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.settings: _config.Settings | None = None
        self.provider: TracerProvider | None = None
        self.owns_provider = False
        self.processor: ObservatoryProcessor | None = None
        self.atexit_registered = False
        self.capture_content = True
        self.tracer_cache: tuple[object, trace.Tracer] | None = None


STATE = _State()


def capture_content() -> bool:
    """Whether prompts, completions and recorded inputs/outputs may go on spans."""
    return STATE.capture_content


def get_tracer() -> trace.Tracer:
    """The SDK's tracer: from the provider ``init()`` set up, else the global one."""
    provider = STATE.provider
    cached = STATE.tracer_cache
    if cached is not None and cached[0] is provider:
        return cached[1]
    if provider is not None:
        tracer = provider.get_tracer(TRACER_NAME, __version__)
    else:
        tracer = trace.get_tracer(TRACER_NAME, __version__)  # follows the global provider
    STATE.tracer_cache = (provider, tracer)
    return tracer


def _provider_for(settings: _config.Settings, tracer_provider: TracerProvider | None) -> None:
    """Pick the provider the processor goes on, once per process (or per explicit provider)."""
    if tracer_provider is not None:
        if STATE.provider is not tracer_provider:
            if STATE.processor is not None:  # stop exporting from the previous provider
                STATE.processor.configure(None, None)
            STATE.provider, STATE.owns_provider, STATE.processor = tracer_provider, False, None
        return
    if STATE.provider is not None:
        if (
            STATE.owns_provider
            and settings.service_name != _config.DEFAULT_SERVICE_NAME
            and STATE.provider.resource.attributes.get(attr.SERVICE_NAME) != settings.service_name
        ):
            log.warning(
                "observatory_sdk: service_name is fixed by the first init() (%s); %r is ignored",
                STATE.provider.resource.attributes.get(attr.SERVICE_NAME),
                settings.service_name,
            )
        return
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        # The application (or another instrumentation) configured OpenTelemetry already: add our
        # exporter to its provider rather than fight over the global.
        STATE.provider, STATE.owns_provider = current, False
        return
    resource_attributes: dict[str, Any] = {
        attr.SERVICE_NAME: settings.service_name,
        "telemetry.distro.name": "observatory-sdk",
        "telemetry.distro.version": __version__,
    }
    if settings.environment:
        resource_attributes[attr.ENVIRONMENT] = settings.environment
    provider = TracerProvider(resource=Resource.create(resource_attributes))
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        log.warning(
            "observatory_sdk: a global tracer provider of another kind is set; only the SDK's "
            "own spans (decorator and client instrumentation) will reach the server"
        )
    STATE.provider, STATE.owns_provider = provider, True


def _pipeline(settings: _config.Settings) -> tuple[SpanProcessor, CountingExporter]:
    exporter = CountingExporter(
        OTLPSpanExporter(
            endpoint=settings.traces_url,
            headers=settings.export_headers(),
            timeout=settings.export_timeout_seconds,
            compression=Compression.Gzip,
        )
    )
    processor = BatchSpanProcessor(
        exporter, export_timeout_millis=settings.export_timeout_seconds * 1000
    )
    return processor, exporter


def init(
    endpoint: str | None = None,
    api_key: str | None = None,
    service_name: str | None = None,
    environment: str | None = None,
    *,
    capture_content: bool | None = None,
    instrument: bool | Iterable[str] | None = None,
    export_timeout_seconds: float | None = None,
    headers: Mapping[str, str] | None = None,
    tracer_provider: TracerProvider | None = None,
    enabled: bool | None = None,
) -> _config.Settings | None:
    """Send this process's traces to LLM Observatory. Safe to call more than once.

    Arguments left out come from the environment (``OBSERVATORY_ENDPOINT``,
    ``OBSERVATORY_API_KEY``, ``OBSERVATORY_SERVICE_NAME``, ``OBSERVATORY_ENVIRONMENT``,
    ``OBSERVATORY_CAPTURE_CONTENT``, ``OBSERVATORY_INSTRUMENT``, ``OBSERVATORY_EXPORT_TIMEOUT``,
    ``OBSERVATORY_SDK_DISABLED``), then the defaults. Returns the resolved settings, or None when
    the SDK is disabled. Invalid values raise :class:`ConfigurationError` here, never later.
    """
    settings = _config.resolve(
        endpoint=endpoint,
        api_key=api_key,
        service_name=service_name,
        environment=environment,
        capture_content=capture_content,
        instrument=instrument,
        export_timeout_seconds=export_timeout_seconds,
        headers=headers,
        enabled=enabled,
    )
    from observatory_sdk import instrumentation

    with STATE.lock:
        if not settings.enabled:
            _shutdown_locked(timeout_seconds=5)
            return None
        if not settings.api_key:
            log.warning(
                "observatory_sdk: no API key (set OBSERVATORY_API_KEY); the server refuses spans"
            )
        STATE.capture_content = settings.capture_content
        _provider_for(settings, tracer_provider)
        provider = STATE.provider
        assert provider is not None
        if STATE.processor is None:
            STATE.processor = ObservatoryProcessor()
            provider.add_span_processor(STATE.processor)
        if settings != STATE.settings or not STATE.processor.active:
            processor, exporter = _pipeline(settings)
            STATE.processor.configure(processor, settings.environment, exporter)
        STATE.settings = settings
        if not STATE.atexit_registered:
            atexit.register(_at_exit)
            STATE.atexit_registered = True
        instrumentation.uninstrument(
            [n for n in instrumentation.NAMES if n not in settings.instrument]
        )
        instrumentation.instrument(settings.instrument)
    return settings


def flush(timeout_seconds: float = 30.0) -> bool:
    """Export every finished span now (blocking, at most about the export timeout per batch).

    True when the server accepted everything exported during the flush; False when an export
    failed (server down or refusing) or the pipeline is shut down. Never raises.
    """
    processor = STATE.processor
    if processor is None:
        return True
    return processor.force_flush(int(timeout_seconds * 1000))


def shutdown(timeout_seconds: float = 30.0) -> None:
    """Flush, stop exporting and remove the client instrumentation. ``init()`` may follow."""
    with STATE.lock:
        _shutdown_locked(timeout_seconds)


def _shutdown_locked(timeout_seconds: float) -> None:
    from observatory_sdk import instrumentation

    safely(instrumentation.uninstrument)
    processor = STATE.processor
    if processor is not None:
        safely(processor.force_flush, int(timeout_seconds * 1000))
        safely(processor.configure, None, None)
    STATE.settings = None


def _at_exit() -> None:
    safely(shutdown, 5.0)


def is_initialized() -> bool:
    return STATE.settings is not None
