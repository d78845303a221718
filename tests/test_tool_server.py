"""`assistant tool-server` as an operator runs it: a real child process, reached by the official
MCP client (over streamable HTTP and over stdio) and by plain HTTP for the simple tool protocol.
fetch_page reads a page served on loopback (FETCH_ALLOW_PRIVATE_NETWORKS=true); SMTP points at
a recording mail server, so send_email is listed, and the test can tell that nothing was sent."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TextIO

import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from devstack import free_port
from tests.mailserver import MailServer
from tests.pageserver import PageServer
from tools.fetch_page import FETCH_PAGE_SCHEMA

ROOT = Path(__file__).resolve().parent.parent
KEY = "tool-server-test-key"
PAGE = (
    "<!doctype html><html><head><title>Lighthouse keeping</title></head><body><article>"
    "<h1>Lighthouse keeping</h1><p>The lamp is lit at dusk and trimmed every four hours.</p>"
    "</article></body></html>"
)
EMAIL = {"to": "someone@example.test", "subject": "Tool server test", "body": "<p>Hello</p>"}


@pytest.fixture(scope="module")
def page_url() -> Iterator[str]:
    with PageServer() as server:
        server.page("/lighthouse", PAGE)
        yield server.url("/lighthouse")


@pytest.fixture(scope="module")
def outbox() -> Iterator[MailServer]:
    server = MailServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server_env(outbox: MailServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A clean environment: only these settings, so no other tool is configured by accident."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/"),
        "PYTHONPATH": str(ROOT),
        "ASSISTANT_DATA_DIR": str(tmp_path_factory.mktemp("tool-server")),
        "LOG_FORMAT": "json",
        "FETCH_ALLOW_PRIVATE_NETWORKS": "true",
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(outbox.port),
        "SMTP_TLS": "none",
        "SMTP_FROM": "Assistant <assistant@example.test>",
    }


@contextlib.contextmanager
def tool_server_process(env: dict[str, str], log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`assistant tool-server ARGS`, interrupted (then killed) at the end if still running."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "tool-server", *args], env=env, cwd=ROOT, stdout=out, stderr=out
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"tool-server exited with {proc.returncode}:\n{log.read_text()}"
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"tool-server did not start:\n{log.read_text()}")


@pytest.fixture(scope="module")
def server_url(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("tool-server-log") / "tool-server.log"
    with tool_server_process(
        {**server_env, "TOOL_SERVER_KEY": KEY}, log, "--host", "127.0.0.1", "--port", str(port)
    ) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, log)
        yield url


@pytest.fixture
async def api(server_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=server_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
    ) as client:
        yield client


@contextlib.asynccontextmanager
async def mcp_over_http(server_url: str, mode: str = "auto") -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as http,
        Client(streamable_http_client(f"{server_url}/mcp", http_client=http), mode=mode) as client,
    ):
        yield client


def assert_read_the_page(result: Any, page_url: str) -> None:
    assert not result.is_error, result
    page = result.structured_content
    assert page["title"] == "Lighthouse keeping"
    assert "trimmed every four hours" in page["content"]
    assert page["final_url"] == page_url and page["status"] == 200
    assert json.loads(result.content[0].text) == page


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_mcp_client_lists_and_calls_fetch_page_over_http(server_url: str, page_url: str, mode: str):
    """Both protocol eras: the SDK's default (2026-07-28, probed) and the initialize handshake."""
    async with mcp_over_http(server_url, mode) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(listed) == {"fetch_page", "send_email"}
        assert listed["fetch_page"].input_schema == FETCH_PAGE_SCHEMA
        assert listed["fetch_page"].annotations is not None
        assert listed["fetch_page"].annotations.read_only_hint is True

        assert_read_the_page(await client.call_tool("fetch_page", {"url": page_url}), page_url)


@pytest.fixture
def stdio_errlog(tmp_path: Path) -> Iterator[TextIO]:
    """Where the stdio server's stderr (its logs) goes."""
    with open(tmp_path / "stdio.log", "w+") as errlog:
        yield errlog


