"""The benchmark workload: seeded OTLP protobuf export requests shaped like an LLM agent.

Every trace is an agent root span (``invoke_agent``) with LLM chat children carrying the GenAI
semantic-convention attributes a real instrumentation emits: provider, request/response model,
token usage, finish reason, a ~1 KB prompt (``gen_ai.input.messages``) and a short completion
(``gen_ai.output.messages``). One request holds ``spans_per_request`` spans (1,000 by default).

Building that many protobuf spans in Python costs more than the server spends decoding them, so
the load driver would compete with the server for the two cores. Instead a few *templates* are
built once, serialised, and the byte offsets of every trace id, span id, parent span id and
timestamp are recorded. :meth:`Workload.body` then copies a template and patches those fixed-width
fields in place: fresh, unique ids and current timestamps for ~1 ms of CPU per request.

Ids: the first 8 bytes of every trace id become ``run nonce (4) + request sequence (4)``; the first
4 bytes of every span id (and parent span id) become ``run nonce + sequence`` (mod 2**32). The
template supplies the other bytes, unique within a template, so every request's ids are unique in
the run, and span ids are unique across requests too (some peers index span_id alone).
"""

from __future__ import annotations

import json
import random
import struct
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from observatory.demo import add_attributes

# Templates are stamped at this time; requests shift every timestamp by (new base - TEMPLATE_T0).
TEMPLATE_T0 = 1_700_000_000_000_000_000
# The traces of one request started within this window before its base time.
REQUEST_WINDOW_NS = 10 * 1_000_000_000

# (provider, request model, response model, weight)
MODELS: tuple[tuple[str, str, str, int], ...] = (
    ("openai", "gpt-4o", "gpt-4o-2024-08-06", 30),
    ("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", 30),
    ("openai", "gpt-4.1", "gpt-4.1-2025-04-14", 10),
    ("anthropic", "claude-3-5-sonnet-20241022", "claude-3-5-sonnet-20241022", 15),
    ("google", "gemini-2.0-flash", "gemini-2.0-flash", 10),
    ("mistral", "mistral-large-latest", "mistral-large-2411", 5),
)
SERVICES = ("support-agent", "search-assistant", "code-review-bot", "email-drafter")
ENVIRONMENTS = (("production", 85), ("staging", 15))
AGENTS = ("planner", "researcher", "writer", "triage")
FINISH_REASONS = (("stop", 90), ("length", 7), ("tool_calls", 3))
ERROR_RATE = 0.02
WORDS = tuple(
    " ".join(
        (
            "the customer asked about an invoice refund policy shipping delay order account",
            "password reset subscription plan upgrade discount warranty return label tracking",
            "number delivery address change payment method card declined billing cycle cancel",
            "renewal support ticket escalation priority summary context previous conversation",
            "assistant should answer briefly politely using the knowledge base article retrieved",
            "documents below and cite sources",
        )
    ).split()
)


@dataclass(frozen=True)
class WorkloadConfig:
    """The shape of the generated traffic. Sizes are per request unless named otherwise."""

    seed: int = 42
    spans_per_request: int = 1000
    llm_calls_per_trace: int = 4
    # Fraction of traces with a long agent loop (10..49 LLM calls), for trace-detail queries.
    large_trace_fraction: float = 0.0
    prompt_bytes: int = 1024
    completion_bytes: int = 160
    templates: int = 8
    users: int = 500
    services: tuple[str, ...] = SERVICES


@dataclass
class Template:
    """One serialised request and where its variable fields are."""

    body: bytes
    span_count: int
    trace_count: int
    trace_id_offsets: list[int] = field(default_factory=list)
    span_id_offsets: list[int] = field(default_factory=list)  # span ids and parent span ids
    time_offsets: list[int] = field(default_factory=list)
    time_values: list[int] = field(default_factory=list)  # relative to TEMPLATE_T0


def _weighted(rng: random.Random, items: tuple[tuple[Any, ...], ...]) -> tuple[Any, ...]:
    return rng.choices(items, weights=[i[-1] for i in items])[0]


def _text(rng: random.Random, size: int) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


