"""`McpConnection`: one MCP server, over stdio or streamable HTTP, kept connected for the
worker's life (tools/remote_base.py's ToolServerConnection). The transports themselves (the
stdio launcher, stderr capture, the watched HTTP client) are in tools/mcp_transport.py.

Why it is built this way:

- The SDK's transports and ClientSession are async context managers over anyio task groups,
  which must be entered and left by the same task. So one supervisor task owns a connection:
  it starts the process or opens the HTTP client, initializes, lists the tools (every page),
  then waits for a close, a `tools/list_changed` notification, the end of the stream or the
  next ping. Calls from other tasks use the session directly: it matches concurrent requests
  to answers by id. When the transport fails (the process exits: its stdout ends; the HTTP
  server refuses a connection: the error leaves the transport's task group and cancels the
  supervisor's wait), the supervisor marks the connection unhealthy, tells the listeners and
  reconnects with backoff (0.5 s doubling to 30 s); back, it lists the tools again.
- The 2025-11-25 `initialize` handshake, which every server speaks; on the 2026-07-28
  protocol a tool list change would need a `subscriptions/listen` stream instead.
- Pings (every 15 s) notice an HTTP server that died while nothing was being called, and a
  stdio server that hangs. A ping unanswered in time counts against the server only while no
  call is running: a server busy with a long call may answer pings late, and reconnecting
  would end that call.
- A call that may have reached the server is never reported as temporary (a retry could run
  it twice): a timeout is `tool_timeout`, a connection lost mid-call `tool_server_disconnected`.
  Only a call made while disconnected, whose HTTP request could not even connect, or that a
  restarted HTTP server refused as part of a session it forgot (404), is ToolTemporarilyFailed;
  the HTTP transport records which, per call, in a `Delivery`. A timed-out call is cancelled
  with `notifications/cancelled`.
"""

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import structlog
from mcp.client.session import ClientSession, IncomingMessage
from mcp.shared.exceptions import MCPError
from mcp.types import (
    CONNECTION_CLOSED,
    REQUEST_TIMEOUT,
    Implementation,
    PaginatedRequestParams,
    Tool,
    ToolListChangedNotification,
)
from pydantic import ValidationError

from tools.base import ToolFailed, ToolTemporarilyFailed
from tools.mcp_config import ServerConfig
from tools.mcp_results import compact_result
from tools.mcp_transport import (
    Delivery,
    HttpRecord,
    StderrLog,
    WatchedStream,
    http_transport,
    stdio_transport,
    tracked,
)
from tools.remote_base import ChangeListener, RemoteTool

log = structlog.get_logger(__name__)

CLIENT_INFO = Implementation(name="assistant", version="1")
# Connecting and the first listing; generous, as `npx`/`uvx` servers may download themselves first.
HANDSHAKE_TIMEOUT = 60.0
REQUEST_WAIT = 15.0  # a later tools/list or ping, and opening an HTTP connection
START_WAIT = 5.0  # start() waits this long for the first attempt
PING_INTERVAL = 15.0
MISSED_PINGS_ALLOWED = 2
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
CLOSE_TIMEOUT = 10.0  # the SDK's stdio shutdown alone may take 6 s (stdin, SIGTERM, SIGKILL)
MAX_TOOL_PAGES = 100
_PROBLEM_CHARS = 300


class _Unavailable(Exception):
    """The server cannot be reached; the message says why, for operators."""