async def test_mcp_client_lists_and_calls_fetch_page_over_stdio(
    server_env: dict[str, str], page_url: str, stdio_errlog: TextIO
):
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "cli", "tool-server", "--stdio"], env=server_env, cwd=ROOT
    )
    async with Client(stdio_client(params, errlog=stdio_errlog)) as client:
        listed = {tool.name for tool in (await client.list_tools()).tools}
        assert listed == {"fetch_page", "send_email"}
        assert_read_the_page(await client.call_tool("fetch_page", {"url": page_url}), page_url)
    # The logs went to stderr, never onto the protocol's stdout.
    stdio_errlog.seek(0)
    assert "tools available" in stdio_errlog.read()


async def test_mcp_tool_errors_are_results_and_unknown_tools_protocol_errors(server_url: str):
    async with mcp_over_http(server_url) as client:
        refused = await client.call_tool("fetch_page", {"url": "file:///etc/passwd"})
        assert refused.is_error and refused.structured_content["code"] == "unsupported_url"

        invalid = await client.call_tool("fetch_page", {"address": "http://127.0.0.1/"})
        assert invalid.is_error and invalid.structured_content["code"] == "invalid_arguments"

        with pytest.raises(MCPError, match="no tool named 'nope'"):
            await client.call_tool("nope", {})


async def test_send_email_is_listed_as_destructive_but_never_sent(
    server_url: str, api: httpx.AsyncClient, outbox: MailServer
):
    async with mcp_over_http(server_url) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        annotations = listed["send_email"].annotations
        assert annotations is not None
        assert annotations.destructive_hint is True and annotations.read_only_hint is False

        result = await client.call_tool("send_email", EMAIL)
        assert result.is_error
        assert result.structured_content["code"] == "approval_required"
        assert "POST /api/v1/approvals/" in result.structured_content["message"]

    discovered = {tool["slug"]: tool for tool in (await api.get("/mcp/discover")).json()["tools"]}
    assert discovered["send_email"]["requires_confirmation"] is True
    assert discovered["fetch_page"]["requires_confirmation"] is False

    response = await api.post(
        "/mcp/execute",
        json={"request_id": "r-mail", "tools": [{"tool_slug": "send_email", "arguments": EMAIL}]},
    )
    assert response.status_code == 200
    [item] = response.json()["data"]["results"]
    assert item["successful"] is False and item["error"]["code"] == "approval_required"
    assert outbox.handler.received == []


async def test_discover_describes_the_server_and_its_tools(api: httpx.AsyncClient):
    response = await api.get("/mcp/discover")
    assert response.status_code == 200
    body = response.json()
    assert body["server"] == {"name": "durable-assistant", "version": "0.1.0"}
    fetch = next(tool for tool in body["tools"] if tool["slug"] == "fetch_page")
    assert fetch["name"] == "fetch_page"
    assert fetch["parameters"] == FETCH_PAGE_SCHEMA
    assert "web page" in fetch["description"]


