"""What the OTLP logs and metrics decoders (otlp_logs.py, otlp_metrics.py) share: the decoded
batch, the request envelope in both encodings and the JSON text of stored values. Pure, no I/O.

Both requests nest the same way, ``resource_<signal>`` → ``scope_<signal>`` → items, so
:func:`pb_items` and :func:`json_items` walk them and hand each item over with its resource and
scope; the decoders only turn items into rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from observatory.ingest.otlp import (
    OtlpDecodeError,
    Rejections,
    _json_attributes,
    _json_list,
    _pb_attributes,
    decode_json_request,
)

MAX_INT64 = 2**63


@dataclass(slots=True)
class DecodedRecords(Rejections):
    """What one export request held: rows to store, records rejected (and why), and records
    acknowledged but not stored (``ignored``: metrics not named ``gen_ai.*``)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    ignored: int = 0


def to_json(value: Any) -> str:
    """JSON text for a stored value (attributes, bodies, histogram buckets)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=str).decode()


# --- protobuf -----------------------------------------------------------------------------------


def pb_items(
    resources: Any, scopes_field: str, items_field: str
) -> Iterator[tuple[dict[str, Any], str, Any, Any]]:
    """(resource attributes, their JSON, scope message, item) for every item of a request."""
    for resource_entry in resources:
        resource = _pb_attributes(resource_entry.resource.attributes)
        resource_json = to_json(resource)
        for scope_entry in getattr(resource_entry, scopes_field):
            for item in getattr(scope_entry, items_field):
                yield resource, resource_json, scope_entry.scope, item


# --- JSON ---------------------------------------------------------------------------------------


def decode_json(
    body: bytes, resources_field: str, walk: Callable[[Mapping[str, Any], DecodedRecords], None]
) -> DecodedRecords:
    """Load an OTLP/JSON body (an object with ``resources_field``) and ``walk`` it into a batch;
    a body of the wrong shape raises ``OtlpDecodeError``."""
    return decode_json_request(body, resources_field, walk, DecodedRecords())


def json_items(
    doc: Mapping[str, Any],
    resources: tuple[str, str],
    scopes: tuple[str, str],
    items: tuple[str, str],
) -> Iterator[tuple[dict[str, Any], str, Mapping[str, Any], Mapping[str, Any]]]:
    """(resource attributes, their JSON, scope object, item) for every item of a request; each
    field is given as (lowerCamelCase, snake_case) name. Entries that are not objects raise
    ``OtlpDecodeError``; a scope that is not an object counts as empty."""
    for resource_entry in _json_list(doc, *resources):
        if not isinstance(resource_entry, Mapping):
            raise OtlpDecodeError(f"{resources[0]} entries must be objects")
        res = resource_entry.get("resource") or {}
        resource = _json_attributes(res.get("attributes") if isinstance(res, Mapping) else None)
        resource_json = to_json(resource)
        for scope_entry in _json_list(resource_entry, *scopes):
            if not isinstance(scope_entry, Mapping):
                raise OtlpDecodeError(f"{scopes[0]} entries must be objects")
            scope = scope_entry.get("scope") or {}
            if not isinstance(scope, Mapping):
                scope = {}
            for item in _json_list(scope_entry, *items):
                if not isinstance(item, Mapping):
                    raise OtlpDecodeError(f"{items[0]} entries must be objects")
                yield resource, resource_json, scope, item
