"""``observatory demo``: send a realistic stream of LLM traces through the real OTLP endpoint.

Four made-up services produce what LLM applications produce: a support agent that calls tools
(order look-ups, help-centre search) between GPT-4o calls, a research assistant doing retrieval
and Claude calls with prompt caching, a code-review bot on Gemini and GPT-4o-mini, and an email
triage service on Mistral. Conversations span several traces (sessions) of a few dozen users;
some calls hit rate limits or tool time-outs. Content follows the OpenTelemetry GenAI semantic
conventions (``gen_ai.input.messages`` and friends), encoded as OTLP protobuf with
opentelemetry-proto (a server dependency), so the command needs nothing beyond the server.
"""

from __future__ import annotations

import argparse
import gzip
import math
import random
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from observatory import demo_content as content

NS = 1_000_000_000
BATCH_TRACES = 20
# Input tokens the support agent's tool definitions add to every call.
TOOL_SCHEMAS = (900, 1600)
KIND_INTERNAL = PbSpan.SPAN_KIND_INTERNAL
KIND_CLIENT = PbSpan.SPAN_KIND_CLIENT


@dataclass
class DemoSpan:
    span_id: str
    parent_span_id: str | None
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, error: str, exception_type: str, stacktrace: str | None = None) -> None:
        """Mark the span failed with ``error`` and record the ``exception`` event at its end."""
        self.error = error
        attributes = {"exception.type": exception_type, "exception.message": error}
        if stacktrace is not None:
            attributes["exception.stacktrace"] = stacktrace
        self.events.append(
            {"name": "exception", "time_unix_nano": self.end_ns, "attributes": attributes}
        )


@dataclass
class DemoTrace:
    trace_id: str
    service: str
    environment: str
    spans: list[DemoSpan] = field(default_factory=list)

    @property
    def end_ns(self) -> int:
        return max(s.end_ns for s in self.spans)


@dataclass(frozen=True)
class Model:
    provider: str  # as instrumentations send it (gen_ai.provider.name)
    request: str
    response: str
    ms_per_token: float
    server: str


GPT_4O = Model("openai", "gpt-4o", "gpt-4o-2024-08-06", 14.0, "api.openai.com")
GPT_4O_MINI = Model("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", 7.0, "api.openai.com")
CLAUDE_SONNET = Model(
    "anthropic", "claude-sonnet-4", "claude-sonnet-4-20250514", 16.0, "api.anthropic.com"
)
CLAUDE_HAIKU = Model(
    "anthropic", "claude-3-5-haiku", "claude-3-5-haiku-20241022", 8.0, "api.anthropic.com"
)
GEMINI_FLASH = Model(
    "gcp.gemini", "gemini-2.0-flash", "gemini-2.0-flash", 6.0, "generativelanguage.googleapis.com"
)
MISTRAL_LARGE = Model(
    "mistral_ai", "mistral-large-latest", "mistral-large-2411", 15.0, "api.mistral.ai"
)
EMBEDDING = Model(
    "openai", "text-embedding-3-small", "text-embedding-3-small", 0.0, "api.openai.com"
)

# service → (environment, share of traces, conversational)
SERVICES: dict[str, tuple[str, float, bool]] = {
    "support-agent": ("production", 0.45, True),
    "research-assistant": ("production", 0.25, True),
    "code-review-bot": ("staging", 0.18, False),
    "mail-triage": ("production", 0.12, False),
}


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