async def test_execute_runs_a_batch_of_two_calls(api: httpx.AsyncClient, page_url: str):
    response = await api.post(
        "/mcp/execute",
        json={
            "request_id": "batch-1",
            "tools": [
                {"tool_slug": "fetch_page", "arguments": {"url": page_url}},
                {"tool_slug": "fetch_page", "arguments": {"url": "file:///etc/passwd"}},
            ],
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert body["request_id"] == "batch-1"
    assert body["successful"] is False
    assert body["error"] == "1 of 2 tool calls failed"
    read, refused = body["data"]["results"]
    assert read["tool_slug"] == "fetch_page" and read["successful"] is True
    assert read["data"]["title"] == "Lighthouse keeping"
    assert refused["successful"] is False
    assert refused["error"]["code"] == "unsupported_url"
    assert "http and https" in refused["error"]["message"]


async def test_execute_succeeds_when_every_call_does(api: httpx.AsyncClient, page_url: str):
    call = {"tool_slug": "fetch_page", "arguments": {"url": page_url, "max_length": 9}}
    response = await api.post("/mcp/execute", json={"request_id": "batch-2", "tools": [call, call]})
    body = response.json()
    assert body["successful"] is True and "error" not in body
    for result in body["data"]["results"]:
        assert len(result["data"]["content"]) == 9 and result["data"]["truncated"] is True


async def test_execute_fails_unknown_tools_and_invalid_arguments_one_by_one(api: httpx.AsyncClient):
    response = await api.post(
        "/mcp/execute",
        json={
            "request_id": "batch-3",
            "tools": [
                {"tool_slug": "launch_rockets", "arguments": {}},
                {"tool_slug": "fetch_page", "arguments": {"url": "http://127.0.0.1/", "max_length": 0}},
            ],
        },
    )
    unknown, invalid = response.json()["data"]["results"]
    assert unknown["error"]["code"] == "unknown_tool" and unknown["tool_slug"] == "launch_rockets"
    assert invalid["error"]["code"] == "invalid_arguments" and "max_length" in invalid["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"request_id": "x", "tools": [', 400, "invalid_json"),
        (b'{"tools": [{"tool_slug": "fetch_page"}]}', 422, "validation_failed"),
        (b'{"request_id": "x", "tools": []}', 422, "validation_failed"),
        (
            b'{"request_id": "x", "tools": [{"tool_slug": "fetch_page", "arguments": []}]}',
            422,
            "validation_failed",
        ),
        (
            json.dumps({"request_id": "x", "tools": [{"tool_slug": "fetch_page"}] * 21}).encode(),
            422,
            "validation_failed",
        ),
        (b"[1, 2]", 422, "validation_failed"),
    ],
    ids=[
        "broken-json",
        "no-request-id",
        "empty-batch",
        "arguments-not-object",
        "batch-over-20",
        "not-object",
    ],
)
async def test_execute_refuses_malformed_requests_as_problems(
    api: httpx.AsyncClient, body: bytes, status: int, code: str
):
    response = await api.post("/mcp/execute", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/mcp/discover"),
        ("POST", "/mcp/execute"),
        ("POST", "/mcp"),
        ("GET", "/mcp"),
        ("DELETE", "/mcp"),
    ],
)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-key", f"Basic {KEY}", "Bearer"],
    ids=["none", "wrong", "basic", "empty"],
)
async def test_every_route_needs_the_key(server_url: str, method: str, path: str, authorization: str | None):
    headers = {"Authorization": authorization} if authorization else {}
    body = {
        "request_id": "r",
        "tools": [{"tool_slug": "fetch_page", "arguments": {"url": "http://127.0.0.1/"}}],
    }
    async with httpx.AsyncClient(base_url=server_url, timeout=10) as client:
        response = await client.request(
            method, path, headers=headers, json=body if method == "POST" else None
        )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 401 and problem["code"] == "unauthenticated"
    assert KEY not in response.text


async def test_health_needs_no_key(server_url: str):
    async with httpx.AsyncClient(base_url=server_url, timeout=10) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_a_generated_key_is_printed_once_and_required(server_env: dict[str, str], tmp_path: Path):
    port = free_port()
    log = tmp_path / "tool-server.log"
    with tool_server_process(server_env, log, "--port", str(port)) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, log)
        printed = re.findall(r"tool server key \(shown once[^)]*\): (\S+)", log.read_text())
        assert len(printed) == 1
        key = printed[0]
        assert len(key) >= 32
        assert httpx.get(f"{url}/mcp/discover", timeout=10).status_code == 401
        found = httpx.get(f"{url}/mcp/discover", headers={"Authorization": f"Bearer {key}"}, timeout=10)
        assert found.status_code == 200
    assert log.read_text().count(key) == 1  # not in the access log or anywhere else


def test_refuses_a_non_loopback_address_without_a_key(server_env: dict[str, str], tmp_path: Path):
    log = tmp_path / "tool-server.log"
    with tool_server_process(server_env, log, "--host", "0.0.0.0", "--port", str(free_port())) as proc:
        assert proc.wait(timeout=60) == 2
    assert "TOOL_SERVER_KEY must be set" in log.read_text()
