"""From a request body to database rows: decode, normalise, price. Pure CPU work, no I/O."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from observatory import metrics
from observatory.ingest import otlp
from observatory.ingest.normalize import normalize
from observatory.ingest.pricing import compute_cost
from observatory.model import ModelPrice, Span
from observatory.store.writes import Row, span_to_row

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class BodyTooLarge(ValueError):
    """The (decompressed) body is larger than the configured limit."""


@dataclass
class Prepared:
    spans: list[Span] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    rejected: int = 0
    message: str = ""


def media_type(content_type: str | None) -> str | None:
    """``application/x-protobuf`` or ``application/json``, or None for anything else."""
    if not content_type:
        return None
    base = content_type.split(";", 1)[0].strip().lower()
    if base in (PROTOBUF, "application/protobuf"):
        return PROTOBUF
    if base == JSON:
        return JSON
    return None


def gunzip(body: bytes, limit: int) -> bytes:
    """Decompress a gzip body, refusing to produce more than ``limit`` bytes (gzip bombs)."""
    decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decomp.decompress(body, limit + 1)
    except zlib.error as exc:
        raise otlp.OtlpDecodeError(f"body is not valid gzip: {exc}") from exc
    if len(out) > limit or decomp.unconsumed_tail:
        raise BodyTooLarge(f"decompressed body exceeds {limit} bytes")
    if not decomp.eof:
        raise otlp.OtlpDecodeError("gzip body is truncated")
    return out


def prepare(
    body: bytes,
    kind: str,
    project_id: int,
    prices: Sequence[ModelPrice] = (),
    transform: Callable[[Span], Span | None] | None = None,
) -> Prepared:
    """Decode and normalise one export request. Raises ``OtlpDecodeError`` for bad bodies."""
    batch = otlp.decode_protobuf(body) if kind == PROTOBUF else otlp.decode_json(body)
    out = Prepared(rejected=batch.rejected, message=batch.error_message)
    unknown_price = 0
    for span in batch.spans:
        normalize(span)
    inherit_trace_context(batch.spans)
    for span in batch.spans:
        if span.is_llm:
            span.cost = compute_cost(
                span.provider, span.model, span.usage, span.start_time_unix_nano, prices
            )
            if span.cost is None and (span.usage.input_tokens or span.usage.output_tokens):
                unknown_price += 1
        if transform is not None:
            transformed = transform(span)
            if transformed is None:
                continue
            span = transformed
        out.spans.append(span)
        out.rows.append(span_to_row(project_id, span))
    if unknown_price:
        metrics.unknown_model_price_total.inc(unknown_price)
    return out


def inherit_trace_context(spans: Sequence[Span]) -> None:
    """Session, user and environment set on one span of a trace apply to its other spans in the
    same request (instrumentations usually set them on the root span only)."""
    context: dict[str, list[str | None]] = {}
    for span in spans:
        if span.session_id or span.user_id or span.environment:
            known = context.setdefault(span.trace_id, [None, None, None])
            known[0] = known[0] or span.session_id
            known[1] = known[1] or span.user_id
            known[2] = known[2] or span.environment
    if not context:
        return
    for span in spans:
        inherited = context.get(span.trace_id)
        if inherited is not None:
            span.session_id = span.session_id or inherited[0]
            span.user_id = span.user_id or inherited[1]
            span.environment = span.environment or inherited[2]


def count_llm_metrics(spans: Sequence[Span]) -> None:
    """Update the LLM usage counters for spans that were committed."""
    for span in spans:
        if not span.is_llm:
            continue
        provider, model = metrics.model_labels(span.provider, span.model)
        metrics.llm_requests_total.labels(provider, model).inc()
        if span.is_error:
            metrics.llm_errors_total.labels(provider, model).inc()
        usage = span.usage
        for kind, value in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_tokens),
            ("cache_write", usage.cache_write_tokens),
            ("reasoning", usage.reasoning_tokens),
        ):
            if value:
                metrics.llm_tokens_total.labels(provider, model, kind).inc(value)
        if span.cost is not None:
            metrics.llm_cost_usd_total.labels(provider, model).inc(float(span.cost.total_usd))
