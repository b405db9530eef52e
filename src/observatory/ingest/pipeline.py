"""From a request body to database rows: decode, normalise, price. Pure CPU work, no I/O."""

from __future__ import annotations

import time
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from observatory import metrics
from observatory.ingest import otlp
from observatory.ingest.limits import Limits, apply_limits, check_time
from observatory.ingest.normalize import normalize
from observatory.ingest.pricing import compute_cost
from observatory.ingest.redact import Redactor
from observatory.ingest.sampling import SamplingPolicy, decide
from observatory.model import ModelPrice, Span
from observatory.store.writes import Aggregates, aggregate, encode_rows, span_to_row

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class BodyTooLarge(ValueError):
    """The (decompressed) body is larger than the configured limit."""


# What the usage metrics need of an LLM span: provider, model, error, duration in seconds,
# input, output, cache-read, cache-write and reasoning tokens, and the cost in USD (or None).
LlmStat = tuple[str | None, str | None, bool, float, int, int, int, int, int, float | None]


@dataclass(slots=True)
class Prepared:
    """One request, ready for the writer. Small enough to come back from a worker process."""

    # Row tuples (``span_to_row``), or ``Encoded`` COPY lines when prepared for PostgreSQL.
    rows: Sequence[Any] = field(default_factory=list)
    # The rollup and trace increments of ``rows``; None when not computed.
    aggregates: Aggregates | None = None
    # Per row: the LLM usage to count once the row is committed (None for other spans).
    llm: list[LlmStat | None] = field(default_factory=list)
    rejected: int = 0
    message: str = ""
    unknown_price: int = 0  # LLM spans with usage but no known price


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


def prepare(
    body: bytes,
    kind: str,
    project_id: int,
    policy: Policy | None = None,
    *,
    encode: bool = False,
    aggregates: bool = False,
) -> Prepared:
    """Decode, bound, normalise, price, redact and sample one export request.

    ``encode`` returns PostgreSQL COPY lines instead of row tuples; ``aggregates`` also computes
    the rollup and trace increments (both are what the ingest worker processes do, so that the
    writer thread has little left to do). Pure: no I/O and no metrics, so it can run anywhere.
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
    redactor = policy.redactor if policy.redactor is not None and policy.redactor.active else None
    screen = None
    if redactor is not None and redactor.screens_serialized:
        # Redacted while the rows are built, unless no string in this request can match.
        if not redactor.clean_body(body, has_bytes=batch.has_bytes):
            screen = redactor
        redactor = None
    for span in accepted:
        if span.is_llm:
            span.cost = compute_cost(
                span.provider, span.model, span.usage, span.start_time_unix_nano, policy.prices
            )
            if span.cost is None and (span.usage.input_tokens or span.usage.output_tokens):
                out.unknown_price += 1
        if redactor is not None:
            redactor.apply(span)
    keep = (
        decide(accepted, policy.sampling) if policy.sampling is not None else [True] * len(accepted)
    )
    rows = [
        span_to_row(project_id, span, kept, screen)
        for span, kept in zip(accepted, keep, strict=True)
    ]
    out.llm = [_llm_stat(span) if span.is_llm else None for span in accepted]
    if aggregates:
        out.aggregates = aggregate(rows)
    out.rows = encode_rows(rows) if encode else rows
    return out


def _llm_stat(span: Span) -> LlmStat:
    usage = span.usage
    return (
        span.provider,
        span.model,
        span.is_error,
        span.duration_ms / 1000,
        usage.input_tokens or 0,
        usage.output_tokens or 0,
        usage.cache_read_tokens or 0,
        usage.cache_write_tokens or 0,
        usage.reasoning_tokens or 0,
        float(span.cost.total_usd) if span.cost is not None else None,
    )


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


_TOKEN_KINDS = ("input", "output", "cache_read", "cache_write", "reasoning")


def count_llm_metrics(stats: Sequence[LlmStat | None], skip: Collection[int] = ()) -> None:
    """Update the LLM usage counters for committed rows (``skip``: indexes that were not)."""
    totals: dict[tuple[str, str], list[Any]] = {}
    for index, stat in enumerate(stats):
        if stat is None or (skip and index in skip):
            continue
        labels = metrics.model_labels(stat[0], stat[1])
        acc = totals.get(labels)
        if acc is None:
            acc = totals[labels] = [0, 0, [], 0, 0, 0, 0, 0, 0.0, False]
        acc[0] += 1
        acc[1] += stat[2]
        acc[2].append(stat[3])
        for i in range(5):
            acc[3 + i] += stat[4 + i]
        if stat[9] is not None:
            acc[8] += stat[9]
            acc[9] = True
    for (provider, model), acc in totals.items():
        metrics.llm_requests_total.labels(provider, model).inc(acc[0])
        if acc[1]:
            metrics.llm_errors_total.labels(provider, model).inc(acc[1])
        duration = metrics.llm_request_duration_seconds.labels(provider, model)
        for seconds in acc[2]:
            duration.observe(seconds)
        for i, kind in enumerate(_TOKEN_KINDS):
            if acc[3 + i]:
                metrics.llm_tokens_total.labels(provider, model, kind).inc(acc[3 + i])
        if acc[9]:
            metrics.llm_cost_usd_total.labels(provider, model).inc(acc[8])
