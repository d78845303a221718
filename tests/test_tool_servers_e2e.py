"""Tool servers through whole turns: a worker with MCP_CONFIG naming a third-party stdio server
(mcp-server-time, from PyPI) and a streamable-HTTP server written with the MCP SDK; the API
lists their tools, the model calls them, destructive ones wait for approval, a server that
dies takes only its own tools down, and a changed definition stays disabled until trusted."""

import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from devstack import free_port
from store import users
from tests.conftest import ROOT, _serve, marker, subprocess_env
from tests.helpers import create_conversation, git_repository, read_sse, start_turn_json, wait_turn
from tests.mcpservers.process import HttpServerProcess
from tests.test_tool_server import tool_server_process, wait_healthy
from tools.registry import build_registry
from worker import build_worker, keep_catalog_fresh, publish_tools

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def lab() -> Iterator[HttpServerProcess]:
    server = HttpServerProcess().start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository with one commit, for mcp-server-git."""
    return git_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`assistant tool-server` (its simple HTTP tool protocol side), reading loopback pages."""
    port, key = free_port(), "legacy-key-for-tests"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/"),
        "PYTHONPATH": str(ROOT),
        "ASSISTANT_DATA_DIR": str(tmp_path_factory.mktemp("legacy")),
        "FETCH_ALLOW_PRIVATE_NETWORKS": "true",
        "TOOL_SERVER_KEY": key,
    }
    log = tmp_path_factory.mktemp("legacy-log") / "tool-server.log"
    previous = os.environ.get("LEGACY_TOOLS_KEY")
    os.environ["LEGACY_TOOLS_KEY"] = key  # MCP_CONFIG refers to it as ${LEGACY_TOOLS_KEY}
    try:
        with tool_server_process(env, log, "--port", str(port)) as proc:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, proc, log)
            yield url
    finally:
        if previous is None:
            os.environ.pop("LEGACY_TOOLS_KEY", None)
        else:
            os.environ["LEGACY_TOOLS_KEY"] = previous


@pytest.fixture(scope="module")
def mcp_config(
    lab: HttpServerProcess, repository: Path, legacy: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("mcp") / "mcp.json"
    path.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "time": {"command": str(BIN / "mcp-server-time"), "args": ["--local-timezone", "UTC"]},
                    "git": {
                        "command": str(BIN / "mcp-server-git"),
                        "args": ["--repository", str(repository)],
                    },
                    "lab": {"url": lab.url, "timeout": 3},
                    "legacy": {
                        "type": "http-tools",
                        "url": legacy,
                        "headers": {"Authorization": "Bearer ${LEGACY_TOOLS_KEY}"},
                    },
                },
                "requireConfirmation": ["lab__grow"],
            }
        )
    )
    return path


@pytest.fixture(scope="module")
async def served(settings, pool, temporal, mcp_config) -> AsyncIterator[dict[str, Any]]:
    """A worker with the tool servers and an API sending turns to it (a task queue of its own)."""
    local = settings.model_copy(
        update={"temporal_task_queue": f"mcp-{uuid.uuid4().hex[:8]}", "mcp_config": mcp_config}
    )
    registry = build_registry(local, pool, tool_servers=True)
    await registry.start()
    await publish_tools(pool, registry)
    keeper = asyncio.create_task(keep_catalog_fresh(pool, registry, every=1.0))
    port = free_port()
    async with build_worker(temporal, pool, local, registry):
        server, task = await _serve(create_app(local), port)
        try:
            yield {"url": f"http://127.0.0.1:{port}", "settings": local}
        finally:
            server.should_exit = True
            await task
    keeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await keeper
    await registry.aclose()


@pytest.fixture
async def client(served, pool) -> AsyncIterator[httpx.AsyncClient]:
    user = await users.create_user(pool, name="mcp-tester")
    key = await users.create_key(pool, user_id=user.id, name="test")
    async with httpx.AsyncClient(
        base_url=served["url"], headers={"Authorization": f"Bearer {key.secret}"}, timeout=60
    ) as http:
        yield http


