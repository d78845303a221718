"""The MCP client side: MCP_CONFIG parsing, long-lived sessions with real servers over stdio and
streamable HTTP (the third-party mcp-server-time and mcp-server-git, and the SDK-built
servers in tests/mcpservers), and the conversion of results."""

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from mcp.types import (
    AudioContent,
    BlobResourceContents,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
)

from core.errors import ConfigurationError
from tests.helpers import git_repository
from tests.mcpservers.process import ROOT, HttpServerProcess
from tests.mcpservers.toolbox import PIXEL_PNG
from tools.base import ToolFailed, ToolTemporarilyFailed
from tools.mcp_config import McpConfig, ServerConfig, load_mcp_config
from tools.mcp_results import compact_result
from tools.mcp_session import McpConnection, declares_destructive

VENV_BIN = Path(sys.executable).parent
STDIO_SERVER = ["-m", "tests.mcpservers.stdio_server"]


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not become true in time")
        await asyncio.sleep(0.05)


def stdio_config(
    name: str, *args: str, timeout: float = 5.0, env: dict[str, str] | None = None
) -> ServerConfig:
    return ServerConfig(
        name=name,
        kind="stdio",
        command=sys.executable,
        args=[*STDIO_SERVER, *args],
        env=env or {},
        cwd=str(ROOT),
        timeout=timeout,
    )


