"""From a request body to database rows: decode, normalise, price. Pure CPU work, no I/O."""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from observatory import metrics
from observatory.ingest import otlp
from observatory.ingest.limits import Limits, apply_limits, check_time
from observatory.ingest.normalize import normalize
from observatory.ingest.pricing import compute_cost
from observatory.ingest.redact import Redactor
from observatory.ingest.sampling import SamplingPolicy, decide
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


@dataclass(frozen=True)
class Policy:
    """What ingest applies to a project's spans besides decoding and normalising."""

    limits: Limits = field(default_factory=Limits)
    max_spans: int = 100_000
    prices: Sequence[ModelPrice] = ()
    redactor: Redactor | None = None
    sampling: SamplingPolicy | None = None


class TooManySpans(ValueError):
    """More spans in one request than ``max_spans_per_request`` allows (answered 413)."""


def prepare(body: bytes, kind: str, project_id: int, policy: Policy | None = None) -> Prepared:
    """Decode, bound, normalise, price, redact and sample one export request.

    Raises ``OtlpDecodeError`` for bodies that cannot be decoded and ``TooManySpans``.
    """
    policy = policy or Policy()
    batch = otlp.decode_protobuf(body) if kind == PROTOBUF else otlp.decode_json(body)
    if len(batch.spans) > policy.max_spans:
        raise TooManySpans(
            f"{len(batch.spans)} spans in one request; the limit is {policy.max_spans}"
        )
    out = Prepared(rejected=batch.rejected, message=batch.error_message)
    now_ns = time.time_ns()
    accepted: list[Span] = []
    for span in batch.spans:
        problem = check_time(span, now_ns)
        if problem is not None:
            out.rejected += 1
            out.message = "; ".join(
                m for m in (out.message, f"span {span.span_id}: {problem}") if m
            )
            continue
        apply_limits(span, policy.limits)
        normalize(span)
        accepted.append(span)
    inherit_trace_context(accepted)
    unknown_price = 0
    for span in accepted:
        if span.is_llm:
            span.cost = compute_cost(
                span.provider, span.model, span.usage, span.start_time_unix_nano, policy.prices
            )
            if span.cost is None and (span.usage.input_tokens or span.usage.output_tokens):
                unknown_price += 1
        if policy.redactor is not None and policy.redactor.active:
            policy.redactor.apply(span)
    keep = (
        decide(accepted, policy.sampling) if policy.sampling is not None else [True] * len(accepted)
    )
    for span, kept in zip(accepted, keep, strict=True):
        out.spans.append(span)
        out.rows.append(span_to_row(project_id, span, kept))
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
        duration = metrics.llm_request_duration_seconds.labels(provider, model)
        duration.observe(span.duration_ms / 1000)
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