async def tools_of(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    response = await client.get("/api/v1/tools")
    assert response.status_code == 200, response.text
    return {t["name"]: t for t in response.json()["data"]}


async def wait_for_tools(
    client: httpx.AsyncClient, check: Any, within: float = 45
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + within
    while True:
        tools = await tools_of(client)
        if check(tools) or time.monotonic() > deadline:
            return tools
        await asyncio.sleep(0.3)


async def call_in_turn(
    client: httpx.AsyncClient, model: Any, tool: str, arguments: dict[str, Any]
) -> tuple[list[dict[str, Any]], str]:
    """Start a turn whose model calls `tool`; its events until it ends or waits for approval."""
    tag = marker()
    model.script(
        tag,
        [
            {"kind": "tool_calls", "tool_calls": [{"id": "call_1", "name": tool, "arguments": arguments}]},
            {"kind": "reply", "content": f"done with {tool}"},
        ],
    )
    conversation = await create_conversation(client)
    events, _ = await read_sse(
        client, "POST", f"/api/v1/conversations/{conversation['id']}/messages", json={"content": tag}
    )
    return events, tag


def result_of(events: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in events if e["type"] == "tool_result")


async def test_third_party_stdio_server_answers_in_a_turn(client, model):
    tools = await tools_of(client)
    assert tools["time__get_current_time"]["healthy"] is True
    assert tools["time__get_current_time"]["source"] == "mcp:time"
    events, _ = await call_in_turn(client, model, "time__get_current_time", {"timezone": "UTC"})
    outcome = result_of(events)
    assert outcome["status"] == "ok", outcome
    text = json.dumps(outcome["result"])
    now = datetime.now(UTC)
    assert str(now.year) in text and "UTC" in text
    assert events[-1]["type"] == "complete" and events[-1]["content"] == "done with time__get_current_time"


async def test_a_second_third_party_server_in_a_turn_and_its_destructive_tool_is_gated(
    client, model, repository
):
    tools = await tools_of(client)
    assert tools["git__git_log"]["requires_confirmation"] is False
    assert tools["git__git_reset"]["requires_confirmation"] is True, "mcp-server-git declares it destructive"
    events, _ = await call_in_turn(client, model, "git__git_log", {"repo_path": str(repository)})
    outcome = result_of(events)
    assert outcome["status"] == "ok" and "the first commit" in json.dumps(outcome["result"])


async def test_a_simple_http_tool_server_in_a_turn(client, model, pages):
    tools = await tools_of(client)
    assert tools["legacy__fetch_page"]["source"] == "http:legacy" and tools["legacy__fetch_page"]["healthy"]
    pages.page("/legacy", "<html><head><title>Served by the tool server</title></head><body>hi</body></html>")
    events, _ = await call_in_turn(client, model, "legacy__fetch_page", {"url": pages.url("/legacy")})
    outcome = result_of(events)
    assert outcome["status"] == "ok", outcome
    assert outcome["result"]["title"] == "Served by the tool server"


async def test_http_server_tools_are_listed_and_called(client, model):
    tools = await tools_of(client)
    assert tools["lab__add"]["healthy"] and tools["lab__add"]["requires_confirmation"] is False
    assert tools["lab__delete_record"]["requires_confirmation"] is True, "destructiveHint"
    assert tools["lab__grow"]["requires_confirmation"] is True, "requireConfirmation pattern"
    events, _ = await call_in_turn(client, model, "lab__add", {"a": 2, "b": 40})
    outcome = result_of(events)
    assert outcome["status"] == "ok" and "42" in json.dumps(outcome["result"])


async def test_a_destructive_tool_waits_for_approval_then_runs(client, model):
    tag = marker()
    model.script(
        tag,
        [
            {
                "kind": "tool_calls",
                "tool_calls": [
                    {"id": "call_1", "name": "lab__delete_record", "arguments": {"record_id": "r-7"}}
                ],
            },
            {"kind": "reply", "content": "deleted"},
        ],
    )
    conversation = await create_conversation(client)
    turn_id = (await start_turn_json(client, conversation["id"], tag))["turn"]["id"]
    turn = await wait_turn(client, turn_id, until=("awaiting_approval",))
    assert turn["status"] == "awaiting_approval", turn
    (approval,) = turn["pending_approvals"]
    assert approval["tool"] == "lab__delete_record" and approval["arguments"] == {"record_id": "r-7"}
    assert approval["preview"] is None, "only an email has a message preview"
    decided = await client.post(f"/api/v1/approvals/{approval['id']}", json={"decision": "approve"})
    assert decided.status_code == 200, decided.text
    assert (await wait_turn(client, turn_id))["status"] == "completed"
    events, _ = await read_sse(client, "GET", f"/api/v1/turns/{turn_id}/events")
    types = [e["type"] for e in events]
    assert types.index("approval_required") < types.index("approval_decided") < types.index("tool_result")
    outcome = result_of(events)
    assert outcome["status"] == "ok" and "deleted r-7" in json.dumps(outcome["result"])


async def test_a_hanging_tool_times_out_with_a_clear_error(client, model):
    started = time.monotonic()
    events, _ = await call_in_turn(client, model, "lab__hang", {})
    outcome = result_of(events)
    assert outcome["status"] == "error" and outcome["error"]["code"] == "tool_timeout", outcome
    assert "3" in outcome["error"]["message"]
    assert time.monotonic() - started < 30 and events[-1]["type"] == "complete"


async def test_a_huge_result_is_truncated_with_a_note(client, model, temporal):
    events, _ = await call_in_turn(client, model, "lab__big", {})
    outcome = result_of(events)
    assert outcome["status"] == "ok"
    text = json.dumps(outcome["result"])
    assert len(text) < 100_000 and "truncated" in text
    history = await temporal.get_workflow_handle(events[0]["turn_id"]).fetch_history()
    assert len(history.to_json()) < 200_000, "the result is not in the workflow history"


async def test_a_dead_server_takes_only_its_tools_down_and_they_come_back(client, model, lab):
    lab.kill()
    tools = await wait_for_tools(client, lambda t: not t["lab__add"]["healthy"])
    assert tools["lab__add"]["healthy"] is False and tools["lab__add"]["problem"]
    assert tools["time__get_current_time"]["healthy"] is True
    events, tag = await call_in_turn(client, model, "time__get_current_time", {"timezone": "UTC"})
    assert result_of(events)["status"] == "ok", "other servers' tools keep working"
    offered = [t["function"]["name"] for t in model.requests(tag)[0].body["tools"]]
    assert "lab__add" not in offered and "time__get_current_time" in offered
    await asyncio.to_thread(lab.start)
    tools = await wait_for_tools(client, lambda t: t["lab__add"]["healthy"])
    assert tools["lab__add"]["healthy"] is True, tools["lab__add"]
    events, _ = await call_in_turn(client, model, "lab__add", {"a": 1, "b": 1})
    assert result_of(events)["status"] == "ok"


async def test_a_changed_definition_is_disabled_until_trusted(client, model, lab, settings, served):
    lab.kill()
    await asyncio.to_thread(lab.start, "v2")  # `add` now has another description
    tools = await wait_for_tools(client, lambda t: "trust" in (t["lab__add"].get("problem") or ""))
    assert (
        tools["lab__add"]["healthy"] is False and "assistant tools trust lab" in tools["lab__add"]["problem"]
    )
    assert tools["lab__delete_record"]["healthy"] is True, "unchanged tools stay usable"
    events, _ = await call_in_turn(client, model, "lab__add", {"a": 1, "b": 2})
    assert result_of(events)["error"]["code"] == "tool_disabled"
    trust = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        "tools",
        "trust",
        "lab",
        env=subprocess_env(settings),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(trust.communicate(), 60)
    assert trust.returncode == 0, err.decode()
    assert "lab__add" in out.decode()
    tools = await wait_for_tools(client, lambda t: t["lab__add"]["healthy"])
    assert tools["lab__add"]["healthy"] is True and tools["lab__add"]["description"].endswith("more care.")