def server_processes(marker: str) -> list[psutil.Process]:
    """Our descendants whose command line contains `marker`."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if any(marker in part for part in child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


# --- MCP_CONFIG -------------------------------------------------------------------------------


def write_config(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def test_config_reads_every_server_shape(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        {
            "mcpServers": {
                "files": {"command": "npx", "args": ["-y", "some-mcp-server"], "env": {"ROOT": "/srv"}},
                "crm": {
                    "url": "https://crm.example/mcp",
                    "headers": {"Authorization": "Bearer t"},
                    "timeout": 5,
                },
                "legacy": {"type": "http-tools", "url": "http://tools.internal:9000"},
                "typed-stdio": {"type": "stdio", "command": "server"},
                "typed-http": {"type": "streamable-http", "url": "http://127.0.0.1:1/mcp"},
                "plain_http": {"type": "http", "url": "http://127.0.0.1:2/mcp"},
                "off": {"command": "server", "enabled": False, "env": {"TOKEN": "${UNSET_TOKEN}"}},
                "off-too": {"command": "server", "disabled": True},
            },
            "requireConfirmation": ["crm__create_*"],
        },
    )
    config = load_mcp_config(path, environ={})
    by_name = {server.name: server for server in config.servers}
    assert sorted(by_name) == ["crm", "files", "legacy", "plain_http", "typed-http", "typed-stdio"]
    files = by_name["files"]
    assert (files.kind, files.command, files.args, files.env, files.timeout) == (
        "stdio",
        "npx",
        ["-y", "some-mcp-server"],
        {"ROOT": "/srv"},
        60.0,
    )
    crm = by_name["crm"]
    assert (crm.kind, crm.url, crm.headers, crm.timeout) == (
        "http",
        "https://crm.example/mcp",
        {"Authorization": "Bearer t"},
        5.0,
    )
    assert "Bearer" not in repr(crm)  # headers hold tokens: never in a log line
    assert by_name["legacy"].kind == "http-tools"
    assert by_name["typed-stdio"].kind == "stdio"
    assert by_name["typed-http"].kind == by_name["plain_http"].kind == "http"
    assert config.requires_confirmation("crm__create_deal")
    assert not config.requires_confirmation("crm__list_deals")
    assert not config.requires_confirmation("CRM__create_deal")
    assert McpConfig.empty().servers == [] and not McpConfig.empty().requires_confirmation("x__y")


def test_config_expands_environment_variables(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    path = write_config(
        tmp_path,
        {
            "mcpServers": {
                "files": {
                    "command": "${BIN}/server",
                    "args": ["--root", "${ROOT:-/default/root}", "--mode=${MODE:-fast}"],
                    "env": {"TOKEN": "${FILES_TOKEN}"},
                    "cwd": "${WORKDIR}",
                },
                "crm": {
                    "url": "https://${CRM_HOST}/mcp",
                    "headers": {"Authorization": "Bearer ${CRM_TOKEN}"},
                },
            }
        },
    )
    environ = {
        "BIN": "/opt/bin",
        "MODE": "",  # empty takes the default, as in a shell
        "FILES_TOKEN": "f-secret",
        "WORKDIR": "work",  # relative to the file's directory
        "CRM_HOST": "crm.example",
        "CRM_TOKEN": "c-secret",
    }
    files, crm = load_mcp_config(path, environ=environ).servers
    assert files.command == "/opt/bin/server"
    assert files.args == ["--root", "/default/root", "--mode=fast"]
    assert files.env == {"TOKEN": "f-secret"}
    assert files.cwd == str(tmp_path / "work")
    assert crm.url == "https://crm.example/mcp"
    assert crm.headers == {"Authorization": "Bearer c-secret"}


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("{not json", "is not valid JSON"),
        ([], "must be a JSON object"),
        ({}, "mcpServers: must be an object"),
        ({"mcpServers": {}, "servers": {}}, "servers: unknown key"),
        ({"mcpServers": {"a__b": {"command": "x"}}}, "mcpServers.a__b: server names"),
        ({"mcpServers": {"has space": {"command": "x"}}}, "server names are 1-40"),
        ({"mcpServers": {"x" * 41: {"command": "x"}}}, "server names are 1-40"),
        ({"mcpServers": {"": {"command": "x"}}}, "server names are 1-40"),
        ({"mcpServers": {"s": "npx server"}}, "mcpServers.s: must be an object"),
        ({"mcpServers": {"s": {"comand": "x"}}}, "mcpServers.s: needs a command"),
        ({"mcpServers": {"s": {"command": "x", "comand": "y"}}}, "mcpServers.s.comand: unknown key"),
        ({"mcpServers": {"s": {"command": "x", "url": "http://a/"}}}, "has both command"),
        ({"mcpServers": {"s": {"command": "x", "headers": {}}}}, "s.headers: unknown key for a stdio server"),
        ({"mcpServers": {"s": {"url": "http://a/", "args": []}}}, "s.args: unknown key for a http server"),
        ({"mcpServers": {"s": {"type": "sse", "url": "http://a/sse"}}}, "SSE transport"),
        ({"mcpServers": {"s": {"type": "websocket", "url": "ws://a/"}}}, "s.type: unknown type"),
        ({"mcpServers": {"s": {"type": "stdio", "url": "http://a/"}}}, "s.url: unknown key for a stdio"),
        ({"mcpServers": {"s": {"command": ""}}}, "s.command: must not be empty"),
        ({"mcpServers": {"s": {"type": "stdio"}}}, "s.command: is required"),
        ({"mcpServers": {"s": {"command": "x", "enabled": False, "comand": "y"}}}, "s.comand: unknown key"),
        ({"mcpServers": {"s": {"command": ["npx"]}}}, "s.command: must be a string"),
        ({"mcpServers": {"s": {"command": "x", "args": "-y"}}}, "s.args: must be a list"),
        ({"mcpServers": {"s": {"command": "x", "args": [1]}}}, "s.args[0]: must be a string"),
        ({"mcpServers": {"s": {"command": "x", "env": {"N": 1}}}}, "s.env.N: must be a string"),
        ({"mcpServers": {"s": {"command": "x", "cwd": "/no/such/dir"}}}, "is not a directory"),
        ({"mcpServers": {"s": {"command": "x", "timeout": 0}}}, "s.timeout: must be a number"),
        ({"mcpServers": {"s": {"command": "x", "timeout": True}}}, "s.timeout: must be a number"),
        ({"mcpServers": {"s": {"command": "x", "timeout": "60"}}}, "s.timeout: must be a number"),
        ({"mcpServers": {"s": {"command": "x", "enabled": "no"}}}, "s.enabled: must be true or false"),
        ({"mcpServers": {"s": {"url": "ftp://a/"}}}, "s.url: must be an http:// or https:// URL"),
        ({"mcpServers": {"s": {"url": "http:///mcp"}}}, "s.url: must be an http:// or https:// URL"),
        ({"mcpServers": {"s": {"type": "http-tools"}}}, "s.url: is required"),
        ({"mcpServers": {"s": {"url": "http://a/", "headers": ["x"]}}}, "s.headers: must be an object"),
        ({"mcpServers": {}, "requireConfirmation": "crm__*"}, "requireConfirmation: must be a list"),
        ({"mcpServers": {"s": {"command": "${UNSET_VARIABLE}"}}}, "variable UNSET_VARIABLE is not set"),
        ({"mcpServers": {"s": {"command": "x${BROKEN"}}}, "malformed variable reference"),
    ],
)
def test_config_refuses_mistakes_with_a_clear_message(tmp_path: Path, document: Any, expected: str) -> None:
    path = write_config(tmp_path, document)
    with pytest.raises(ConfigurationError) as caught:
        load_mcp_config(path, environ={})
    assert expected in caught.value.message
    assert str(path) in caught.value.message


def test_config_errors_name_the_variable_never_a_header_value(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        {
            "mcpServers": {
                "crm": {"url": "https://crm.example/mcp", "headers": {"X-Key": "s3cret-${CRM_TOKEN}"}}
            }
        },
    )
    with pytest.raises(ConfigurationError) as caught:
        load_mcp_config(path, environ={})
    message = caught.value.message
    assert "mcpServers.crm.headers.X-Key" in message and "CRM_TOKEN" in message
    assert "s3cret" not in message


def test_config_file_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot be read"):
        load_mcp_config(tmp_path / "missing.json", environ={})


# --- results -----------------------------------------------------------------------------------


def test_result_prefers_structured_content_and_references_media() -> None:
    audio = base64.b64encode(b"\x00" * 3000).decode()
    result = CallToolResult(
        content=[
            TextContent(text='{"temperature": 21}'),
            ImageContent(data=base64.b64encode(PIXEL_PNG).decode(), mime_type="image/png"),
            AudioContent(data=audio, mime_type="audio/wav"),
            EmbeddedResource(
                resource=TextResourceContents(uri="file:///notes.txt", mime_type="text/plain", text="hi")
            ),
            EmbeddedResource(resource=BlobResourceContents(uri="file:///a.bin", blob=audio)),
            ResourceLink(uri="file:///big.csv", name="big.csv"),
        ],
        structured_content={"temperature": 21},
    )
    compact = compact_result(result)
    assert compact == {
        "structured": {"temperature": 21},
        "items": [
            {"type": "image", "mime_type": "image/png", "bytes": len(PIXEL_PNG)},
            {"type": "audio", "mime_type": "audio/wav", "bytes": 3000},
            {"type": "resource", "uri": "file:///notes.txt", "mime_type": "text/plain", "text": "hi"},
            {"type": "resource", "uri": "file:///a.bin", "bytes": 3000},
            {"type": "resource_link", "uri": "file:///big.csv", "name": "big.csv"},
        ],
    }


def test_result_joins_text_and_makes_it_storable() -> None:
    result = CallToolResult(content=[TextContent(text="line one\x00"), TextContent(text="two \ud800 three")])
    assert compact_result(result) == {"content": "line one\ntwo \ufffd three"}
    assert compact_result(CallToolResult(content=[])) == {"content": ""}
    assert compact_result(CallToolResult(content=[], structured_content={"v": float("nan")})) == {
        "structured": {"v": None}
    }


def test_error_result_is_a_tool_failure_with_its_text() -> None:
    result = CallToolResult(content=[TextContent(text="the record is locked " * 1000)], is_error=True)
    with pytest.raises(ToolFailed) as caught:
        compact_result(result)
    assert caught.value.code == "tool_error"
    assert caught.value.message.startswith("the record is locked")
    assert len(caught.value.message) <= 4_000


@pytest.mark.parametrize("structured", [False, True])
def test_huge_result_is_cut_under_the_limit_with_a_note(structured: bool) -> None:
    text = 'quote " and newline\n' * 250_000  # 5 MB, and longer still as JSON
    result = CallToolResult(
        content=[TextContent(text=text), ImageContent(data="aGk=", mime_type="image/gif")],
        structured_content={"result": text} if structured else None,
    )
    compact = compact_result(result, max_chars=60_000)
    encoded = json.dumps(compact, ensure_ascii=False)
    assert len(encoded) <= 60_000
    assert compact["truncated"] is True
    assert compact["content"].startswith('quote " and newline\nquote')
    assert f"of {len(text):,} characters" in compact["note"]
    assert compact["items"] == [{"type": "image", "mime_type": "image/gif", "bytes": 2}]


def test_destructive_follows_the_declared_annotations() -> None:
    assert declares_destructive({"destructiveHint": True})
    assert declares_destructive({"readOnlyHint": False})  # the spec's default: destructive
    assert declares_destructive({"readOnlyHint": True, "destructiveHint": True})  # contradictory: ask
    assert not declares_destructive({})  # declares nothing
    assert not declares_destructive({"title": "Adder"})
    assert not declares_destructive({"readOnlyHint": True})
    assert not declares_destructive({"readOnlyHint": False, "destructiveHint": False})


# --- third-party stdio servers -----------------------------------------------------------------


async def test_time_server_lists_and_answers() -> None:
    connection = McpConnection(
        ServerConfig(
            name="time",
            kind="stdio",
            command=str(VENV_BIN / "mcp-server-time"),
            args=["--local-timezone", "UTC"],
        )
    )
    try:
        await connection.start()
        assert connection.healthy and connection.problem is None
        tools = {tool.name: tool for tool in connection.tools()}
        assert set(tools) == {"get_current_time", "convert_time"}
        current = tools["get_current_time"]
        assert current.qualified_name == "time__get_current_time"
        assert current.input_schema["required"] == ["timezone"]
        assert current.input_schema["properties"]["timezone"]["type"] == "string"
        assert current.annotations["readOnlyHint"] is True and not current.destructive
        result = await connection.call("get_current_time", {"timezone": "UTC"})
        answered = datetime.fromisoformat(result["structured"]["datetime"])
        assert abs((answered - datetime.now(UTC)).total_seconds()) < 120
        assert result["structured"]["timezone"] == "UTC"
        with pytest.raises(ToolFailed) as caught:
            await connection.call("get_current_time", {"timezone": "Mars/Olympus_Mons"})
        assert caught.value.code == "tool_error"
    finally:
        await connection.aclose()


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    return git_repository(tmp_path)


async def test_git_server_lists_and_answers(repository: Path) -> None:
    connection = McpConnection(
        ServerConfig(
            name="git",
            kind="stdio",
            command=str(VENV_BIN / "mcp-server-git"),
            args=["--repository", str(repository)],
        )
    )
    try:
        await connection.start()
        assert connection.healthy, connection.problem
        tools = {tool.name: tool for tool in connection.tools()}
        assert tools["git_reset"].destructive and not tools["git_log"].destructive
        result = await connection.call("git_log", {"repo_path": str(repository)})
        assert "the first commit" in json.dumps(result)
    finally:
        await connection.aclose()


async def test_server_that_exits_at_start_is_reported_with_its_reason() -> None:
    crash = "import sys; sys.stderr.write('ModuleNotFoundError: no module named fastmcp\\n'); sys.exit(3)"
    connection = McpConnection(
        ServerConfig(name="calc", kind="stdio", command=sys.executable, args=["-c", crash])
    )
    try:
        started = time.monotonic()
        await connection.start()
        assert time.monotonic() - started < 5
        assert not connection.healthy and connection.tools() == []
        assert connection.problem is not None
        assert connection.problem.startswith("the server process exited: ModuleNotFoundError")
        with pytest.raises(ToolTemporarilyFailed, match="the tool server calc is unavailable"):
            await connection.call("calculate", {"expression": "1+1"})
    finally:
        await connection.aclose()


async def test_missing_command_is_a_clear_problem_not_an_error() -> None:
    connection = McpConnection(ServerConfig(name="nope", kind="stdio", command="no-such-mcp-server-anywhere"))
    try:
        started = time.monotonic()
        await connection.start()
        assert time.monotonic() - started < 1
        assert not connection.healthy
        assert connection.problem == "command not found: no-such-mcp-server-anywhere"
    finally:
        await connection.aclose()


# --- the SDK-built test server over streamable HTTP --------------------------------------------


@pytest.fixture(scope="module")
def http_server() -> Iterator[HttpServerProcess]:
    server = HttpServerProcess().start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
async def http_connection(http_server: HttpServerProcess) -> AsyncIterator[McpConnection]:
    connection = McpConnection(ServerConfig(name="testhttp", kind="http", url=http_server.url, timeout=2.0))
    await connection.start()
    try:
        yield connection
    finally:
        await connection.aclose()


async def test_http_tools_are_listed_with_their_annotations(http_connection: McpConnection) -> None:
    assert http_connection.healthy
    tools = {tool.name: tool for tool in http_connection.tools()}
    assert {"add", "delete_record", "slow", "hang", "big", "fail", "image", "grow"} <= set(tools)
    assert tools["add"].description == "Adds two integers."
    assert tools["add"].input_schema["required"] == ["a", "b"]
    assert tools["add"].annotations == {"readOnlyHint": True}
    assert not tools["add"].destructive
    assert tools["delete_record"].destructive
    assert tools["delete_record"].annotations == {"readOnlyHint": False, "destructiveHint": True}
    assert not tools["slow"].destructive  # no annotations: declares nothing


async def test_http_calls_answer_concurrently(http_connection: McpConnection) -> None:
    assert await http_connection.call("add", {"a": 2, "b": 3}) == {"structured": {"result": 5}}
    started = time.monotonic()
    answers = await asyncio.gather(*(http_connection.call("slow", {"seconds": 0.5}) for _ in range(5)))
    assert time.monotonic() - started < 2.0  # one session, five requests in flight at once
    assert answers == [{"structured": {"result": "slept 0.5"}}] * 5


@pytest.mark.parametrize("tool", ["slow", "hang"])
async def test_http_call_that_outlasts_its_timeout(http_connection: McpConnection, tool: str) -> None:
    before = (await http_connection.call("cancelled_calls", {}))["structured"]["result"]
    started = time.monotonic()
    with pytest.raises(ToolFailed) as caught:
        await http_connection.call(tool, {"seconds": 30} if tool == "slow" else {})
    assert 2.0 <= time.monotonic() - started < 3.5
    assert caught.value.code == "tool_timeout"
    assert caught.value.message == f"testhttp did not answer {tool} within 2 s"
    # The session goes on, and the server was told to stop the call.
    assert await http_connection.call("add", {"a": 1, "b": 1}) == {"structured": {"result": 2}}
    if tool == "hang":

        async def cancelled() -> int:
            return int((await http_connection.call("cancelled_calls", {}))["structured"]["result"])

        for _ in range(50):
            if await cancelled() > before:
                break
            await asyncio.sleep(0.1)
        assert await cancelled() == before + 1


async def test_http_huge_result_is_cut(http_connection: McpConnection) -> None:
    result = await http_connection.call("big", {})
    assert len(json.dumps(result, ensure_ascii=False)) < 60_000
    assert result["truncated"] is True
    assert result["content"].startswith("0123456789abcdef")
    assert "of 5,000,000 characters" in result["note"]


async def test_http_tool_error_is_a_failure_for_the_model(http_connection: McpConnection) -> None:
    with pytest.raises(ToolFailed) as caught:
        await http_connection.call("fail", {})
    assert caught.value.code == "tool_error"
    assert "the record is locked by another user" in caught.value.message
    with pytest.raises(ToolFailed) as unknown:
        await http_connection.call("no_such_tool", {})
    assert unknown.value.code == "tool_error"


async def test_http_image_is_a_reference_without_its_data(http_connection: McpConnection) -> None:
    result = await http_connection.call("image", {})
    assert result == {
        "content": "a single pixel",
        "items": [{"type": "image", "mime_type": "image/png", "bytes": len(PIXEL_PNG)}],
    }
    assert base64.b64encode(PIXEL_PNG).decode() not in json.dumps(result)


async def test_http_tool_list_change_is_followed(http_connection: McpConnection) -> None:
    changes: list[set[str]] = []
    http_connection.on_change(lambda: changes.append({tool.name for tool in http_connection.tools()}))
    await http_connection.call("grow", {"name": "echo_grown"})
    await eventually(lambda: any("echo_grown" in names for names in changes), within=5)
    assert await http_connection.call("echo_grown", {"text": "hello"}) == {"structured": {"result": "hello"}}


async def test_http_server_killed_and_restarted(http_connection: McpConnection) -> None:
    server = HttpServerProcess().start()
    connection = McpConnection(
        ServerConfig(name="restarts", kind="http", url=server.url, timeout=2.0), ping_interval=0.3
    )
    health: list[bool] = []
    connection.on_change(lambda: health.append(connection.healthy))
    try:
        await connection.start()
        assert connection.healthy and health == [True]
        server.kill()
        await eventually(lambda: not connection.healthy, within=5)
        assert connection.problem is not None
        assert connection.problem.startswith(f"cannot connect to http://127.0.0.1:{server.port}")
        assert "connection refused" in connection.problem
        assert health[-1] is False
        with pytest.raises(ToolTemporarilyFailed, match="the tool server restarts is unavailable"):
            await connection.call("add", {"a": 1, "b": 2})
        # Other connections do not notice.
        assert http_connection.healthy
        assert await http_connection.call("add", {"a": 1, "b": 2}) == {"structured": {"result": 3}}
        # Back on the same port, with a new description for `add`: the same connection
        # reconnects and lists the tools again.
        server.start(variant="v2")
        await eventually(lambda: connection.healthy, within=10)
        assert health[-1] is True
        add = next(tool for tool in connection.tools() if tool.name == "add")
        assert add.description == "Adds two integers, now with more care."
        assert await connection.call("add", {"a": 1, "b": 2}) == {"structured": {"result": 3}}
    finally:
        await connection.aclose()
        server.kill()


async def test_http_call_to_a_server_that_just_died_is_temporary() -> None:
    # Pings far apart: the call is the first to find the server gone. Its request could not
    # even connect, so it never ran, and trying again later is safe.
    server = HttpServerProcess().start()
    connection = McpConnection(ServerConfig(name="dies", kind="http", url=server.url), ping_interval=600)
    try:
        await connection.start()
        assert connection.healthy
        server.kill()
        with pytest.raises(ToolTemporarilyFailed, match="the tool server dies is unavailable"):
            await connection.call("add", {"a": 1, "b": 2})
        await eventually(lambda: not connection.healthy, within=5)
    finally:
        await connection.aclose()
        server.kill()


async def test_http_call_in_flight_when_the_server_dies_is_not_retried() -> None:
    server = HttpServerProcess().start()
    connection = McpConnection(ServerConfig(name="midcall", kind="http", url=server.url), ping_interval=600)
    try:
        await connection.start()
        call = asyncio.create_task(connection.call("slow", {"seconds": 30}))
        await asyncio.sleep(0.5)  # the request is with the server
        server.kill()
        with pytest.raises(ToolFailed) as caught:
            await call
        assert caught.value.code == "tool_server_disconnected"
        assert caught.value.message.startswith("the connection to midcall was lost during slow")
    finally:
        await connection.aclose()
        server.kill()


async def test_http_server_restarted_between_pings_forgets_the_session() -> None:
    server = HttpServerProcess().start()
    connection = McpConnection(ServerConfig(name="forgets", kind="http", url=server.url), ping_interval=600)
    health: list[bool] = []
    connection.on_change(lambda: health.append(connection.healthy))
    try:
        await connection.start()
        assert health == [True]
        server.kill()
        server.start()
        # The new process refuses the old session's request unseen (HTTP 404): safe to retry,
        # and the connection opens a new session at once.
        with pytest.raises(ToolTemporarilyFailed, match="the tool server forgets ended the session"):
            await connection.call("add", {"a": 1, "b": 2})
        await eventually(lambda: health == [True, False, True], within=10)
        assert await connection.call("add", {"a": 1, "b": 2}) == {"structured": {"result": 3}}
    finally:
        await connection.aclose()
        server.kill()


async def test_http_headers_are_sent_and_a_refusal_is_explained() -> None:
    server = HttpServerProcess().start(token="t0k3n")
    authed = McpConnection(
        ServerConfig(name="authed", kind="http", url=server.url, headers={"Authorization": "Bearer t0k3n"})
    )
    refused = McpConnection(ServerConfig(name="refused", kind="http", url=server.url + "?key=secret"))
    try:
        await asyncio.gather(authed.start(), refused.start())
        assert await authed.call("authorization", {}) == {"structured": {"result": "Bearer t0k3n"}}
        assert refused.problem == f"HTTP 401 from http://127.0.0.1:{server.port}"
    finally:
        await asyncio.gather(authed.aclose(), refused.aclose())
        server.kill()


async def test_http_server_that_is_down_at_start() -> None:
    server = HttpServerProcess()  # its port, nothing listening
    connection = McpConnection(ServerConfig(name="later", kind="http", url=server.url))
    try:
        started = time.monotonic()
        await connection.start()
        assert time.monotonic() - started < 2
        assert not connection.healthy
        assert connection.problem is not None and "connection refused" in connection.problem
        server.start()
        await eventually(lambda: connection.healthy, within=10)
        assert "add" in {tool.name for tool in connection.tools()}
    finally:
        await connection.aclose()
        server.kill()


# --- the SDK-built test server over stdio ------------------------------------------------------


async def test_stdio_server_gets_only_a_safe_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:secret@db/app")
    monkeypatch.setenv("SMTP_PASSWORD", "secret")
    connection = McpConnection(stdio_config("envcheck", env={"TEST_SERVER_SETTING": "on"}))
    try:
        await connection.start()
        assert connection.healthy
        names = set((await connection.call("environment", {}))["structured"]["names"])
        assert "TEST_SERVER_SETTING" in names and "PATH" in names
        assert not names & {"DATABASE_URL", "SMTP_PASSWORD"}
    finally:
        await connection.aclose()


async def test_stdio_hanging_call_is_cancelled_on_timeout() -> None:
    connection = McpConnection(stdio_config("stdiohang", timeout=1.0))
    try:
        await connection.start()
        started = time.monotonic()
        with pytest.raises(ToolFailed) as caught:
            await connection.call("hang", {})
        assert 1.0 <= time.monotonic() - started < 2.5
        assert caught.value.code == "tool_timeout"
        await asyncio.sleep(0.2)
        assert await connection.call("cancelled_calls", {}) == {"structured": {"result": 1}}
    finally:
        await connection.aclose()


async def test_stdio_server_crash_mid_call_then_restart() -> None:
    connection = McpConnection(stdio_config("crashes"))
    try:
        await connection.start()
        first = {process.pid for process in server_processes("stdio_server")}
        with pytest.raises(ToolFailed) as caught:
            await connection.call("crash", {})
        # It ran, or may have: never retried on its own.
        assert caught.value.code == "tool_server_disconnected"
        await eventually(lambda: not connection.healthy, within=5)
        assert connection.problem == "the server process exited: test stdio server starting"
        await eventually(lambda: connection.healthy, within=10)
        assert await connection.call("add", {"a": 2, "b": 2}) == {"structured": {"result": 4}}
        assert not first & {process.pid for process in server_processes("stdio_server")}
    finally:
        await connection.aclose()


async def test_every_page_of_tools_is_listed() -> None:
    config = ServerConfig(
        name="paged",
        kind="stdio",
        command=sys.executable,
        args=["-m", "tests.mcpservers.paged_server", "--tools", "250"],
        cwd=str(ROOT),
    )
    connection = McpConnection(config)
    try:
        await connection.start()
        names = [tool.name for tool in connection.tools()]
        assert names == [f"tool_{i:03d}" for i in range(250)]
        assert await connection.call("tool_249", {}) == {"content": "tool_249 ran"}
    finally:
        await connection.aclose()


async def test_server_that_never_answers_the_handshake() -> None:
    # A real process that reads nothing and answers nothing (and ignores the end of its stdin).
    config = ServerConfig(name="silent", kind="stdio", command="sleep", args=["300"])
    connection = McpConnection(config, handshake_timeout=1.0)
    try:
        started = time.monotonic()
        await connection.start()
        assert time.monotonic() - started < 2.5
        assert connection.problem == "the server did not complete the handshake within 1 s"
    finally:
        await connection.aclose()
    assert server_processes("300") == []


async def test_aclose_leaves_no_child_process() -> None:
    connections = [
        McpConnection(stdio_config("closeme")),
        McpConnection(stdio_config("closeme-too", "--linger")),
        McpConnection(ServerConfig(name="time", kind="stdio", command=str(VENV_BIN / "mcp-server-time"))),
    ]
    await asyncio.gather(*(connection.start() for connection in connections))
    assert all(connection.healthy for connection in connections)
    children = server_processes("stdio_server") + server_processes("mcp-server-time")
    assert len(children) == 3
    started = time.monotonic()
    await asyncio.gather(*(connection.aclose() for connection in connections))
    assert time.monotonic() - started < 8  # the lingering one needs SIGTERM after a 2 s grace
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE for child in children)
    assert server_processes("stdio_server") == [] and server_processes("mcp-server-time") == []


_WORKER = """
import asyncio, sys, psutil
from tools.mcp_config import ServerConfig
from tools.mcp_session import McpConnection

async def main():
    config = ServerConfig(name="orphan", kind="stdio", command=sys.executable,
                          args=["-m", "tests.mcpservers.stdio_server", "--linger"])
    connection = McpConnection(config)
    await connection.start()
    assert connection.healthy
    print("PIDS", *[p.pid for p in psutil.Process().children(recursive=True)], flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


def test_stdio_server_dies_with_a_killed_worker() -> None:
    # The server ignores the end of its stdin (--linger): only the kernel's death signal ends it.
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert worker.stdout is not None
        line = b""
        while not line.startswith(b"PIDS"):
            line = worker.stdout.readline()
            assert line, "the worker ended early"
        children = [psutil.Process(int(pid)) for pid in line.split()[1:]]
        assert children
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        _, alive = psutil.wait_procs(children, timeout=5)
        assert alive == []
    finally:
        worker.kill()
        worker.wait()
