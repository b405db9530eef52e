"""``@observe``, ``span(...)``, ``session/user/tags``: spans of the application's own code."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.conftest import Server
from tests.sdk.conftest import fetch_trace, flatten


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("repr exploded")


def by_name(detail: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in flatten(detail["spans"])}


def test_sync_async_and_generators_nest_and_record_io(sdk: Any, obs_server: Server) -> None:
    @sdk.observe(kind="tool", capture_input=True, capture_output=True)
    def lookup(city: str, unit: str = "celsius") -> dict[str, Any]:
        sdk.current_span().set_attribute("lookup.city", city)
        return {"city": city, "temperature": 18, "unit": unit}

    @sdk.observe(name="fetch-async", capture_output=True)
    async def fetch(n: int) -> int:
        await asyncio.sleep(0)
        return n * 2

    @sdk.observe(capture_output=True)
    def numbers(limit: int) -> Iterator[int]:
        for i in range(limit):
            lookup("inner")  # runs inside the generator's span
            yield i

    @sdk.observe(capture_output=True)
    async def letters() -> AsyncIterator[str]:
        for letter in "ab":
            await asyncio.sleep(0)
            yield letter

    class Agent:
        @sdk.observe(kind="agent", capture_input=True)
        def run(self, question: str) -> str:
            lookup("Paris", unit="fahrenheit")
            doubled = asyncio.run(fetch(21))
            total = sum(numbers(2))

            async def collect() -> str:
                return "".join([x async for x in letters()])

            joined = asyncio.run(collect())
            return f"{question}:{doubled}:{total}:{joined}"

    with sdk.span("request", attributes={"route": "/ask"}, input={"q": "why"}) as root:
        answer = Agent().run("why")
        root.set_output(answer)
    assert answer == "why:42:1:ab"

    detail = fetch_trace(obs_server, root.trace_id, min_spans=8)
    spans = by_name(detail)
    assert set(spans) == {
        "request",
        "test_sync_async_and_generators_nest_and_record_io.<locals>.Agent.run",
        "test_sync_async_and_generators_nest_and_record_io.<locals>.lookup",
        "fetch-async",
        "test_sync_async_and_generators_nest_and_record_io.<locals>.numbers",
        "test_sync_async_and_generators_nest_and_record_io.<locals>.letters",
    }
    assert detail["trace"]["span_count"] == 8  # lookup runs three times
    request = detail["spans"][0]
    assert request["name"] == "request"
    assert request["attributes"]["route"] == "/ask"
    assert json.loads(request["attributes"]["input.value"]) == {"q": "why"}
    assert request["attributes"]["output.value"] == "why:42:1:ab"
    assert request["attributes"]["output.mime_type"] == "text/plain"

    [agent] = request["children"]
    assert agent["operation"] == "invoke_agent"
    assert agent["attributes"]["gen_ai.agent.name"].endswith("Agent.run")
    assert json.loads(agent["attributes"]["input.value"]) == {"question": "why"}  # no self
    assert "output.value" not in agent["attributes"]  # not asked for
    children = {c["name"].rsplit(".", 1)[-1]: c for c in agent["children"]}
    assert set(children) == {"lookup", "fetch-async", "numbers", "letters"}
    tool = children["lookup"]
    assert tool["operation"] == "execute_tool"
    assert json.loads(tool["attributes"]["input.value"]) == {"city": "Paris", "unit": "fahrenheit"}
    assert json.loads(tool["attributes"]["output.value"])["temperature"] == 18
    assert tool["attributes"]["lookup.city"] == "Paris"
    assert children["fetch-async"]["attributes"]["output.value"] == "42"
    generator = children["numbers"]
    assert json.loads(generator["attributes"]["output.value"]) == [0, 1]
    assert [c["name"].rsplit(".", 1)[-1] for c in generator["children"]] == ["lookup", "lookup"]
    assert json.loads(children["letters"]["attributes"]["output.value"]) == ["a", "b"]
    assert all(not s["error"] for s in flatten(detail["spans"]))


def test_exceptions_mark_spans_and_propagate_unchanged(sdk: Any, obs_server: Server) -> None:
    class Boom(Exception):
        pass

    @sdk.observe
    def fails() -> None:
        raise Boom("sync boom")

    @sdk.observe
    async def fails_async() -> None:
        raise Boom("async boom")

    @sdk.observe
    def gen_fails() -> Iterator[int]:
        yield 1
        raise Boom("generator boom")

    raised = []
    with sdk.span("root") as root:
        for action in (
            fails,
            lambda: asyncio.run(fails_async()),
            lambda: list(gen_fails()),
        ):
            with pytest.raises(Boom) as caught:
                action()
            raised.append(str(caught.value))
        with pytest.raises(Boom), sdk.span("block"):
            raise Boom("block boom")
    assert raised == ["sync boom", "async boom", "generator boom"]

    detail = fetch_trace(obs_server, root.trace_id, min_spans=5)
    errors = {s["name"].rsplit(".", 1)[-1]: s for s in flatten(detail["spans"]) if s["error"]}
    assert set(errors) == {"fails", "fails_async", "gen_fails", "block"}
    for name, message in (
        ("fails", "sync boom"),
        ("fails_async", "async boom"),
        ("gen_fails", "generator boom"),
        ("block", "block boom"),
    ):
        span = errors[name]
        assert span["status_message"] == f"Boom: {message}"
        assert span["attributes"]["error.type"].endswith("Boom")
        assert span["events"][0]["name"] == "exception"
    assert not detail["spans"][0]["error"]  # the root caught them
    assert detail["trace"]["error_count"] == 4


def test_generator_closed_early_and_send_work(sdk: Any, obs_server: Server) -> None:
    @sdk.observe(capture_output=True)
    def echo() -> Iterator[str]:
        received = "start"
        while True:
            received = yield f"got {received}"

    @sdk.observe(capture_output=True)
    def endless() -> Iterator[int]:
        n = 0
        while True:
            yield n
            n += 1

    with sdk.span("root") as root:
        gen = echo()
        assert next(gen) == "got start"
        assert gen.send("x") == "got x"
        gen.close()
        for n in endless():
            if n == 2:
                break
    detail = fetch_trace(obs_server, root.trace_id, min_spans=3)
    spans = {s["name"].rsplit(".", 1)[-1]: s for s in flatten(detail["spans"])}
    assert json.loads(spans["echo"]["attributes"]["output.value"]) == ["got start", "got x"]
    assert json.loads(spans["endless"]["attributes"]["output.value"]) == [0, 1, 2]
    assert not spans["echo"]["error"] and not spans["endless"]["error"]


def test_unserialisable_inputs_do_not_break_the_function(sdk: Any, obs_server: Server) -> None:
    @sdk.observe(capture_input=True, capture_output=True)
    def takes(thing: Any) -> Any:
        return thing

    value = Unprintable()
    with sdk.span("root") as root:
        assert takes(value) is value
    detail = fetch_trace(obs_server, root.trace_id, min_spans=2)
    span = detail["spans"][0]["children"][0]
    assert "unrepresentable Unprintable" in span["attributes"]["input.value"]


def test_session_user_tags_nest_and_reach_every_span(sdk: Any, obs_server: Server) -> None:
    @sdk.observe
    def step() -> None:
        pass

    with sdk.session("s-1"), sdk.user("u-1"), sdk.tags("outer", team="search"):
        with sdk.span("root") as root:
            step()
            with sdk.tags("inner", team="ranking", attempt=2), sdk.span("nested"):
                step()
        with sdk.user("u-2"), sdk.span("other-user") as other:
            pass
    with sdk.span("outside") as outside:
        pass

    detail = fetch_trace(obs_server, root.trace_id, min_spans=4)
    spans = flatten(detail["spans"])
    assert all(s["session_id"] == "s-1" and s["user_id"] == "u-1" for s in spans)
    nested = next(s for s in spans if s["name"] == "nested")
    assert nested["attributes"]["observatory.tags"] == ["outer", "inner"]
    assert nested["attributes"]["team"] == "ranking" and nested["attributes"]["attempt"] == 2
    assert detail["spans"][0]["attributes"]["observatory.tags"] == ["outer"]
    assert detail["spans"][0]["attributes"]["team"] == "search"

    other_span = fetch_trace(obs_server, other.trace_id)["spans"][0]
    assert other_span["user_id"] == "u-2" and other_span["session_id"] == "s-1"
    outside_span = fetch_trace(obs_server, outside.trace_id)["spans"][0]
    assert outside_span["session_id"] is None and outside_span["user_id"] is None
    assert "observatory.tags" not in outside_span["attributes"]


def test_session_follows_asyncio_tasks(sdk: Any, obs_server: Server) -> None:
    @sdk.observe
    async def work(i: int) -> int:
        await asyncio.sleep(0)
        return i

    async def main() -> str:
        with sdk.session("async-session"), sdk.span("gather") as root:
            await asyncio.gather(*(asyncio.create_task(work(i)) for i in range(3)))
        return root.trace_id

    trace_id = asyncio.run(main())
    detail = fetch_trace(obs_server, trace_id, min_spans=4)
    spans = flatten(detail["spans"])
    assert len(spans) == 4
    assert {s["session_id"] for s in spans} == {"async-session"}
    assert len(detail["spans"][0]["children"]) == 3


def test_session_and_user_as_decorators(sdk: Any, obs_server: Server) -> None:
    @sdk.session("batch-7")
    @sdk.user("cron")
    def nightly() -> str:
        with sdk.span("nightly-job") as job:
            return job.trace_id

    first, second = nightly(), nightly()  # the decorator can be entered again
    for trace_id in (first, second):
        span = fetch_trace(obs_server, trace_id)["spans"][0]
        assert span["session_id"] == "batch-7" and span["user_id"] == "cron"
