"""Tool servers that speak the simple HTTP tool protocol (`"type": "http-tools"` in MCP_CONFIG).

Discovery (`GET {url}/mcp/discover`) runs at start and every 30 s, every 5 s while the server is
down, and is the health check too. A call is one `POST {url}/mcp/execute` holding a batch of one.

Whether a failed call may be tried again depends on whether the request can have reached the
server, since a tool call may not be safe to repeat: only a connection that never opened, or a
server answering 503 (it is not taking requests), is a ToolTemporarilyFailed. A timeout, a
broken connection or any other 5xx once the request was sent is a ToolFailed the model reads.

Answers are read within MAX_RESPONSE_BYTES, and a result whose JSON passes MAX_RESULT_CHARS is
passed on as its JSON text, cut, with a note, so the model always gets valid JSON. What a server
sends is untrusted: error codes that are not snake_case become `tool_error`, messages are cut.
"""

import asyncio
import contextlib
import json
import re
from typing import Any

import httpx
import structlog
from pydantic import ValidationError

from core.ids import new_id
from tools.base import ToolFailed, ToolTemporarilyFailed
from tools.mcp_config import ServerConfig
from tools.remote_base import ChangeListener, RemoteTool
from toolserver.protocol import ToolDescription

log = structlog.get_logger(__name__)

DISCOVER_INTERVAL = 30.0
RETRY_INTERVAL = 5.0
MAX_RESPONSE_BYTES = 8 * 2**20
MAX_RESULT_CHARS = 60_000
# How long `start` waits for the first discovery before returning anyway.
FIRST_DISCOVERY_WAIT = 5.0
CONNECT_TIMEOUT = 10.0

_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_MAX_MESSAGE_CHARS = 2_000


class _TooLarge(Exception):
    """The answer passed MAX_RESPONSE_BYTES."""


class _BadAnswer(Exception):
    """The answer is not what the protocol says."""


