"""A local stand-in for the OpenAI and Anthropic HTTP APIs, for the real client libraries.

Responses have the shapes the real APIs return (chat completions, legacy completions, responses,
embeddings, messages; JSON and server-sent event streams, tool calls, error envelopes), with fixed
ids and token counts so that a test can compare results and costs exactly. The model name
selects the behaviour: ``fail-400`` / ``fail-500`` answer with an error, a request with tools gets
a tool call.

Also here: ``FailingCollector``, an OTLP endpoint that answers every export with HTTP 500.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CREATED = 1_700_000_000
RESPONSE_MODELS = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-3.5-turbo-instruct": "gpt-3.5-turbo-instruct",
    "text-embedding-3-small": "text-embedding-3-small",
    "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022",
    "claude-sonnet-4-0": "claude-sonnet-4-20250514",
}
ANSWER = "Hello from the fake provider."
ANSWER_PIECES = ["Hello", " from the", " fake", " provider."]
TOOL_ARGUMENTS = '{"city": "Paris", "unit": "celsius"}'
TOOL_ARGUMENT_PIECES = ['{"city": ', '"Paris", ', '"unit": "celsius"}']
EMBEDDING = [0.25, -0.5, 0.125, 1.0]

# OpenAI usage: prompt tokens include the cached ones.
OPENAI_USAGE = {"prompt_tokens": 1200, "cached_tokens": 200, "completion_tokens": 300}
OPENAI_REASONING_TOKENS = 40
# Anthropic usage: input_tokens excludes cache reads and writes.
ANTHROPIC_USAGE = {
    "input_tokens": 1000,
    "cache_read_input_tokens": 500,
    "cache_creation_input_tokens": 100,
    "output_tokens": 250,
}
EMBEDDING_TOKENS = 8
FIRST_CHUNK_DELAY_S = 0.02  # so time to first chunk is measurably above zero


def response_model(model: str) -> str:
    return RESPONSE_MODELS.get(model, model)


def openai_usage_chat() -> dict[str, Any]:
    u = OPENAI_USAGE
    return {
        "prompt_tokens": u["prompt_tokens"],
        "completion_tokens": u["completion_tokens"],
        "total_tokens": u["prompt_tokens"] + u["completion_tokens"],
        "prompt_tokens_details": {"cached_tokens": u["cached_tokens"], "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": OPENAI_REASONING_TOKENS,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def openai_usage_responses() -> dict[str, Any]:
    u = OPENAI_USAGE
    return {
        "input_tokens": u["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": u["cached_tokens"]},
        "output_tokens": u["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": OPENAI_REASONING_TOKENS},
        "total_tokens": u["prompt_tokens"] + u["completion_tokens"],
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # the connection closes after each answer (ends SSE bodies)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # --- plumbing -----------------------------------------------------------------------------

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", "req_fake")
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: list[tuple[str | None, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        for index, (event, data) in enumerate(events):
            if index == 1:
                time.sleep(FIRST_CHUNK_DELAY_S)
            text = data if isinstance(data, str) else json.dumps(data)
            frame = (f"event: {event}\n" if event else "") + f"data: {text}\n\n"
            self.wfile.write(frame.encode())
            self.wfile.flush()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server.requests.append(
            {"path": self.path, "headers": dict(self.headers.items()), "body": body}
        )
        model = str(body.get("model", ""))
        anthropic = self.path.startswith("/v1/messages")
        if model in ("fail-400", "fail-500"):
            status = int(model[-3:])
            if anthropic:
                kind = "invalid_request_error" if status == 400 else "api_error"
                self._json(
                    status,
                    {"type": "error", "error": {"type": kind, "message": f"fake {status} error"}},
                )
            else:
                self._json(
                    status,
                    {
                        "error": {
                            "message": f"fake {status} error",
                            "type": "invalid_request_error" if status == 400 else "server_error",
                            "param": "model",
                            "code": "model_not_found" if status == 400 else None,
                        }
                    },
                )
            return
        routes = {
            "/v1/chat/completions": self._chat,
            "/v1/completions": self._completions,
            "/v1/responses": self._responses,
            "/v1/embeddings": self._embeddings,
            "/v1/messages": self._messages,
        }
        path = self.path.split("?", 1)[0]
        # Azure OpenAI puts the deployment in the path: /openai/deployments/<name>/chat/completions
        route = next((r for p, r in routes.items() if path == p or path.endswith(p[3:])), None)
        if route is None:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        route(body)

    # --- OpenAI chat completions --------------------------------------------------------------

    def _chat(self, body: dict[str, Any]) -> None:
        model = response_model(body["model"])
        tools = bool(body.get("tools"))
        base = {
            "id": "chatcmpl-fake",
            "created": CREATED,
            "model": model,
            "system_fingerprint": "fp_fake",
            "service_tier": "default",
        }
        if not body.get("stream"):
            if tools:
                message: dict[str, Any] = {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "call_fake",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": TOOL_ARGUMENTS},
                        }
                    ],
                }
            else:
                message = {"role": "assistant", "content": ANSWER, "refusal": None}
            self._json(
                200,
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "logprobs": None,
                            "finish_reason": "tool_calls" if tools else "stop",
                        }
                    ],
                    "usage": openai_usage_chat(),
                },
            )
            return

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                **base,
                "object": "chat.completion.chunk",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }

        events: list[tuple[str | None, Any]] = [
            (None, chunk({"role": "assistant", "content": "", "refusal": None}))
        ]
        if tools:
            events.append(
                (
                    None,
                    chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": "call_fake",
                                    "type": "function",
                                    "function": {"name": "get_weather", "arguments": ""},
                                }
                            ]
                        }
                    ),
                )
            )
            for piece in TOOL_ARGUMENT_PIECES:
                events.append(
                    (None, chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
                )
            events.append((None, chunk({}, "tool_calls")))
        else:
            events += [(None, chunk({"content": piece})) for piece in ANSWER_PIECES]
            events.append((None, chunk({}, "stop")))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(
                (
                    None,
                    {
                        **base,
                        "object": "chat.completion.chunk",
                        "choices": [],
                        "usage": openai_usage_chat(),
                    },
                )
            )
        events.append((None, "[DONE]"))
        self._sse(events)

    # --- OpenAI legacy completions ------------------------------------------------------------

    def _completions(self, body: dict[str, Any]) -> None:
        self._json(
            200,
            {
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": CREATED,
                "model": response_model(body["model"]),
                "choices": [
                    {"index": 0, "text": ANSWER, "logprobs": None, "finish_reason": "stop"}
                ],
                "usage": openai_usage_chat(),
            },
        )

    # --- OpenAI responses ---------------------------------------------------------------------

    def _response_object(self, body: dict[str, Any], status: str) -> dict[str, Any]:
        tools = bool(body.get("tools"))
        if status != "completed":
            output: list[dict[str, Any]] = []
        elif tools:
            output = [
                {
                    "type": "function_call",
                    "id": "fc_fake",
                    "call_id": "call_fake",
                    "name": "get_weather",
                    "arguments": TOOL_ARGUMENTS,
                    "status": "completed",
                }
            ]
        else:
            output = [
                {
                    "type": "message",
                    "id": "msg_fake",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": ANSWER, "annotations": []}],
                }
            ]
        return {
            "id": "resp_fake",
            "object": "response",
            "created_at": CREATED,
            "status": status,
            "model": response_model(body["model"]),
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "instructions": body.get("instructions"),
            "usage": openai_usage_responses() if status == "completed" else None,
        }

    def _responses(self, body: dict[str, Any]) -> None:
        if not body.get("stream"):
            self._json(200, self._response_object(body, "completed"))
            return
        seq = iter(range(1000))
        events: list[tuple[str | None, Any]] = [
            (
                "response.created",
                {
                    "type": "response.created",
                    "sequence_number": next(seq),
                    "response": self._response_object(body, "in_progress"),
                },
            )
        ]
        item = {
            "type": "message",
            "id": "msg_fake",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        part = {"type": "output_text", "text": "", "annotations": []}
        where = {"item_id": "msg_fake", "output_index": 0, "content_index": 0}
        events.append(
            (
                "response.output_item.added",
                {
                    "type": "response.output_item.added",
                    "sequence_number": next(seq),
                    "output_index": 0,
                    "item": item,
                },
            )
        )
        events.append(
            (
                "response.content_part.added",
                {
                    "type": "response.content_part.added",
                    "sequence_number": next(seq),
                    **where,
                    "part": part,
                },
            )
        )
        for piece in ANSWER_PIECES:
            events.append(
                (
                    "response.output_text.delta",
                    {
                        "type": "response.output_text.delta",
                        "sequence_number": next(seq),
                        **where,
                        "delta": piece,
                        "logprobs": [],
                    },
                )
            )
        done_part = {**part, "text": ANSWER}
        events += [
            (
                "response.output_text.done",
                {
                    "type": "response.output_text.done",
                    "sequence_number": next(seq),
                    **where,
                    "text": ANSWER,
                    "logprobs": [],
                },
            ),
            (
                "response.content_part.done",
                {
                    "type": "response.content_part.done",
                    "sequence_number": next(seq),
                    **where,
                    "part": done_part,
                },
            ),
            (
                "response.output_item.done",
                {
                    "type": "response.output_item.done",
                    "sequence_number": next(seq),
                    "output_index": 0,
                    "item": {**item, "status": "completed", "content": [done_part]},
                },
            ),
        ]
        events.append(
            (
                "response.completed",
                {
                    "type": "response.completed",
                    "sequence_number": next(seq),
                    "response": self._response_object(body, "completed"),
                },
            )
        )
        self._sse(events)

    # --- OpenAI embeddings --------------------------------------------------------------------

    def _embeddings(self, body: dict[str, Any]) -> None:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if body.get("encoding_format") == "base64":
            vector: Any = base64.b64encode(struct.pack(f"<{len(EMBEDDING)}f", *EMBEDDING)).decode()
        else:
            vector = EMBEDDING
        self._json(
            200,
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": vector}
                    for i in range(len(inputs))
                ],
                "model": response_model(body["model"]),
                "usage": {"prompt_tokens": EMBEDDING_TOKENS, "total_tokens": EMBEDDING_TOKENS},
            },
        )

    # --- Anthropic messages -------------------------------------------------------------------

    def _messages(self, body: dict[str, Any]) -> None:
        model = response_model(body["model"])
        tools = bool(body.get("tools"))
        usage = dict(ANTHROPIC_USAGE)
        if not body.get("stream"):
            content: list[dict[str, Any]] = (
                [
                    {"type": "text", "text": "Let me check."},
                    {
                        "type": "tool_use",
                        "id": "toolu_fake",
                        "name": "get_weather",
                        "input": json.loads(TOOL_ARGUMENTS),
                    },
                ]
                if tools
                else [{"type": "text", "text": ANSWER}]
            )
            self._json(
                200,
                {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": content,
                    "stop_reason": "tool_use" if tools else "end_turn",
                    "stop_sequence": None,
                    "usage": usage,
                },
            )
            return
        start_usage = {**usage, "output_tokens": 1}
        events: list[tuple[str | None, Any]] = [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_fake",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": start_usage,
                    },
                },
            ),
            ("ping", {"type": "ping"}),
        ]
        if tools:
            events.append(
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {
                            "type": "tool_use",
                            "id": "toolu_fake",
                            "name": "get_weather",
                            "input": {},
                        },
                    },
                )
            )
            for piece in TOOL_ARGUMENT_PIECES:
                events.append(
                    (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": 0,
                            "delta": {"type": "input_json_delta", "partial_json": piece},
                        },
                    )
                )
        else:
            events.append(
                (
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
            for piece in ANSWER_PIECES:
                events.append(
                    (
                        "content_block_delta",
                        {
                            "type": "content_block_delta",
                            "index": 0,
                            "delta": {"type": "text_delta", "text": piece},
                        },
                    )
                )
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": "tool_use" if tools else "end_turn",
                        "stop_sequence": None,
                    },
                    "usage": {"output_tokens": usage["output_tokens"]},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        self._sse(events)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[dict[str, Any]]


class _Running:
    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = _Server(("127.0.0.1", 0), handler)
        self.httpd.requests = []
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.httpd.requests

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


class FakeProvider(_Running):
    """OpenAI at ``openai_url`` and Anthropic at ``anthropic_url``, on one loopback port."""

    def __init__(self) -> None:
        super().__init__(_Handler)

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class _FailingHandler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.requests.append({"path": self.path, "headers": headers})
        data = b'{"message": "internal error"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FailingCollector(_Running):
    """An OTLP/HTTP endpoint that answers every export with 500 Internal Server Error."""

    def __init__(self) -> None:
        super().__init__(_FailingHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