class Generator:
    """Builds demo traces. ``rng`` drives content and timing, ``ids`` the trace and span ids."""

    def __init__(self, rng: random.Random, ids: random.Random) -> None:
        self.rng = rng
        self.ids = ids
        self.users = [f"{name}@example.com" for name in content.USER_NAMES]

    # --- ids and helpers ----------------------------------------------------------------------

    def _span_id(self) -> str:
        return f"{self.ids.getrandbits(64) or 1:016x}"

    def _trace_id(self) -> str:
        return f"{self.ids.getrandbits(128) or 1:032x}"

    def session_id(self) -> str:
        return f"sess_{self.ids.getrandbits(48):012x}"

    def _ms(self, low: float, high: float) -> int:
        """A log-uniform duration in nanoseconds."""
        return int(math.exp(self.rng.uniform(math.log(low), math.log(high))) * 1e6)

    def _llm(
        self,
        trace: DemoTrace,
        parent: DemoSpan,
        start: int,
        model: Model,
        system: str,
        history: list[dict[str, Any]],
        output: dict[str, Any],
        *,
        cached: bool = False,
        error: str | None = None,
        overhead: tuple[int, int] = (150, 600),
    ) -> DemoSpan:
        prompt_text = system + orjson.dumps(history).decode()
        # Tool schemas, retrieved chunks and few-shot examples the texts here leave out.
        input_tokens = _tokens(prompt_text) + self.rng.randint(*overhead)
        output_text = orjson.dumps(output.get("parts", [])).decode()
        output_tokens = 0 if error else _tokens(output_text) + self.rng.randint(3, 30)
        ttft = self._ms(180, 900)
        duration = ttft + int(output_tokens * model.ms_per_token * self.rng.uniform(0.7, 1.4) * 1e6)
        if self.rng.random() < 0.03:
            duration *= 3  # a slow outlier
        if error:
            duration = self._ms(80, 400)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": model.provider,
            "gen_ai.request.model": model.request,
            "gen_ai.request.temperature": round(self.rng.choice((0.0, 0.2, 0.3, 0.7)), 1),
            "gen_ai.request.max_tokens": 1024,
            "server.address": model.server,
            "gen_ai.system_instructions": orjson.dumps(
                [{"type": "text", "content": system}]
            ).decode(),
            "gen_ai.input.messages": orjson.dumps(history).decode(),
            "gen_ai.usage.input_tokens": input_tokens,
        }
        if not error:
            attrs.update(
                {
                    "gen_ai.response.model": model.response,
                    "gen_ai.response.id": f"resp_{self.ids.getrandbits(64):016x}",
                    "gen_ai.response.finish_reasons": [output.get("finish_reason", "stop")],
                    "gen_ai.usage.output_tokens": output_tokens,
                    "gen_ai.output.messages": orjson.dumps([output]).decode(),
                    "gen_ai.response.time_to_first_chunk": round(ttft / 1e9, 3),
                }
            )
            if cached:
                attrs["gen_ai.usage.cache_read.input_tokens"] = int(input_tokens * 0.7)
        span = DemoSpan(
            self._span_id(),
            parent.span_id,
            f"chat {model.request}",
            KIND_CLIENT,
            start,
            start + duration,
            attrs,
        )
        if error:
            provider = "openai" if model.provider == "openai" else "anthropic"
            span.fail(error, f"{provider}.RateLimitError")
        trace.spans.append(span)
        return span

    def _tool(
        self,
        trace: DemoTrace,
        parent: DemoSpan,
        start: int,
        call: dict[str, Any],
        result: Any,
        error: str | None = None,
    ) -> DemoSpan:
        duration = self._ms(40, 900) if not error else self._ms(5000, 8000)
        span = DemoSpan(
            self._span_id(),
            parent.span_id,
            f"execute_tool {call['name']}",
            KIND_INTERNAL,
            start,
            start + duration,
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": call["name"],
                "gen_ai.tool.call.id": call["id"],
                "gen_ai.tool.type": "function",
                "gen_ai.tool.call.arguments": orjson.dumps(call["arguments"]).decode(),
            },
        )
        if error:
            span.fail(error, "TimeoutError", content.timeout_stacktrace(call["name"]))
        else:
            span.attributes["gen_ai.tool.call.result"] = orjson.dumps(result).decode()
        trace.spans.append(span)
        return span

    def _root(
        self, trace: DemoTrace, name: str, start: int, session: str | None, user: str
    ) -> DemoSpan:
        attrs: dict[str, Any] = {"user.id": user}
        if session:
            attrs["session.id"] = session
        root = DemoSpan(self._span_id(), None, name, KIND_INTERNAL, start, start, attrs)
        trace.spans.append(root)
        return root

    def _agent_root(
        self, trace: DemoTrace, start: int, session: str, user: str, question: str
    ) -> DemoSpan:
        """The ``invoke_agent`` root span of a conversation turn; the agent is the service."""
        root = self._root(trace, f"invoke_agent {trace.service}", start, session, user)
        root.attributes.update(
            {
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": trace.service,
                "input.value": question,
            }
        )
        return root

    @staticmethod
    def _close(root: DemoSpan, trace: DemoTrace, pad_ns: int) -> None:
        root.end_ns = max(s.end_ns for s in trace.spans) + pad_ns

    # --- scenarios ------------------------------------------------------------------------------

    def support_turn(
        self,
        start: int,
        session: str,
        user: str,
        history: list[dict[str, Any]],
        turn: int = 0,
    ) -> DemoTrace:
        """An agent turn: GPT-4o picks a tool, the tool runs, GPT-4o answers."""
        rng = self.rng
        topic = content.SUPPORT_TOPICS[turn % len(content.SUPPORT_TOPICS)]
        case = content.support_case(rng, topic)
        trace = DemoTrace(self._trace_id(), "support-agent", "production")
        root = self._agent_root(trace, start, session, user, case["question"])
        model = GPT_4O if rng.random() < 0.8 else GPT_4O_MINI
        messages = [*history, content.user(case["question"])]
        at = start + self._ms(2, 15)
        if rng.random() < 0.06:
            failed = self._llm(
                trace,
                root,
                at,
                model,
                content.SUPPORT_SYSTEM,
                messages,
                {},
                error=f"Rate limit reached for {model.request} in organization org-demo on "
                "tokens per min (TPM): Limit 30000. Please try again in 1.2s.",
                overhead=TOOL_SCHEMAS,
            )
            at = failed.end_ns + self._ms(800, 1500)
        calls = case["calls"]
        first = self._llm(
            trace,
            root,
            at,
            model,
            content.SUPPORT_SYSTEM,
            messages,
            content.assistant_tool_calls(calls),
            overhead=TOOL_SCHEMAS,
        )
        at = first.end_ns + self._ms(1, 5)
        messages.append(content.assistant_tool_calls(calls))
        tool_failed = False
        for call, result in zip(calls, case["results"], strict=True):
            error = None
            if rng.random() < 0.04:
                error = f"{call['name']} did not answer within 5.0 seconds"
                tool_failed = True
            tool = self._tool(trace, root, at, call, result, error)
            at = tool.end_ns + self._ms(1, 4)
            messages.append(
                content.tool_response(call["id"], {"error": error} if error else result)
            )
        answer = content.SUPPORT_FALLBACK if tool_failed else case["answer"]
        self._llm(
            trace,
            root,
            at,
            model,
            content.SUPPORT_SYSTEM,
            messages,
            content.assistant(answer),
            overhead=TOOL_SCHEMAS,
        )
        root.attributes["output.value"] = answer
        self._close(root, trace, self._ms(1, 6))
        history.extend([content.user(case["question"]), content.assistant(answer)])
        return trace

    def research_turn(
        self,
        start: int,
        session: str,
        user: str,
        history: list[dict[str, Any]],
        turn: int = 0,
    ) -> DemoTrace:
        """Retrieval-augmented answer: embed the question, search, answer with Claude."""
        rng = self.rng
        case = content.RESEARCH_CASES[turn % len(content.RESEARCH_CASES)]
        trace = DemoTrace(self._trace_id(), "research-assistant", "production")
        root = self._agent_root(trace, start, session, user, case["question"])
        at = start + self._ms(2, 10)
        tokens = _tokens(case["question"])
        embed = DemoSpan(
            self._span_id(),
            root.span_id,
            f"embeddings {EMBEDDING.request}",
            KIND_CLIENT,
            at,
            at + self._ms(60, 260),
            {
                "gen_ai.operation.name": "embeddings",
                "gen_ai.provider.name": EMBEDDING.provider,
                "gen_ai.request.model": EMBEDDING.request,
                "gen_ai.response.model": EMBEDDING.response,
                "gen_ai.usage.input_tokens": tokens,
                "server.address": EMBEDDING.server,
            },
        )
        trace.spans.append(embed)
        at = embed.end_ns + self._ms(1, 3)
        search = DemoSpan(
            self._span_id(),
            root.span_id,
            "retrieve documents",
            KIND_CLIENT,
            at,
            at + self._ms(20, 180),
            {
                "gen_ai.operation.name": "retrieval",
                "db.system.name": "qdrant",
                "db.collection.name": "company-docs",
                "retrieval.top_k": 5,
                "retrieval.documents": orjson.dumps(case["documents"]).decode(),
            },
        )
        trace.spans.append(search)
        at = search.end_ns + self._ms(1, 3)
        context = "\n\n".join(f"[{d['title']}] {d['snippet']}" for d in case["documents"])
        question = f"{case['question']}\n\nContext:\n{context}"
        messages = [*history, content.user(question)]
        model = CLAUDE_SONNET if rng.random() < 0.75 else CLAUDE_HAIKU
        error = None
        if rng.random() < 0.03:
            error = "Number of request tokens has exceeded your per-minute rate limit"
        answer_span = self._llm(
            trace,
            root,
            at,
            model,
            content.RESEARCH_SYSTEM,
            messages,
            content.assistant(case["answer"]),
            cached=bool(history) or rng.random() < 0.4,
            error=error,
            overhead=(1500, 4500),
        )
        if error:
            answer_span.attributes["gen_ai.usage.output_tokens"] = 0
            root.error = "the model call failed: " + error
        else:
            root.attributes["output.value"] = case["answer"]
        self._close(root, trace, self._ms(1, 5))
        history.extend([content.user(case["question"]), content.assistant(case["answer"])])
        return trace

    def review_trace(self, start: int, user: str) -> DemoTrace:
        """One pull request: GPT-4o-mini classifies the diff, Gemini writes the review."""
        rng = self.rng
        case = rng.choice(content.REVIEW_CASES)
        env = "staging" if rng.random() < 0.6 else "production"
        trace = DemoTrace(self._trace_id(), "code-review-bot", env)
        root = self._root(trace, "review pull request", start, None, user)
        root.attributes.update({"vcs.repository.name": case["repo"], "vcs.change.id": case["pr"]})
        at = start + self._ms(3, 20)
        classify = self._llm(
            trace,
            root,
            at,
            GPT_4O_MINI,
            content.CLASSIFY_SYSTEM,
            [content.user(case["diff"])],
            content.assistant(case["label"]),
        )
        at = classify.end_ns + self._ms(1, 5)
        self._llm(
            trace,
            root,
            at,
            GEMINI_FLASH,
            content.REVIEW_SYSTEM,
            [content.user(case["diff"])],
            content.assistant(case["review"]),
        )
        self._close(root, trace, self._ms(1, 5))
        return trace

    def triage_trace(self, start: int, user: str) -> DemoTrace:
        """An incoming email: Mistral classifies it and files a ticket through a tool."""
        rng = self.rng
        case = rng.choice(content.TRIAGE_CASES)
        trace = DemoTrace(self._trace_id(), "mail-triage", "production")
        root = self._root(trace, "triage email", start, None, user)
        at = start + self._ms(2, 10)
        call = {
            "id": f"call_{self.ids.getrandbits(40):010x}",
            "name": "create_ticket",
            "arguments": case["ticket"],
        }
        decide = self._llm(
            trace,
            root,
            at,
            MISTRAL_LARGE,
            content.TRIAGE_SYSTEM,
            [content.user(case["email"])],
            content.assistant_tool_calls([call]),
        )
        at = decide.end_ns + self._ms(1, 4)
        self._tool(trace, root, at, call, {"ticket": f"SUP-{rng.randint(1000, 9999)}"})
        self._close(root, trace, self._ms(1, 5))
        return trace