class HttpToolsConnection:
    """One http-tools server: its tools, its health, and calls to it."""

    def __init__(
        self,
        name: str,
        url: str,
        headers: dict[str, str],
        timeout: float,
        *,
        discover_interval: float = DISCOVER_INTERVAL,
        retry_interval: float = RETRY_INTERVAL,
    ) -> None:
        self.name = name
        self._base = url.rstrip("/")
        self._headers = dict(headers)
        self._timeout = timeout
        self._discover_interval = discover_interval
        self._retry_interval = retry_interval
        self._client: httpx.AsyncClient | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._tools: list[RemoteTool] = []
        self._healthy = False
        self._problem: str | None = "not started"
        self._listeners: list[ChangeListener] = []
        # Set by a call that could not connect, so the watcher looks again now, not in 30 s.
        self._recheck = asyncio.Event()

    @classmethod
    def from_config(cls, config: ServerConfig) -> "HttpToolsConnection":
        if config.url is None:
            raise ValueError(f"the http-tools server {config.name!r} has no url")
        return cls(config.name, config.url, dict(config.headers), config.timeout)

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def problem(self) -> str | None:
        return None if self._healthy else self._problem

    def tools(self) -> list[RemoteTool]:
        return list(self._tools)

    def on_change(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        if self._watcher is not None:
            return
        self._client = httpx.AsyncClient(
            headers=self._headers,
            timeout=httpx.Timeout(self._timeout, connect=min(self._timeout, CONNECT_TIMEOUT)),
            follow_redirects=False,
        )
        first = asyncio.Event()
        self._watcher = asyncio.create_task(self._watch(first), name=f"http-tools:{self.name}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(self._timeout, FIRST_DISCOVERY_WAIT)):
                await first.wait()

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self._healthy, self._problem = False, "closed"

    async def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        if self._client is None:
            raise ToolTemporarilyFailed(f"the tool server {self.name!r} is not connected")
        payload = {"request_id": new_id("req"), "tools": [{"tool_slug": tool, "arguments": arguments}]}
        try:
            async with asyncio.timeout(self._timeout):
                status, body = await self._exchange("POST", "/mcp/execute", payload)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as err:
            reason = _reason(err)
            self._update(healthy=False, problem=reason)
            self._recheck.set()
            raise ToolTemporarilyFailed(f"the tool server {self.name!r} cannot be reached: {reason}") from err
        except (TimeoutError, httpx.TimeoutException) as err:
            raise ToolFailed(
                "tool_timeout",
                f"the tool server {self.name!r} did not answer within {self._timeout:g}s; "
                "the call may or may not have run",
            ) from err
        except _TooLarge as err:
            raise ToolFailed(
                "result_too_large",
                f"the tool server {self.name!r} answered more than {MAX_RESPONSE_BYTES} bytes",
            ) from err
        except httpx.HTTPError as err:
            raise ToolFailed(
                "tool_server_error",
                f"the connection to the tool server {self.name!r} broke during the call ({_reason(err)}); "
                "the call may or may not have run",
            ) from err
        return self._result(tool, status, body)

    async def _watch(self, first: asyncio.Event) -> None:
        while True:
            self._recheck.clear()
            await self._discover()
            first.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(
                    self._discover_interval if self._healthy else self._retry_interval
                ):
                    await self._recheck.wait()

    async def _discover(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                status, body = await self._exchange("GET", "/mcp/discover")
            if status != 200:
                raise _BadAnswer(f"discovery answered HTTP {status}{_status_hint(status)}")
            tools = self._parse_discovery(body)
        except (TimeoutError, httpx.HTTPError, _TooLarge, _BadAnswer) as err:
            self._update(healthy=False, problem=_reason(err))
            return
        except Exception as err:  # the watcher must outlive any surprise
            log.exception("tool server discovery failed", server=self.name)
            self._update(healthy=False, problem=f"discovery failed: {type(err).__name__}")
            return
        self._update(healthy=True, problem=None, tools=tools)

    async def _exchange(self, method: str, path: str, payload: Any = None) -> tuple[int, bytes]:
        """The status and body of one request, the body read within MAX_RESPONSE_BYTES."""
        assert self._client is not None
        async with self._client.stream(method, self._base + path, json=payload) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise _TooLarge()
            return response.status_code, bytes(body)

    def _parse_discovery(self, body: bytes) -> list[RemoteTool]:
        document = _json(body, "discovery")
        described = document.get("tools")
        if not isinstance(described, list):
            raise _BadAnswer("discovery answered without a tools list")
        tools: dict[str, RemoteTool] = {}
        for raw in described:
            try:
                tool = ToolDescription.model_validate(raw)
            except ValidationError:
                log.warning("a tool server described a tool malformed; it is left out", server=self.name)
                continue
            if tool.slug in tools:
                continue
            tools[tool.slug] = RemoteTool(
                server=self.name,
                name=tool.slug,
                description=tool.description,
                input_schema=tool.parameters,
                destructive=tool.requires_confirmation,
                annotations={"title": tool.name} if tool.name and tool.name != tool.slug else {},
            )
        return list(tools.values())

    def _result(self, tool: str, status: int, body: bytes) -> Any:
        if status == 503:
            raise ToolTemporarilyFailed(f"the tool server {self.name!r} is unavailable (HTTP 503)")
        if status != 200:
            raise ToolFailed(
                "tool_server_error",
                f"the tool server {self.name!r} answered HTTP {status}{_status_hint(status)}{_detail(body)}",
            )
        try:
            document = _json(body, "the call")
            item = _item(document, tool)
        except _BadAnswer as err:
            raise ToolFailed("bad_response", f"the tool server {self.name!r}: {err}") from err
        if item.get("successful") is True:
            return _compact(item.get("data"))
        error = item.get("error")
        if isinstance(error, dict):
            code, message = error.get("code"), error.get("message")
        else:
            code, message = None, error
        raise ToolFailed(
            code if isinstance(code, str) and _CODE.match(code) else "tool_error",
            str(message)[:_MAX_MESSAGE_CHARS]
            if message
            else f"{tool} failed on the tool server {self.name!r}",
        )

    def _update(self, *, healthy: bool, problem: str | None, tools: list[RemoteTool] | None = None) -> None:
        changed = healthy != self._healthy or (tools is not None and tools != self._tools)
        self._healthy, self._problem = healthy, problem
        if tools is not None:
            self._tools = tools
        if changed:
            for listener in self._listeners:
                try:
                    listener()
                except Exception:
                    log.exception("a tool server change listener failed", server=self.name)


def _json(body: bytes, what: str) -> dict[str, Any]:
    try:
        # NaN and Infinity are not JSON, and nothing downstream could store them: null, as
        # tools/mcp_results.py makes them.
        document = json.loads(body, parse_constant=lambda _: None)
    except (ValueError, RecursionError) as err:
        raise _BadAnswer(f"{what} answered something other than JSON") from err
    if not isinstance(document, dict):
        raise _BadAnswer(f"{what} answered JSON that is not an object")
    return document


def _item(document: dict[str, Any], tool: str) -> dict[str, Any]:
    """The answer's result for the one call sent (matched by slug when the server names it)."""
    data = document.get("data")
    results = data.get("results") if isinstance(data, dict) else None
    items = [r for r in results if isinstance(r, dict)] if isinstance(results, list) else []
    if not items:
        if document.get("successful") is False:
            error = document.get("error")
            return {"successful": False, "error": error if error else "the tool server refused the call"}
        raise _BadAnswer("the answer holds no result")
    return next((r for r in items if r.get("tool_slug") == tool), items[0])


def _compact(data: Any) -> Any:
    """`data`, or when its JSON passes MAX_RESULT_CHARS, that JSON cut as text, with a note
    (the shape tools/mcp_results.py gives an MCP result that was cut)."""
    text = json.dumps(data, ensure_ascii=False)
    if len(text) <= MAX_RESULT_CHARS:
        return data
    keep = MAX_RESULT_CHARS
    while True:
        note = f"the result was cut: {keep:,} of {len(text):,} characters of its JSON kept"
        cut = {"content": text[:keep], "truncated": True, "note": note}
        excess = len(json.dumps(cut, ensure_ascii=False)) - MAX_RESULT_CHARS
        if excess <= 0:
            return cut
        keep -= excess  # each character takes at least one in JSON


def _reason(err: Exception) -> str:
    """A short reason for operators: "connection refused", "timed out", or the error itself."""
    if isinstance(err, TimeoutError | httpx.TimeoutException):
        return "timed out"
    if isinstance(err, httpx.ConnectError):
        return "connection refused" if _caused_by(err, ConnectionRefusedError) else f"cannot connect: {err}"
    if isinstance(err, _TooLarge):
        return f"the answer passed {MAX_RESPONSE_BYTES} bytes"
    return str(err) or type(err).__name__


def _caused_by(err: BaseException, kind: type[BaseException]) -> bool:
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, kind):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _status_hint(status: int) -> str:
    return " (check the headers given for it in MCP_CONFIG)" if status in (401, 403) else ""


def _detail(body: bytes) -> str:
    """A problem document's `detail`, when the error answer is one."""
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError, RecursionError):
        return ""
    return f": {str(detail)[:_MAX_MESSAGE_CHARS]}" if detail else ""
