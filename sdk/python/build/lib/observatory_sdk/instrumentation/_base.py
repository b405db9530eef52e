"""Machinery shared by the client instrumentations: the LLM call span, method wrappers, streams.

The wrappers keep one promise: the wrapped method's result and exceptions are exactly what they
would be without the SDK. The method is always called (once) with the caller's arguments; the
result object is returned as it is (a stream keeps its type: only its internal iterator is
wrapped); every SDK step runs under :func:`safely`, so a bug or a surprise in a response shape
costs a span attribute, never the application's call.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, Callable, Optional

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from observatory_sdk import _attributes as attr
from observatory_sdk._guard import FAILED, log, safely
from observatory_sdk._serialize import to_json
from observatory_sdk._setup import IN_LLM_CALL_KEY, capture_content, get_tracer

ORIGINAL_ATTR = "__observatory_original__"


def get(obj: Any, *path: str) -> Any:
    """``obj.a.b`` or ``obj["a"]["b"]``, whichever applies at each level; None when missing."""
    for name in path:
        if obj is None:
            return None
        obj = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
    return obj


def given(value: Any) -> bool:
    """False for None and the client libraries' "not given" sentinels (``omit``, ``NOT_GIVEN``)."""
    return value is not None and type(value).__name__ not in ("NotGiven", "Omit", "_Omit")


def first_int(*values: Any) -> int | None:
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def error_type(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    # openai._exceptions.BadRequestError → openai.BadRequestError: the name users import.
    top = module.split(".", 1)[0]
    if top in ("openai", "anthropic"):
        return f"{top}.{cls.__qualname__}"
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


class LlmCall:
    """One model call: a CLIENT span named ``"{operation} {model}"`` with GenAI attributes."""

    def __init__(
        self,
        *,
        provider: str,
        operation: str,
        model: str | None,
        attributes: Mapping[str, Any],
    ) -> None:
        start_attributes = {
            attr.PROVIDER_NAME: provider,
            attr.OPERATION_NAME: operation,
            attr.REQUEST_MODEL: model,
            **attributes,
        }
        self.span = get_tracer().start_span(
            f"{operation} {model}" if model else operation,
            kind=SpanKind.CLIENT,
            attributes={k: v for k, v in start_attributes.items() if v is not None},
        )
        self.context = otel_context.set_value(
            IN_LLM_CALL_KEY, True, trace.set_span_in_context(self.span)
        )
        self.capture_content = capture_content()
        self.started = time.monotonic()
        self.first_chunk_at: float | None = None
        self.first_output_at: float | None = None
        self.state: dict[str, Any] = {}
        self.ended = False

    def attach(self) -> object:
        return otel_context.attach(self.context)

    def detach(self, token: Any) -> None:
        otel_context.detach(token)

    def set(self, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            if value is not None and value != []:
                safely(self.span.set_attribute, key, value)

    def set_content(self, key: str, value: Any) -> None:
        """Prompts, completions, tool definitions: only when content capture is on."""
        if self.capture_content and value:
            safely(self.span.set_attribute, key, to_json(value))

    def content(self, key: str, build: Callable[..., Any], *args: Any) -> None:
        """Build content with ``build(*args)`` (only when captured); a failure skips just this."""
        if not self.capture_content:
            return
        value = safely(build, *args)
        if value is not FAILED:
            self.set_content(key, value)

    def chunk(self, carries_output: bool) -> None:
        """A streamed chunk arrived; the first one carrying output sets the time to first chunk."""
        now = time.monotonic()
        if self.first_chunk_at is None:
            self.first_chunk_at = now
        if carries_output and self.first_output_at is None:
            self.first_output_at = now

    def fail(self, exc: BaseException) -> None:
        if not isinstance(exc, Exception):
            return  # cancellation, GeneratorExit, KeyboardInterrupt: not the call's error
        self.span.record_exception(exc)
        self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:1024]))
        self.set({attr.ERROR_TYPE: error_type(exc)})
        status_code = getattr(exc, "status_code", None)
        if isinstance(status_code, int):
            self.set({"http.response.status_code": status_code})

    def fail_message(self, kind: str, message: str) -> None:
        """An error the provider reported inside a stream rather than as an exception."""
        self.span.set_status(Status(StatusCode.ERROR, message[:1024]))
        self.set({attr.ERROR_TYPE: kind})

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        first = self.first_output_at or self.first_chunk_at
        if first is not None:
            self.set({attr.RESPONSE_TIME_TO_FIRST_CHUNK: max(first - self.started, 0.0)})
        self.span.end()


