"""The transports under tools/mcp_session.py's McpConnection: a stdio server's process or a
streamable HTTP client, and the read stream that tells the supervisor when either ends.

Why it is built this way:

- A stdio server gets the SDK's minimal environment (HOME, LOGNAME, PATH, SHELL, TERM, USER)
  plus its configured `env`, never this process's secrets. On Linux it is started through a
  small launcher that asks the kernel to kill it when the worker dies (PR_SET_PDEATHSIG, tied to
  the event loop's thread, which spawns it; the SDK gives it its own session, so a terminal's
  Ctrl-C does not reach it, and a server that ignores the end of its stdin would outlive a
  killed worker). Its stderr goes to our log, the last lines kept to explain an exit.
- Whether an HTTP request reached the server decides whether a failed call may be retried. The
  HTTP client records a request that could not even connect, and a 404 from a restarted server
  that forgot the session, in the `Delivery` of `tracked()`: a context variable the SDK carries
  to the task that makes the request.
"""

import asyncio
import collections
import contextlib
import contextvars
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import anyio
import httpx2
import structlog
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import MCP_SESSION_ID, streamable_http_client
from mcp.shared.message import SessionMessage

from tools.mcp_config import ServerConfig

log = structlog.get_logger(__name__)

# One answer over HTTP; the SDK's default (1 MiB) would fail large results instead of cutting them.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_STDERR_TAIL_LINES = 20
_STDERR_DRAIN_WAIT = 0.5
# Runs the server with PR_SET_PDEATHSIG (1) = SIGKILL (9); execvp keeps the setting.
_LAUNCHER = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, 9)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


@dataclass
class Delivery:
    """What the HTTP transport learned about one request (a call or a ping)."""

    never_sent: bool = False  # its connection could not be opened
    # HTTP 404 to a request carrying a session id: the server forgot the session (it restarted)
    # and refused the request unseen; the spec says to start a new session.
    session_expired: bool = False


_DELIVERY: contextvars.ContextVar[Delivery | None] = contextvars.ContextVar("mcp_delivery", default=None)


@contextlib.contextmanager
def tracked() -> Iterator[Delivery]:
    """A record of the requests sent in this block; the SDK carries the context variable to the
    task that makes the HTTP request."""
    delivery = Delivery()
    token = _DELIVERY.set(delivery)
    try:
        yield delivery
    finally:
        _DELIVERY.reset(token)


class HttpRecord:
    """Watches the HTTP requests of one session: a call's request that could not connect (the
    transport wrapper; behind a proxy from the environment, the proxy's transport is used and
    such calls are reported on the safe side, as possibly run), a 404 to a session's request,
    and the last error status, to explain a refused handshake (401: check the headers)."""

    def __init__(self) -> None:
        self.last_error_status: int | None = None

    def client(self, config: ServerConfig, request_wait: float) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            headers=config.headers,
            timeout=httpx2.Timeout(request_wait, read=None),  # calls and pings have their own
            transport=_ConnectWatch(),
            event_hooks={"response": [self._on_response]},
        )

    async def _on_response(self, response: httpx2.Response) -> None:
        if response.status_code >= 400:
            self.last_error_status = response.status_code
        delivery = _DELIVERY.get()
        if (
            delivery is not None
            and response.status_code == 404
            and MCP_SESSION_ID in response.request.headers
        ):
            delivery.session_expired = True


class _ConnectWatch(httpx2.AsyncBaseTransport):
    """Marks a request whose connection could not be opened as never sent."""

    def __init__(self) -> None:
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        try:
            return await self._inner.handle_async_request(request)
        except (httpx2.ConnectError, httpx2.ConnectTimeout):
            delivery = _DELIVERY.get()
            if delivery is not None:
                delivery.never_sent = True
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()


class WatchedStream:
    """The transport's read stream, telling the supervisor when it ends (the process exited)."""

    def __init__(self, inner: Any, on_end: asyncio.Event) -> None:
        self._inner = inner
        self._on_end = on_end
        self.ended = False

    @property
    def last_context(self) -> contextvars.Context | None:
        # The dispatcher runs handlers in the sender's context when the stream carries one.
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> SessionMessage | Exception:
        try:
            item: SessionMessage | Exception = await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.ended = True
            self._on_end.set()
            raise
        return item

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class StderrLog:
    """A stdio server's stderr: each line to our log, the last ones kept to explain an exit."""

    def __init__(self, server: str) -> None:
        self._server = server
        self.tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        read_fd, write_fd = os.pipe()
        self.child_end = os.fdopen(write_fd, "w")
        self._our_end = os.fdopen(read_fd, "rb", buffering=0)
        self._task = asyncio.create_task(self._pump(), name=f"mcp-stderr-{server}")

    async def _pump(self) -> None:
        reader = asyncio.StreamReader()
        try:
            transport, _ = await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), self._our_end
            )
        except OSError:
            log.exception("cannot read a tool server's stderr", server=self._server)
            return
        pending = b""
        try:
            while chunk := await reader.read(65536):
                *lines, pending = (pending + chunk).split(b"\n")
                pending = pending[-65536:]  # a line without end is cut, not buffered forever
                for line in lines:
                    self._record(line)
            if pending:
                self._record(pending)
        finally:
            transport.close()

    def _record(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            self.tail.append(line[:1000])
            log.info("tool server stderr", server=self._server, line=line[:1000])

    def last_line(self) -> str | None:
        return self.tail[-1] if self.tail else None

    async def drained(self) -> None:
        """Wait a moment for the last lines of a process that has exited."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_STDERR_DRAIN_WAIT):
                await asyncio.shield(self._task)

    async def close(self) -> None:
        self.child_end.close()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._our_end.close()  # if the pump never started; closing twice does nothing


@asynccontextmanager
async def http_transport(
    config: ServerConfig, record: HttpRecord, *, request_wait: float
) -> AsyncIterator[Any]:
    """The streams of a streamable HTTP connection to `config.url`, its requests watched by `record`."""
    assert config.url is not None
    async with (
        record.client(config, request_wait) as client,
        streamable_http_client(
            config.url, http_client=client, max_sse_event_size=MAX_MESSAGE_BYTES
        ) as streams,
    ):
        yield streams


@asynccontextmanager
async def stdio_transport(config: ServerConfig, command: str, stderr: StderrLog) -> AsyncIterator[Any]:
    """The streams of a stdio server's process, run as `command` (through the launcher on Linux)."""
    args = config.args
    if sys.platform == "linux":
        command, args = sys.executable, ["-I", "-S", "-c", _LAUNCHER, command, *args]
    parameters = StdioServerParameters(command=command, args=args, env=config.env, cwd=config.cwd)
    try:
        async with stdio_client(parameters, errlog=stderr.child_end) as streams:
            stderr.child_end.close()  # the child has its copy; EOF comes when it exits
            yield streams
    finally:
        stderr.child_end.close()