def _start_times(rng: random.Random, count: int, days: float, now_ns: int) -> list[int]:
    """Start times over the past ``days``, busier in working hours, a few in the last minutes."""
    if days * 86400.0 < 900.0:  # a live trickle (--follow): traces of the last few seconds
        low, high = 15.0, max(days * 86400.0, 20.0)
        return sorted(now_ns - int(rng.uniform(low, high) * NS) for _ in range(count))
    span_s = days * 86400.0
    out = []
    recent = max(1, count // 40)
    for index in range(count):
        if index < recent:  # so that "last 15 minutes" and "last hour" are not empty
            out.append(now_ns - int(rng.uniform(30, min(2700.0, span_s)) * NS))
            continue
        while True:
            back = rng.uniform(60, span_s)
            hour = ((now_ns / NS - back) / 3600.0) % 24
            weight = 0.35 + 0.65 * max(0.0, math.sin((hour - 6) / 16 * math.pi))
            if rng.random() < weight:
                break
        out.append(now_ns - int(back * NS))
    return sorted(out)


def build_traces(
    count: int, days: float, seed: int | None, now_ns: int | None = None
) -> list[DemoTrace]:
    """``count`` demo traces ending at ``now_ns``; the same seed and clock give the same traces."""
    now_ns = now_ns or time.time_ns()
    rng = random.Random(seed)  # noqa: S311 # nosec B311 - demo data, not secrets
    ids = random.Random(f"{seed}:{now_ns}" if seed is not None else None)  # noqa: S311 # nosec B311
    gen = Generator(rng, ids)
    names = list(SERVICES)
    shares = [SERVICES[n][1] for n in names]
    traces: list[DemoTrace] = []
    starts = _start_times(rng, count, days, now_ns)
    index = 0
    while index < len(starts):
        service = rng.choices(names, shares)[0]
        user = rng.choice(gen.users)
        if not SERVICES[service][2]:
            start = starts[index]
            index += 1
            traces.append(
                gen.review_trace(start, user)
                if service == "code-review-bot"
                else gen.triage_trace(start, user)
            )
            continue
        turns = min(rng.choice((1, 1, 2, 2, 3, 4, 5)), len(starts) - index)
        session = gen.session_id()
        history: list[dict[str, Any]] = []
        at = starts[index]
        first_topic = rng.randrange(1000)  # each turn of a conversation asks something new
        for turn in range(turns):
            trace = (
                gen.support_turn(at, session, user, history, first_topic + turn)
                if service == "support-agent"
                else gen.research_turn(at, session, user, history, first_topic + turn)
            )
            traces.append(trace)
            # The user reads the answer and types the next question.
            at = min(trace.end_ns + int(rng.uniform(15, 150) * NS), now_ns - NS)
        index += turns
    return traces


# --- OTLP encoding ------------------------------------------------------------------------------


def any_value(value: Any) -> AnyValue:
    """The OTLP protobuf ``AnyValue`` of a Python value: bool, int, float, bytes, a list of
    these (an array), anything else as its string."""
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, list):
        out = AnyValue()
        out.array_value.values.extend(any_value(v) for v in value)
        return out
    return AnyValue(string_value=str(value))


