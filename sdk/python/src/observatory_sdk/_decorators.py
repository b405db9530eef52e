"""``@observe`` and ``span(...)``: spans around the application's own functions, agents and tools.

A span is current while the function body runs, so LLM calls and other observed functions inside
become its children. Generators get one span from the first ``next()`` to exhaustion, but are
current only while their body runs (not while the consumer holds a yielded value). An exception
marks the span as an error (status, ``error.type``, an ``exception`` event) and propagates
unchanged; cancellation and ``GeneratorExit`` end the span without marking an error.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Callable, TypeVar, overload

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode

from observatory_sdk import _attributes as attr
from observatory_sdk._guard import FAILED, safely
from observatory_sdk._serialize import plain, to_json
from observatory_sdk._setup import capture_content, get_tracer
from observatory_sdk.instrumentation._base import error_type

F = TypeVar("F", bound=Callable[..., Any])

_KIND_OPERATION = {
    "agent": attr.OP_INVOKE_AGENT,
    "tool": attr.OP_EXECUTE_TOOL,
    "workflow": attr.OP_INVOKE_WORKFLOW,
    "retrieval": attr.OP_RETRIEVAL,
}
_MAX_GENERATOR_ITEMS = 100


def _kind_attributes(name: str, kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {attr.SPAN_KIND: kind}
    operation = _KIND_OPERATION.get(kind)
    if operation is not None:
        out[attr.OPERATION_NAME] = operation
    if kind == "agent":
        out[attr.AGENT_NAME] = name
    elif kind == "tool":
        out[attr.TOOL_NAME] = name
    return out


class ObservedSpan:
    """Handle on a span made by ``span(...)``; also what ``@observe`` uses internally."""

    def __init__(self, otel_span: Span) -> None:
        self.otel_span = otel_span

    @property
    def trace_id(self) -> str:
        """The trace id as 32 hex digits (what ``GET /api/v1/traces/{trace_id}`` takes)."""
        return format(self.otel_span.get_span_context().trace_id, "032x")

    @property
    def span_id(self) -> str:
        return format(self.otel_span.get_span_context().span_id, "016x")

    def set_attribute(self, key: str, value: Any) -> None:
        if not isinstance(value, (str, bool, int, float)):
            value = to_json(value, 4096)
        safely(self.otel_span.set_attribute, key, value)

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def set_input(self, value: Any) -> None:
        """Record ``value`` as the span's input (unless content capture is off)."""
        _record(self.otel_span, attr.INPUT_VALUE, attr.INPUT_MIME_TYPE, value)

    def set_output(self, value: Any) -> None:
        """Record ``value`` as the span's output (unless content capture is off)."""
        _record(self.otel_span, attr.OUTPUT_VALUE, attr.OUTPUT_MIME_TYPE, value)

    def record_exception(self, exc: BaseException) -> None:
        safely(_mark_error, self.otel_span, exc)


def _record(otel_span: Span, key: str, mime_key: str, value: Any) -> None:
    if not capture_content():
        return
    text = safely(to_json, value)
    if text is FAILED:
        return
    safely(otel_span.set_attribute, key, text)
    mime = "text/plain" if isinstance(value, str) else "application/json"
    safely(otel_span.set_attribute, mime_key, mime)


def _mark_error(otel_span: Span, exc: BaseException) -> None:
    if not isinstance(exc, Exception):
        return
    otel_span.record_exception(exc)
    otel_span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:1024]))
    otel_span.set_attribute(attr.ERROR_TYPE, error_type(exc))


class _SpanScope:
    """The context manager ``span(...)`` returns; works with ``with`` and ``async with``."""

    def __init__(
        self, name: str, kind: str, attributes: Mapping[str, Any] | None, input: Any
    ) -> None:
        self._name = name
        self._kind = kind
        self._attributes = attributes
        self._input = input
        self._span: ObservedSpan | None = None
        self._token: Any = None

    def _start(self) -> ObservedSpan:
        otel_span = get_tracer().start_span(
            self._name, attributes=_kind_attributes(self._name, self._kind)
        )
        handle = ObservedSpan(otel_span)
        if self._attributes:
            handle.set_attributes(self._attributes)
        if self._input is not _MISSING:
            handle.set_input(self._input)
        return handle

    def __enter__(self) -> ObservedSpan:
        handle = safely(self._start)
        if handle is FAILED:
            handle = ObservedSpan(trace.INVALID_SPAN)
        self._span = handle
        self._token = safely(otel_context.attach, trace.set_span_in_context(handle.otel_span))
        return handle

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None and self._token is not FAILED:
            safely(otel_context.detach, self._token)
        if self._span is not None:
            if exc is not None:
                safely(_mark_error, self._span.otel_span, exc)
            safely(self._span.otel_span.end)

    async def __aenter__(self) -> ObservedSpan:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