StartFn = Callable[[Sequence[Any], Mapping[str, Any]], Optional[LlmCall]]
FinishFn = Callable[[LlmCall, Any], None]


def _in_llm_call() -> bool:
    return bool(otel_context.get_value(IN_LLM_CALL_KEY))


def begin_call(start: StartFn, args: Sequence[Any], kwargs: Mapping[str, Any]) -> LlmCall | None:
    if _in_llm_call():  # a helper (parse, stream) calling another instrumented method
        return None
    call = safely(start, args, kwargs)
    return None if call is FAILED else call


def wrap_sync(original: Callable[..., Any], start: StartFn, finish: FinishFn) -> Callable[..., Any]:
    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = begin_call(start, args, kwargs)
        if call is None:
            return original(*args, **kwargs)
        token = safely(call.attach)
        try:
            result = original(*args, **kwargs)
        except BaseException as exc:
            safely(call.fail, exc)
            safely(call.end)
            raise
        finally:
            if token is not FAILED:
                safely(call.detach, token)
        if safely(finish, call, result) is FAILED:
            safely(call.end)
        return result

    setattr(wrapper, ORIGINAL_ATTR, original)
    return wrapper


def wrap_async(
    original: Callable[..., Any], start: StartFn, finish: FinishFn
) -> Callable[..., Any]:
    @functools.wraps(original)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = begin_call(start, args, kwargs)
        if call is None:
            return await original(*args, **kwargs)
        token = safely(call.attach)
        try:
            result = await original(*args, **kwargs)
        except BaseException as exc:
            safely(call.fail, exc)
            safely(call.end)
            raise
        finally:
            if token is not FAILED:
                safely(call.detach, token)
        if safely(finish, call, result) is FAILED:
            safely(call.end)
        return result

    setattr(wrapper, ORIGINAL_ATTR, original)
    return wrapper


ItemFn = Callable[[LlmCall, Any], None]
EndFn = Callable[[LlmCall], None]


def _traced_sync(iterator: Iterator[Any], call: LlmCall, on_item: ItemFn, on_end: EndFn) -> Any:
    try:
        for item in iterator:
            safely(on_item, call, item)
            yield item
    except GeneratorExit:
        raise
    except BaseException as exc:
        safely(call.fail, exc)
        raise
    finally:
        safely(on_end, call)
        safely(call.end)


async def _traced_async(
    iterator: AsyncIterator[Any], call: LlmCall, on_item: ItemFn, on_end: EndFn
) -> Any:
    try:
        async for item in iterator:
            safely(on_item, call, item)
            yield item
    except GeneratorExit:
        raise
    except BaseException as exc:
        safely(call.fail, exc)
        raise
    finally:
        safely(on_end, call)
        safely(call.end)


def trace_stream(stream: Any, call: LlmCall, on_item: ItemFn, on_end: EndFn) -> None:
    """Observe a client library's ``Stream``/``AsyncStream`` in place, keeping the object itself.

    Both libraries read events through ``stream._iterator``; wrapping that iterator lets the span
    see every event the application reads and end when the stream ends, fails or is dropped.
    Raises (and the caller ends the span at once) when the object has no such iterator.
    """
    original = stream._iterator
    if hasattr(original, "__anext__"):
        stream._iterator = _traced_async(original, call, on_item, on_end)
    elif hasattr(original, "__next__"):
        stream._iterator = _traced_sync(original, call, on_item, on_end)
    else:
        raise TypeError(f"unexpected stream iterator {type(original).__name__}")


# --- patching --------------------------------------------------------------------------------

Patch = tuple[str, str, str, Callable[[Callable[..., Any]], Callable[..., Any]]]


def apply_patches(patches: Sequence[Patch]) -> list[tuple[type, str, Any]]:
    """Replace ``module.Class.method`` with its wrapper; returns what to restore later.

    Missing modules, classes or methods (another version of the library) are skipped.
    """
    applied: list[tuple[type, str, Any]] = []
    for module_name, class_name, method, make_wrapper in patches:
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            log.debug("observatory_sdk: %s.%s not found; not instrumented", module_name, class_name)
            continue
        original = cls.__dict__.get(method)
        if original is None or hasattr(original, ORIGINAL_ATTR):
            continue
        setattr(cls, method, make_wrapper(original))
        applied.append((cls, method, original))
    return applied


def restore_patches(applied: Sequence[tuple[type, str, Any]]) -> None:
    for cls, method, original in reversed(applied):
        setattr(cls, method, original)