class McpConnection:
    """One MCP server (kind "stdio" or "http") behind a supervised, reconnecting session."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        ping_interval: float = PING_INTERVAL,
    ) -> None:
        if config.kind not in ("stdio", "http"):
            raise ValueError(f"McpConnection speaks MCP; {config.name} is a {config.kind} server")
        self.name = config.name
        self._config = config
        self._handshake_timeout = handshake_timeout
        self._ping_interval = ping_interval
        self._tools: list[RemoteTool] = []
        self._session: ClientSession | None = None
        self._stream: WatchedStream | None = None
        self._problem: str | None = "connecting"
        self._listeners: list[ChangeListener] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._first_attempt = asyncio.Event()
        self._wake = asyncio.Event()  # close, stream end, list change, or a failed call
        self._closing = False
        self._relist = False
        self._check_now = False
        self._calls_running = 0
        self._sessions_opened = 0
        # Per session: where a stdio server's stderr goes, and the HTTP transport's record.
        self._stderr: StderrLog | None = None
        self._http: HttpRecord | None = None

    @property
    def healthy(self) -> bool:
        return self._session is not None

    @property
    def problem(self) -> str | None:
        return None if self.healthy else self._problem

    def tools(self) -> list[RemoteTool]:
        return list(self._tools)

    def on_change(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise(), name=f"mcp-{self.name}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(START_WAIT):
                await self._first_attempt.wait()

    async def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        session, stream = self._session, self._stream
        if session is None or stream is None or stream.ended:
            raise ToolTemporarilyFailed(f"the tool server {self.name} is unavailable: {self._problem}")
        self._calls_running += 1
        try:
            with tracked() as delivery:
                result = await session.call_tool(tool, arguments, read_timeout_seconds=self._config.timeout)
        except MCPError as err:
            raise self._call_error(tool, err, delivery) from err
        except ValidationError as err:
            raise ToolFailed("tool_error", f"{self.name} answered {tool} with a malformed result") from err
        except RuntimeError as err:  # an InputRequiredResult: the server wants to ask the user
            raise ToolFailed("tool_error", f"{self.name} cannot run {tool} here: {err}") from err
        finally:
            self._calls_running -= 1
        return compact_result(result)

    async def aclose(self) -> None:
        self._closing = True
        self._wake.set()
        task, self._supervisor = self._supervisor, None
        if task is None:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.shield(task)
        except TimeoutError:
            log.warning("tool server did not close in time", server=self.name)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _call_error(self, tool: str, err: MCPError, delivery: Delivery) -> Exception:
        if delivery.session_expired:
            self._check_soon()
            return ToolTemporarilyFailed(f"the tool server {self.name} ended the session; reconnecting")
        if err.code == REQUEST_TIMEOUT:
            return ToolFailed(
                "tool_timeout", f"{self.name} did not answer {tool} within {self._config.timeout:g} s"
            )
        if err.code == CONNECTION_CLOSED:
            self._check_soon()
            if delivery.never_sent:
                return ToolTemporarilyFailed(f"the tool server {self.name} is unavailable: cannot connect")
            return ToolFailed(
                "tool_server_disconnected",
                f"the connection to {self.name} was lost during {tool}, which may or may not have run"
                f" ({err.message})",
            )
        return ToolFailed(
            "tool_error", f"{self.name} refused {tool}: {_cut(err.message)} (MCP error {err.code})"
        )

    def _check_soon(self) -> None:
        """Ask the supervisor to ping now: a call saw the connection fail."""
        self._check_now = True
        self._wake.set()

    async def _supervise(self) -> None:
        backoff = FIRST_BACKOFF
        while not self._closing:
            problem = None
            opened = self._sessions_opened
            try:
                await self._run_session()
            except Exception as err:
                problem = await self._describe(err)
            if self._closing:
                break
            if self._sessions_opened > opened:
                backoff = FIRST_BACKOFF  # it was connected: retry soon
            self._lost(problem or "the server closed the connection")
            self._first_attempt.set()
            log.info("tool server reconnecting", server=self.name, problem=self._problem, delay=backoff)
            await self._pause(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
        self._session = None
        self._problem = "closed"

    async def _run_session(self) -> None:
        self._stderr, self._http = None, None
        async with AsyncExitStack() as stack:
            read_stream, write_stream = await stack.enter_async_context(self._transport())
            stream = WatchedStream(read_stream, self._wake)
            session = await stack.enter_async_context(
                ClientSession(stream, write_stream, message_handler=self._on_message, client_info=CLIENT_INFO)
            )
            try:
                await self._serve(session, stream)
            except _Unavailable as err:
                # Known before the teardown, which may take seconds (a stdio server that ignores
                # the end of its stdin is given 2 s, then a SIGTERM): say so now.
                self._lost(str(err))
                self._first_attempt.set()
                raise
            finally:
                if self._session is not None:  # _lost() says why once the session is torn down
                    self._session, self._problem = None, "disconnected"

    async def _serve(self, session: ClientSession, stream: WatchedStream) -> None:
        """Initialize and list the tools, then watch the session until it is closed or lost."""
        try:
            with anyio.fail_after(self._handshake_timeout):
                initialized = await session.initialize()
                tools = await self._list_tools(session)
        except TimeoutError as err:
            raise _Unavailable(
                f"the server did not complete the handshake within {self._handshake_timeout:g} s"
            ) from err
        except MCPError as err:
            if err.code == CONNECTION_CLOSED and stream.ended:
                raise _Unavailable(await self._ended_reason()) from err
            raise
        info = initialized.server_info
        log.info(
            "tool server connected",
            server=self.name,
            tools=len(tools),
            software=f"{info.name} {info.version}",
        )
        self._session, self._stream = session, stream
        self._problem = None
        self._sessions_opened += 1
        self._set_tools(tools, force_notify=True)
        self._first_attempt.set()
        await self._watch(session, stream)

    @asynccontextmanager
    async def _transport(self) -> AsyncIterator[Any]:
        """The session's streams, keeping the HTTP record or the stderr log for `_describe`."""
        config = self._config
        if config.kind == "http":
            self._http = HttpRecord()
            async with http_transport(config, self._http, request_wait=REQUEST_WAIT) as streams:
                yield streams
            return
        command = self._executable(config)
        self._stderr = stderr = StderrLog(self.name)
        try:
            async with stdio_transport(config, command, stderr) as streams:
                yield streams
        finally:
            await stderr.close()

    def _executable(self, config: ServerConfig) -> str:
        """The command, if it can be run; _Unavailable otherwise (the launcher could only say
        so with a traceback)."""
        assert config.command is not None
        command = config.command
        if os.sep in command:
            found = os.path.join(config.cwd or os.getcwd(), command)
            if os.path.isfile(found) and os.access(found, os.X_OK):
                return command
        # The child's PATH: ours (the SDK passes it on) unless the configuration sets one.
        elif shutil.which(command, path=config.env.get("PATH", os.environ.get("PATH", os.defpath))):
            return command
        raise _Unavailable(f"command not found: {command}")

    async def _list_tools(self, session: ClientSession) -> list[RemoteTool]:
        found: dict[str, RemoteTool] = {}
        cursor: str | None = None
        for _ in range(MAX_TOOL_PAGES):
            page = await session.list_tools(params=PaginatedRequestParams(cursor=cursor) if cursor else None)
            for tool in page.tools:
                if tool.name in found:
                    log.warning("tool server lists a tool twice", server=self.name, tool=tool.name)
                    continue
                found[tool.name] = _remote_tool(self.name, tool)
            cursor = page.next_cursor
            if not cursor:
                break
        return list(found.values())

    async def _watch(self, session: ClientSession, stream: WatchedStream) -> None:
        """Serve the session until close (returns) or its loss (raises _Unavailable)."""
        missed_pings = 0
        while True:
            with anyio.move_on_after(self._ping_interval) as timer:
                await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            if stream.ended:
                raise _Unavailable(await self._ended_reason())
            if self._relist:
                self._relist = False
                try:
                    with anyio.fail_after(REQUEST_WAIT):
                        self._set_tools(await self._list_tools(session))
                except TimeoutError as err:
                    raise _Unavailable(
                        f"the server did not list its tools within {REQUEST_WAIT:g} s"
                    ) from err
            if not (timer.cancelled_caught or self._check_now):
                continue
            self._check_now = False
            if await self._pinged(session):
                missed_pings = 0
            elif not self._calls_running:
                missed_pings += 1
                if missed_pings > MISSED_PINGS_ALLOWED:
                    raise _Unavailable(f"the server did not answer {missed_pings} pings")

    async def _pinged(self, session: ClientSession) -> bool:
        """Whether the server answered a ping in time; _Unavailable if the session is gone."""
        with anyio.move_on_after(REQUEST_WAIT), tracked() as delivery:
            try:
                await session.send_ping()
            except MCPError as err:
                if err.code == CONNECTION_CLOSED or delivery.session_expired:
                    raise _Unavailable(f"the connection was lost: {_cut(err.message)}") from err
                # Any other error is still an answer: the server is there.
            return True
        return False

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, ToolListChangedNotification):
            self._relist = True
            self._wake.set()
        elif isinstance(message, Exception):
            log.warning("tool server sent something unreadable", server=self.name, error=_cut(str(message)))

    def _set_tools(self, tools: list[RemoteTool], *, force_notify: bool = False) -> None:
        changed = tools != self._tools
        self._tools = tools
        if changed or force_notify:
            self._notify()

    def _lost(self, problem: str) -> None:
        changed = problem != self._problem
        self._session, self._stream, self._problem = None, None, problem
        if changed:  # health, or why it is down: both show in the catalog
            log.warning("tool server unavailable", server=self.name, problem=problem)
            self._notify()

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("tool server change listener failed", server=self.name)

    async def _pause(self, delay: float) -> None:
        """Sleep `delay` seconds, or less if the connection is closed meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while not self._closing and (left := deadline - loop.time()) > 0:
            self._wake.clear()
            with anyio.move_on_after(left):
                await self._wake.wait()

    async def _ended_reason(self) -> str:
        if self._stderr is None:
            return "the server closed the connection"
        await self._stderr.drained()
        last = self._stderr.last_line()
        return "the server process exited" + (f": {_cut(last)}" if last else "")

    async def _describe(self, err: BaseException) -> str:
        """A short reason for operators, from whatever ended the session."""
        leaf = _cause_of(err)
        if isinstance(leaf, _Unavailable):
            return str(leaf)
        if isinstance(leaf, httpx2.TimeoutException):
            return f"timed out connecting to {self._origin()}"
        if isinstance(leaf, httpx2.ConnectError):
            refused = any(isinstance(cause, ConnectionRefusedError) for cause in _causes(leaf))
            return f"cannot connect to {self._origin()}" + (
                " (connection refused)" if refused else f": {leaf}"
            )
        if isinstance(leaf, httpx2.TransportError):
            return f"the connection to {self._origin()} failed: {_cut(str(leaf) or type(leaf).__name__)}"
        if isinstance(leaf, OSError) and self._config.kind == "stdio":
            return f"cannot start {self._config.command}: {leaf.strerror or leaf}"
        if isinstance(leaf, MCPError) and leaf.code == CONNECTION_CLOSED:
            return await self._ended_reason()
        if isinstance(leaf, MCPError):
            status = self._http.last_error_status if self._http is not None else None
            return (
                f"HTTP {status} from {self._origin()}"
                if status
                else f"the server refused: {_cut(leaf.message)}"
            )
        log.warning("tool server session failed", server=self.name, exc_info=leaf)
        return _cut(f"{type(leaf).__name__}: {leaf}")

    def _origin(self) -> str:
        """The URL without path or query, which may hold a token."""
        parts = urlsplit(self._config.url or "")
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _remote_tool(server: str, tool: Tool) -> RemoteTool:
    annotations = tool.annotations.model_dump(by_alias=True, exclude_none=True) if tool.annotations else {}
    return RemoteTool(
        server=server,
        name=tool.name,
        description=tool.description or tool.title or "",
        input_schema=tool.input_schema,
        destructive=declares_destructive(annotations),
        annotations=annotations,
    )


def declares_destructive(annotations: dict[str, Any]) -> bool:
    """Whether a tool's MCP annotations declare it destructive.

    The spec's defaults (readOnlyHint false, destructiveHint true) would make every tool that
    says nothing destructive; API.md asks for approval when a tool *declares* itself so. So:
    `destructiveHint: true` always counts (even beside a contradictory `readOnlyHint: true`:
    asking costs one approval); with `destructiveHint` absent, the spec's default applies only
    to a tool that explicitly says `readOnlyHint: false`. Operators gate the rest with
    `requireConfirmation`.
    """
    destructive = annotations.get("destructiveHint")
    if destructive is True:
        return True
    return destructive is None and annotations.get("readOnlyHint") is False


def _cause_of(err: BaseException) -> BaseException:
    """The exception that ended a session, out of the task groups' exception groups: our own
    verdict if there is one, else the first that is not a cancellation."""
    leaves: list[BaseException] = []
    pending = [err]
    while pending:
        current = pending.pop(0)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        else:
            leaves.append(current)
    cancelled = anyio.get_cancelled_exc_class()
    ranked = sorted(leaves, key=lambda e: (not isinstance(e, _Unavailable), isinstance(e, cancelled)))
    return ranked[0] if ranked else err


def _causes(err: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and len(found) < 10:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _PROBLEM_CHARS else text[: _PROBLEM_CHARS - 1] + "…"
