"""``with session(id), user(id), tags(...):`` — values stamped on every span started inside.

The values live in the OpenTelemetry context, so they follow the code the way spans do: through
``await``, into tasks created inside the block, and across threads wherever the OpenTelemetry
context is carried. The SDK's span processor copies them onto each span when it starts, including
spans made by other instrumentations (OpenLLMetry, OpenInference, OpenLIT, the anthropic client's
own spans) as long as they use the tracer provider the SDK configured.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Union

from opentelemetry import context as otel_context

from observatory_sdk import _attributes as attr
from observatory_sdk._serialize import to_json

AttributeValue = Union[str, bool, int, float]

_SESSION_KEY = otel_context.create_key("observatory_sdk.session_id")
_USER_KEY = otel_context.create_key("observatory_sdk.user_id")
_TAGS_KEY = otel_context.create_key("observatory_sdk.tags")
_ATTRIBUTES_KEY = otel_context.create_key("observatory_sdk.attributes")


@contextmanager
def _scoped(key: str, value: Any) -> Iterator[None]:
    token = otel_context.attach(otel_context.set_value(key, value))
    try:
        yield
    finally:
        otel_context.detach(token)


def session(session_id: str) -> AbstractContextManager[None]:
    """Every span started inside belongs to this session (``gen_ai.conversation.id``).

    Usable as ``with session("chat-42"):`` or as a decorator of a synchronous function.
    """
    return _scoped(_SESSION_KEY, str(session_id))


def user(user_id: str) -> AbstractContextManager[None]:
    """Every span started inside belongs to this end user (``user.id``)."""
    return _scoped(_USER_KEY, str(user_id))


def tags(*labels: str, **attributes: Any) -> AbstractContextManager[None]:
    """Stamp labels (``observatory.tags``) and custom attributes on every span started inside.

    ``tags("beta", "checkout", tenant="acme", experiment=3)`` adds the labels to those of enclosing
    ``tags`` blocks and sets ``tenant`` and ``experiment`` as span attributes (strings, numbers and
    booleans as they are, anything else as JSON).
    """
    return _tags_scope(
        tuple(str(label) for label in labels),
        {str(k): _attribute_value(v) for k, v in attributes.items()},
    )


@contextmanager
def _tags_scope(labels: tuple[str, ...], attributes: dict[str, AttributeValue]) -> Iterator[None]:
    ctx = otel_context.get_current()
    outer_labels = otel_context.get_value(_TAGS_KEY, ctx)
    outer_attrs = otel_context.get_value(_ATTRIBUTES_KEY, ctx)
    merged_labels = tuple(
        dict.fromkeys([*(outer_labels if isinstance(outer_labels, tuple) else ()), *labels])
    )
    merged_attrs = {**(outer_attrs if isinstance(outer_attrs, dict) else {}), **attributes}
    ctx = otel_context.set_value(_TAGS_KEY, merged_labels, ctx)
    ctx = otel_context.set_value(_ATTRIBUTES_KEY, merged_attrs, ctx)
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def _attribute_value(value: Any) -> AttributeValue:
    if isinstance(value, (str, bool, int, float)):
        return value
    return to_json(value, 4096)


def current_session_id(ctx: otel_context.Context | None = None) -> str | None:
    value = otel_context.get_value(_SESSION_KEY, ctx)
    return value if isinstance(value, str) else None


def current_user_id(ctx: otel_context.Context | None = None) -> str | None:
    value = otel_context.get_value(_USER_KEY, ctx)
    return value if isinstance(value, str) else None


def stamped_attributes(ctx: otel_context.Context | None = None) -> dict[str, Any]:
    """The attributes the context asks to put on a span started in it."""
    out: dict[str, Any] = {}
    session_id = current_session_id(ctx)
    if session_id is not None:
        out[attr.CONVERSATION_ID] = session_id
        out[attr.SESSION_ID] = session_id
    user_id = current_user_id(ctx)
    if user_id is not None:
        out[attr.USER_ID] = user_id
    labels = otel_context.get_value(_TAGS_KEY, ctx)
    if isinstance(labels, tuple) and labels:
        out[attr.TAGS] = list(labels)
    extra = otel_context.get_value(_ATTRIBUTES_KEY, ctx)
    if isinstance(extra, dict):
        out.update(extra)
    return out