def add_attributes(target: Any, values: dict[str, Any]) -> None:
    """Append ``values`` to ``target``, a repeated OTLP ``KeyValue`` field."""
    target.extend(KeyValue(key=key, value=any_value(value)) for key, value in values.items())


def encode(traces: list[DemoTrace]) -> bytes:
    """One OTLP ExportTraceServiceRequest (protobuf), one resource per service."""
    request = ExportTraceServiceRequest()
    groups: dict[tuple[str, str], list[DemoTrace]] = {}
    for trace in traces:
        groups.setdefault((trace.service, trace.environment), []).append(trace)
    for (service, environment), members in groups.items():
        rs = request.resource_spans.add()
        add_attributes(
            rs.resource.attributes,
            {
                "service.name": service,
                "service.version": "1.4.2",
                "deployment.environment.name": environment,
                "telemetry.sdk.language": "python",
                "telemetry.sdk.name": "opentelemetry",
            },
        )
        ss = rs.scope_spans.add()
        ss.scope.name = "observatory.demo"
        ss.scope.version = "1"
        for trace in members:
            for span in trace.spans:
                pb = PbSpan(
                    trace_id=bytes.fromhex(trace.trace_id),
                    span_id=bytes.fromhex(span.span_id),
                    parent_span_id=bytes.fromhex(span.parent_span_id)
                    if span.parent_span_id
                    else b"",
                    name=span.name,
                    kind=span.kind,  # type: ignore[arg-type]
                    start_time_unix_nano=span.start_ns,
                    end_time_unix_nano=span.end_ns,
                    status=Status(
                        code=Status.STATUS_CODE_ERROR if span.error else Status.STATUS_CODE_OK,
                        message=span.error or "",
                    ),
                )
                add_attributes(pb.attributes, span.attributes)
                for event in span.events:
                    ev = pb.events.add()
                    ev.name = event["name"]
                    ev.time_unix_nano = event["time_unix_nano"]
                    add_attributes(ev.attributes, event["attributes"])
                ss.spans.append(pb)
    return request.SerializeToString()


