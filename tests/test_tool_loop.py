"""The tool loop with tools that need no approval: calls of one step run in parallel, each
result goes back to the model, and a tool that raises becomes an error result."""

import asyncio
import json
import time
import uuid
from typing import Any

from core.contracts import WORKFLOW_NAME, TurnOutcome
from store import conversations, events, turns
from tests.conftest import marker
from tools.base import ToolContext, ToolFailed, ToolSpec
from tools.registry import ToolRegistry
from worker import build_worker
from workflows.client import turn_input


class SlowEcho:
    """A read-only tool defined by the test: waits, then echoes its argument."""

    spec = ToolSpec(
        name="slow_echo",
        description="Echo `text` after a pause.",
        input_schema={
            "type": "object",
            "properties": {"text": {"type": "string"}, "fail": {"type": "boolean"}},
            "required": ["text"],
            "additionalProperties": False,
        },
    )

    def __init__(self) -> None:
        self.running = 0
        self.most_at_once = 0

    def check(self, arguments: dict[str, Any]) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(1.0)
            if arguments.get("fail"):
                raise RuntimeError("the echo chamber collapsed")
            return {"echo": arguments["text"], "call": context.tool_call_id}
        finally:
            self.running -= 1


async def run_turn_with(
    pool, temporal, settings, user, tools: list[Any], content: str
) -> tuple[str, TurnOutcome]:
    """A turn on a worker of its own whose registry holds only `tools`; its id and outcome."""
    conv = await conversations.create(
        pool, user_id=user.id, title=None, system_prompt=None, model=None, tools=None, metadata={}
    )
    async with pool.acquire() as conn, conn.transaction():
        started = await turns.start_turn(conn, user_id=user.id, conversation_id=conv.id, content=content)
    assert started is not None
    turn = started[1]
    local = settings.model_copy(update={"temporal_task_queue": f"loop-{uuid.uuid4().hex[:8]}"})
    async with build_worker(temporal, pool, local, ToolRegistry(tools)):
        outcome = await temporal.execute_workflow(
            WORKFLOW_NAME,
            turn_input(turn_id=turn.id, conversation_id=conv.id, user_id=user.id, settings=local),
            id=turn.id,
            task_queue=local.temporal_task_queue,
            result_type=TurnOutcome,
        )
    return turn.id, outcome


async def test_ungated_calls_run_in_parallel_and_feed_the_next_step(pool, temporal, settings, model, user):
    tag = marker()
    calls = [{"id": f"call_{i}", "name": "slow_echo", "arguments": {"text": f"t{i}"}} for i in range(3)]
    calls.append({"id": "call_fail", "name": "slow_echo", "arguments": {"text": "x", "fail": True}})
    model.script(tag, [{"kind": "tool_calls", "tool_calls": calls}, {"kind": "reply", "content": "echoed"}])
    echo = SlowEcho()
    began = time.monotonic()
    turn_id, outcome = await run_turn_with(pool, temporal, settings, user, [echo], f"echo {tag}")
    assert outcome.status == "completed"
    assert echo.most_at_once == 4, "the four calls of the step ran at the same time"
    assert time.monotonic() - began < 3.5, "four 1 s calls in parallel, not 4 s in a row"
    log = await events.read_after(pool, turn_id=turn_id, after=0)
    results = {e["tool_call_id"]: e for e in log if e["type"] == "tool_result"}
    assert {k: v["result"] for k, v in results.items() if v["status"] == "ok"} == {
        f"call_{i}": {"echo": f"t{i}", "call": f"call_{i}"} for i in range(3)
    }
    assert results["call_fail"]["status"] == "error"
    assert results["call_fail"]["error"]["code"] == "tool_failed"
    assert "collapsed" in results["call_fail"]["error"]["message"]
    offered = model.requests(tag)[0].body["tools"]
    assert [t["function"]["name"] for t in offered] == ["slow_echo"]
    told = [m for m in model.requests(tag)[-1].body["messages"] if m["role"] == "tool"]
    assert sorted(m["tool_call_id"] for m in told) == ["call_0", "call_1", "call_2", "call_fail"]
    assert log[-1]["type"] == "complete" and log[-1]["content"] == "echoed"


class Hostile:
    """A tool whose result holds what jsonb cannot store, beside text that only looks like it."""

    spec = ToolSpec(
        name="hostile",
        description="Return awkward text.",
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
    )

    def check(self, arguments: dict[str, Any]) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        return {"path": "C:\\u0000dir", "nul": "a\x00b", "lone": "x\ud800y", "k\x00ey": ["\udfff"]}


async def test_a_result_is_stored_without_nul_or_lone_surrogates_and_nothing_else_changes(
    pool, temporal, settings, model, user
):
    tag = marker()
    model.script(
        tag,
        [
            {"kind": "tool_calls", "tool_calls": [{"id": "call_h", "name": "hostile", "arguments": {}}]},
            {"kind": "reply", "content": "ok"},
        ],
    )
    turn_id, outcome = await run_turn_with(pool, temporal, settings, user, [Hostile()], tag)
    assert outcome.status == "completed"
    log = await events.read_after(pool, turn_id=turn_id, after=0)
    result = next(e for e in log if e["type"] == "tool_result")
    assert result["status"] == "ok"
    # A backslash followed by "u0000" is text, kept as it is; NUL goes, lone surrogates become U+FFFD.
    assert result["result"] == {"path": "C:\\u0000dir", "nul": "ab", "lone": "x\ufffdy", "key": ["\ufffd"]}


class Huge:
    """A tool that ignores every size limit: a 5 MB result, then a 5 MB error."""

    spec = ToolSpec(
        name="huge",
        description="Return far too much.",
        input_schema={
            "type": "object",
            "properties": {"fail": {"type": "boolean"}},
            "additionalProperties": False,
        },
    )

    def check(self, arguments: dict[str, Any]) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        if arguments.get("fail"):
            raise ToolFailed("tool_error", "E" * 5_000_000)
        return {"text": "x" * 5_000_000}


async def test_an_oversized_result_is_cut_to_valid_json_with_a_note(pool, temporal, settings, model, user):
    tag = marker()
    calls = [
        {"id": "call_ok", "name": "huge", "arguments": {}},
        {"id": "call_err", "name": "huge", "arguments": {"fail": True}},
    ]
    model.script(tag, [{"kind": "tool_calls", "tool_calls": calls}, {"kind": "reply", "content": "ok"}])
    turn_id, outcome = await run_turn_with(pool, temporal, settings, user, [Huge()], tag)
    assert outcome.status == "completed"
    log = await events.read_after(pool, turn_id=turn_id, after=0)
    results = {e["tool_call_id"]: e for e in log if e["type"] == "tool_result"}
    ok = results["call_ok"]["result"]
    assert ok["truncated"] is True and "5,000,012 characters" in ok["note"]
    assert ok["preview"].startswith('{"text": "xxx') and len(ok["preview"]) <= 50_000
    error = results["call_err"]["error"]
    assert error["code"] == "tool_error" and len(error["message"]) < 60_000
    told = [m["content"] for m in model.requests(tag)[-1].body["messages"] if m["role"] == "tool"]
    for content in told:
        assert len(content) <= 100_000
        json.loads(content)  # the model gets valid JSON, not a string cut mid-way
    history = await temporal.get_workflow_handle(turn_id).fetch_history()
    assert len(history.to_json()) < 200_000, "results live in PostgreSQL, not in the workflow history"