class _UniqueBytes:
    """Random byte strings whose ``tail`` bytes are unique (and not all zero)."""

    def __init__(self, rng: random.Random, size: int, tail: int) -> None:
        self.rng, self.size, self.tail = rng, size, tail
        self.seen: set[bytes] = set()

    def __call__(self) -> bytes:
        while True:
            value = self.rng.randbytes(self.size)
            key = value[-self.tail :]
            if key not in self.seen and any(key):
                self.seen.add(key)
                return value


def build_template(config: WorkloadConfig, index: int) -> Template:
    """A request of ``config.spans_per_request`` spans from one service, deterministic per index."""
    rng = random.Random(f"{config.seed}:{index}")
    service = config.services[index % len(config.services)]
    environment = _weighted(rng, ENVIRONMENTS)[0]
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    add_attributes(
        rs.resource.attributes,
        {
            "service.name": service,
            "service.version": f"1.{index % 5}.0",
            "deployment.environment.name": environment,
            "telemetry.sdk.language": "python",
            "telemetry.sdk.name": "opentelemetry",
            "telemetry.sdk.version": "1.38.0",
            "host.name": f"{service}-{index % 3}",
        },
    )
    ss = rs.scope_spans.add()
    ss.scope.name = "opentelemetry.instrumentation.openai_v2"
    ss.scope.version = "2.1b0"
    trace_ids = _UniqueBytes(rng, 16, 8)
    span_ids = _UniqueBytes(rng, 8, 4)
    times: set[int] = set()

    def unique_time(value: int) -> int:
        while value in times:
            value += 1
        times.add(value)
        return value

    spans = 0
    traces = 0
    while spans < config.spans_per_request:
        room = config.spans_per_request - spans
        if room < 2:
            calls = 0
        elif rng.random() < config.large_trace_fraction:
            calls = min(rng.randint(10, 49), room - 1)
        else:
            calls = min(config.llm_calls_per_trace, room - 1)
        traces += 1
        trace_id = trace_ids()
        root_id = span_ids()
        start = TEMPLATE_T0 - rng.randrange(REQUEST_WINDOW_NS)
        user = f"user-{rng.randrange(config.users):04d}"
        session = f"session-{rng.randrange(config.users * 4):05d}"
        agent = rng.choice(AGENTS)
        children: list[Span] = []
        cursor = start + rng.randint(1, 20) * 1_000_000
        trace_error = False
        for _ in range(calls):
            provider, model, response_model, _ = _weighted(rng, MODELS)
            input_tokens = rng.randint(200, 4000)
            output_tokens = rng.randint(20, 800)
            duration = int(rng.lognormvariate(6.5, 0.6) * 1_000_000)  # ~700 ms median
            error = rng.random() < ERROR_RATE
            trace_error = trace_error or error
            prompt = [
                {"role": "system", "parts": [{"type": "text", "content": "You are " + agent}]},
                {
                    "role": "user",
                    "parts": [{"type": "text", "content": _text(rng, config.prompt_bytes - 120)}],
                },
            ]
            completion = [
                {
                    "role": "assistant",
                    "parts": [{"type": "text", "content": _text(rng, config.completion_bytes)}],
                    "finish_reason": _weighted(rng, FINISH_REASONS)[0],
                }
            ]
            span = Span(
                trace_id=trace_id,
                span_id=span_ids(),
                parent_span_id=root_id,
                name=f"chat {model}",
                kind=Span.SPAN_KIND_CLIENT,
                start_time_unix_nano=unique_time(cursor),
                end_time_unix_nano=unique_time(cursor + duration),
                status=Status(
                    code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET,
                    message="RateLimitError: 429 Too Many Requests" if error else "",
                ),
            )
            add_attributes(
                span.attributes,
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": provider,
                    "gen_ai.request.model": model,
                    "gen_ai.response.model": response_model,
                    "gen_ai.request.temperature": round(rng.uniform(0, 1), 2),
                    "gen_ai.request.max_tokens": 1024,
                    "gen_ai.response.id": f"chatcmpl-{rng.getrandbits(64):016x}",
                    "gen_ai.response.finish_reasons": [completion[0]["finish_reason"]],
                    "gen_ai.usage.input_tokens": input_tokens,
                    "gen_ai.usage.output_tokens": output_tokens,
                    "gen_ai.input.messages": json.dumps(prompt, separators=(",", ":")),
                    "gen_ai.output.messages": json.dumps(completion, separators=(",", ":")),
                    "server.address": f"api.{provider}.example",
                },
            )
            if error:
                add_attributes(span.attributes, {"error.type": "RateLimitError"})
            children.append(span)
            cursor += duration + rng.randint(1, 50) * 1_000_000
        root = Span(
            trace_id=trace_id,
            span_id=root_id,
            name=f"invoke_agent {agent}",
            kind=Span.SPAN_KIND_INTERNAL,
            start_time_unix_nano=unique_time(start),
            end_time_unix_nano=unique_time(cursor + rng.randint(1, 20) * 1_000_000),
            status=Status(code=Status.STATUS_CODE_ERROR if trace_error else Status.STATUS_CODE_OK),
        )
        add_attributes(
            root.attributes,
            {
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": agent,
                "user.id": user,
                "session.id": session,
            },
        )
        # Exporters send children before their parents end; keep that order.
        ss.spans.extend(children)
        ss.spans.append(root)
        spans += calls + 1
    body = request.SerializeToString()
    return _locate(body, request, spans, traces)