_MISSING: Any = object()


def span(
    name: str,
    *,
    kind: str = "span",
    attributes: Mapping[str, Any] | None = None,
    input: Any = _MISSING,
) -> _SpanScope:
    """A span around a block: ``with span("retrieve", kind="retrieval") as s: s.set_output(x)``.

    ``kind`` is ``"span"`` (default), ``"agent"``, ``"tool"``, ``"workflow"``, ``"retrieval"`` or
    any label of yours; agent, tool, workflow and retrieval set the matching
    ``gen_ai.operation.name``. ``input`` (any value) is recorded as the span's input.
    """
    return _SpanScope(name, kind, attributes, input)


# --- @observe --------------------------------------------------------------------------------


class _Options:
    def __init__(
        self,
        func: Callable[..., Any],
        name: str | None,
        kind: str,
        capture_input: bool,
        capture_output: bool,
        attributes: Mapping[str, Any] | None,
    ) -> None:
        self.name = name or getattr(func, "__qualname__", None) or repr(func)
        self.kind = kind
        self.capture_input = capture_input
        self.capture_output = capture_output
        self.attributes = dict(attributes or {})
        self.signature = safely(inspect.signature, func) if capture_input else None

    def start(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ObservedSpan:
        otel_span = get_tracer().start_span(
            self.name, attributes=_kind_attributes(self.name, self.kind)
        )
        handle = ObservedSpan(otel_span)
        if self.attributes:
            handle.set_attributes(self.attributes)
        if self.capture_input and capture_content():
            handle.set_input(self._arguments(args, kwargs))
        return handle

    def _arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        signature = self.signature
        if signature is None or signature is FAILED:
            return {"args": plain(list(args)), "kwargs": plain(kwargs)}
        bound = signature.bind_partial(*args, **kwargs)
        arguments = dict(bound.arguments)
        params = list(signature.parameters)
        if params and params[0] in ("self", "cls") and params[0] in arguments:
            arguments.pop(params[0])
        return arguments


def _begin(options: _Options, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """(handle, context) for a new span, or FAILED."""
    handle = safely(options.start, args, kwargs)
    if handle is FAILED:
        return FAILED
    return handle, trace.set_span_in_context(handle.otel_span)


def _finish(handle: ObservedSpan, options: _Options, output: Any = _MISSING) -> None:
    if options.capture_output and output is not _MISSING:
        handle.set_output(output)
    safely(handle.otel_span.end)


def _fail(handle: ObservedSpan, exc: BaseException) -> None:
    safely(_mark_error, handle.otel_span, exc)
    safely(handle.otel_span.end)


def _attach(ctx: Any) -> Any:
    return safely(otel_context.attach, ctx)


def _detach(token: Any) -> None:
    if token is not FAILED:
        safely(otel_context.detach, token)


class _Current:
    """``with _Current(ctx):`` makes a span's context current for one stretch of a call."""

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx
        self._token: Any = FAILED

    def __enter__(self) -> None:
        self._token = _attach(self._ctx)

    def __exit__(self, *exc_info: object) -> None:
        _detach(self._token)


class _Call:
    """A span around one call of a function or coroutine: current inside the ``with`` block,
    marked as an error if the block raises, else ended with ``output`` recorded. If the span
    cannot be started, the block runs without one."""

    def __init__(self, options: _Options, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._options = options
        self._started = _begin(options, args, kwargs)
        self._token: Any = FAILED
        self.output: Any = _MISSING

    def __enter__(self) -> _Call:
        if self._started is not FAILED:
            self._token = _attach(self._started[1])
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._started is FAILED:
            return
        handle = self._started[0]
        _detach(self._token)
        if exc is not None:
            _fail(handle, exc)
        else:
            _finish(handle, self._options, self.output)


def _wrap_function(func: Callable[..., Any], options: _Options) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _Call(options, args, kwargs) as call:
            call.output = func(*args, **kwargs)
        return call.output

    return wrapper


def _wrap_coroutine(func: Callable[..., Any], options: _Options) -> Callable[..., Any]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _Call(options, args, kwargs) as call:
            call.output = await func(*args, **kwargs)
        return call.output

    return wrapper


# The two generator wrappers drive the same loop, one through send/throw/close, the other
# through asend/athrow/aclose (awaited); the span is current only while the body runs.


def _wrap_generator(func: Callable[..., Any], options: _Options) -> Callable[..., Any]:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = _begin(options, args, kwargs)
        if started is FAILED:
            return (yield from func(*args, **kwargs))
        handle, ctx = started
        generator = func(*args, **kwargs)
        items: list[Any] = []
        to_send: Any = None
        to_throw: BaseException | None = None
        try:
            while True:
                try:
                    with _Current(ctx):
                        if to_throw is not None:
                            exc, to_throw = to_throw, None
                            item = generator.throw(exc)
                        else:
                            item = generator.send(to_send)
                except StopIteration as stop:
                    _finish(handle, options, items)
                    return stop.value
                if len(items) < _MAX_GENERATOR_ITEMS:
                    items.append(item)
                try:
                    to_send = yield item
                except GeneratorExit:
                    generator.close()
                    _finish(handle, options, items)
                    raise
                except BaseException as exc:
                    to_throw = exc
        except GeneratorExit:
            raise
        except BaseException as exc:
            _fail(handle, exc)
            raise

    return wrapper


def _wrap_async_generator(func: Callable[..., Any], options: _Options) -> Callable[..., Any]:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        started = _begin(options, args, kwargs)
        if started is FAILED:
            async for item in func(*args, **kwargs):
                yield item
            return
        handle, ctx = started
        generator = func(*args, **kwargs)
        items: list[Any] = []
        to_send: Any = None
        to_throw: BaseException | None = None
        try:
            while True:
                try:
                    with _Current(ctx):
                        if to_throw is not None:
                            exc, to_throw = to_throw, None
                            item = await generator.athrow(exc)
                        else:
                            item = await generator.asend(to_send)
                except StopAsyncIteration:
                    _finish(handle, options, items)
                    return
                if len(items) < _MAX_GENERATOR_ITEMS:
                    items.append(item)
                try:
                    to_send = yield item
                except GeneratorExit:
                    await generator.aclose()
                    _finish(handle, options, items)
                    raise
                except BaseException as exc:
                    to_throw = exc
        except GeneratorExit:
            raise
        except BaseException as exc:
            _fail(handle, exc)
            raise

    return wrapper


@overload
def observe(func: F) -> F: ...


@overload
def observe(
    func: None = None,
    *,
    name: str | None = None,
    kind: str = "span",
    capture_input: bool = False,
    capture_output: bool = False,
    attributes: Mapping[str, Any] | None = None,
) -> Callable[[F], F]: ...


def observe(
    func: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    kind: str = "span",
    capture_input: bool = False,
    capture_output: bool = False,
    attributes: Mapping[str, Any] | None = None,
) -> Callable[..., Any] | Callable[[F], F]:
    """Trace a function: ``@observe`` or ``@observe(name=..., kind="agent", capture_input=True)``.

    Works on plain functions, ``async def`` coroutines, generators and async generators, and on
    methods. ``capture_input`` records the call's arguments (without ``self``/``cls``) as the
    span's input, ``capture_output`` the return value (for generators: the first 100 items);
    both are off unless asked for, and ``init(capture_content=False)`` turns them off
    everywhere. ``kind`` is as for :func:`span`.
    """

    def decorate(target: Callable[..., Any]) -> Callable[..., Any]:
        options = _Options(target, name, kind, capture_input, capture_output, attributes)
        if inspect.isasyncgenfunction(target):
            return _wrap_async_generator(target, options)
        if inspect.isgeneratorfunction(target):
            return _wrap_generator(target, options)
        if inspect.iscoroutinefunction(target):
            return _wrap_coroutine(target, options)
        return _wrap_function(target, options)

    if func is not None:
        return decorate(func)
    return decorate


def current_span() -> ObservedSpan:
    """The span that is current here (from ``@observe``, ``span(...)`` or any instrumentation)."""
    return ObservedSpan(trace.get_current_span())