# --- sending ------------------------------------------------------------------------------------


class DemoError(RuntimeError):
    pass


def send(url: str, key: str, body: bytes, attempts: int = 6) -> None:
    """POST one OTLP request; retry (bounded) when the server says 429/503 or is unreachable."""
    endpoint = url.rstrip("/") + "/v1/traces"
    if not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"--url must be an http:// or https:// URL, not {url!r}")
    data = gzip.compress(body)
    for attempt in range(attempts):
        request = urllib.request.Request(  # noqa: S310 - the URL is the user's own server
            endpoint,
            data=data,
            method="POST",
            headers={
                "Content-Type": "application/x-protobuf",
                "Content-Encoding": "gzip",
                "Authorization": f"Bearer {key}",
            },
        )
        try:
            # The scheme is checked above: only http(s).
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 # nosec B310
                response.read()
                return
        except urllib.error.HTTPError as exc:
            if exc.code in (429, 503) and attempt + 1 < attempts:
                delay = float(exc.headers.get("Retry-After") or 1)
                time.sleep(min(max(delay, 0.2), 10))
                continue
            detail = exc.read()[:300].decode(errors="replace")
            raise DemoError(f"{endpoint} answered {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            if attempt + 1 < attempts:
                time.sleep(0.5 * (attempt + 1))
                continue
            raise DemoError(f"cannot reach {endpoint}: {exc}") from exc


def _read_key(args: argparse.Namespace) -> str:
    if args.key:
        return str(args.key).strip()
    from observatory.config import load_settings

    settings = load_settings({"data_dir": args.data_dir} if args.data_dir else {})
    path = Path(settings.data_dir) / "initial-admin-key"
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise DemoError(
            f"no --key given and {path} is not readable ({exc.strerror}); pass --key with an "
            "ingest or admin key, or --data-dir pointing at the server's data directory"
        ) from exc


def cmd_demo(args: argparse.Namespace) -> int:
    if args.traces < 1 or args.traces > 100_000:
        print("error: --traces must be between 1 and 100000", file=sys.stderr)
        return 2
    if not 0 < args.days <= 365:
        print("error: --days must be more than 0 and at most 365", file=sys.stderr)
        return 2
    try:
        key = _read_key(args)
        traces = build_traces(args.traces, args.days, args.seed)
        started = time.monotonic()
        spans = 0
        for offset in range(0, len(traces), BATCH_TRACES):
            batch = traces[offset : offset + BATCH_TRACES]
            send(args.url, key, encode(batch))
            spans += sum(len(t.spans) for t in batch)
        elapsed = time.monotonic() - started
        print(
            f"sent {len(traces)} traces ({spans} spans) over the past {args.days:g} day(s) "
            f"to {args.url.rstrip('/')}/v1/traces in {elapsed:.1f}s"
        )
        print(f"open {args.url.rstrip('/')}/ to see them")
        if args.follow:
            print("sending a new trace every few seconds; press Ctrl-C to stop", flush=True)
            rng = random.Random(args.seed)  # noqa: S311 # nosec B311 - demo data
            while True:
                time.sleep(rng.uniform(1.5, 4.0))
                send(args.url, key, encode(build_traces(1, 30 / 86400, None)))
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def register(subparsers: Any) -> None:
    """Add ``observatory demo`` to the CLI."""
    parser = subparsers.add_parser(
        "demo",
        help="send realistic demo traces (an agent with LLM and tool calls) to a running server",
        description="Send a realistic stream of LLM traces through the OTLP endpoint of a "
        "running server, so the dashboards have something to show.",
    )
    parser.add_argument(
        "--url", default="http://127.0.0.1:8000", help="server base URL (default %(default)s)"
    )
    parser.add_argument(
        "--key",
        help="API key with the ingest or admin role (default: <data dir>/initial-admin-key)",
    )
    parser.add_argument(
        "--traces", type=int, default=200, help="number of traces (default %(default)s)"
    )
    parser.add_argument(
        "--days",
        type=float,
        default=1.0,
        help="spread the traces over the past D days (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, help="random seed for reproducible content")
    parser.add_argument(
        "--follow", action="store_true", help="keep sending a trace every few seconds"
    )
    parser.add_argument("--data-dir", help="where to find initial-admin-key (OBSERVATORY_DATA_DIR)")
    parser.set_defaults(func=cmd_demo)