def _locate(body: bytes, request: ExportTraceServiceRequest, spans: int, traces: int) -> Template:
    """Find the offset of every variable field by searching forward through the body."""
    tpl = Template(body=body, span_count=spans, trace_count=traces)
    pos = 0
    for span in request.resource_spans[0].scope_spans[0].spans:
        # Fields are serialised in field-number order: trace_id(1), span_id(2),
        # parent_span_id(4), start(7), end(8); each lies after the previous one.
        for value, kind in (
            (span.trace_id, "trace"),
            (span.span_id, "span"),
            (span.parent_span_id, "span"),
            (struct.pack("<Q", span.start_time_unix_nano), "time"),
            (struct.pack("<Q", span.end_time_unix_nano), "time"),
        ):
            if not value:
                continue
            at = body.find(value, pos)
            if at < 0:
                raise RuntimeError("template field not found; protobuf layout changed?")
            if kind == "trace":
                tpl.trace_id_offsets.append(at)
            elif kind == "span":
                tpl.span_id_offsets.append(at)
            else:
                tpl.time_offsets.append(at)
                tpl.time_values.append(struct.unpack_from("<Q", body, at)[0] - TEMPLATE_T0)
            pos = at + len(value)
    return tpl


class Workload:
    """Request bodies with fresh ids; ``body(seq, base_ns)`` is cheap and deterministic."""

    def __init__(self, config: WorkloadConfig, run_nonce: int | None = None) -> None:
        self.config = config
        self.templates = [build_template(config, i) for i in range(config.templates)]
        rng = random.Random(f"{config.seed}:nonce")
        self.run_nonce = run_nonce if run_nonce is not None else rng.getrandbits(32)

    def template_for(self, seq: int) -> Template:
        return self.templates[seq % len(self.templates)]

    def spans_in(self, seq: int) -> int:
        return self.template_for(seq).span_count

    def trace_prefix(self, seq: int) -> bytes:
        """The first 8 bytes of every trace id in request ``seq``."""
        return struct.pack(">II", self.run_nonce, seq & 0xFFFFFFFF)

    def body(self, seq: int, base_ns: int) -> bytes:
        """Request number ``seq`` with its traces ending around ``base_ns``."""
        tpl = self.template_for(seq)
        buf = bytearray(tpl.body)
        trace_prefix = self.trace_prefix(seq)
        span_prefix = struct.pack(">I", (self.run_nonce + seq * 2654435761) & 0xFFFFFFFF)
        for at in tpl.trace_id_offsets:
            buf[at : at + 8] = trace_prefix
        for at in tpl.span_id_offsets:
            buf[at : at + 4] = span_prefix
        pack = struct.pack_into
        for at, rel in zip(tpl.time_offsets, tpl.time_values, strict=True):
            pack("<Q", buf, at, base_ns + rel)
        return bytes(buf)


def trace_ids_of(body: bytes) -> list[str]:
    """Hex trace ids in a request body (for checks and tests; not on the hot path)."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    out: list[str] = []
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            out.extend(span.trace_id.hex() for span in ss.spans)
    return out
