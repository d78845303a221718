"""Following a turn's event log: the SSE stream and the waits of polling clients.

Every event is read from PostgreSQL; the hub only says when to look again. A client that
reconnects with `Last-Event-ID` therefore gets exactly the rows after it, from any API process.
That is also why a stream may be closed before its turn ends: after `SSE_MAX_DURATION` it
ends with a `retry:` hint (no terminal event), and the client resumes where it was, so no
connection (nor the API process holding it) is pinned for ever by one client. The same
hint closes every stream at once when the API process shuts down (SIGTERM): the client
resumes on another process instead of being cut off or held until the grace period ends.
"""

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import anyio
import structlog
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from api.hub import EventHub
from api.metrics import EVENT_LOG_LAG
from store import events
from store.db import Pool
from store.events import TERMINAL_STATUSES

log = structlog.get_logger(__name__)

TERMINAL_EVENTS = frozenset({"complete", "error", "cancelled"})
# A safety net: re-read even without a notification, in case one was lost.
_REREAD_EVERY = 5.0


# How long a client waits before resuming a stream closed at its maximum duration.
RECONNECT_AFTER_MS = 1000
# On shutdown, how long a stream has to send its `retry:` hint before it is cut.
_SHUTDOWN_FAREWELL_SECONDS = 2.0


async def follow(
    pool: Pool,
    hub: EventHub,
    *,
    turn_id: str,
    after: int,
    until: float | None = None,
    stop: anyio.Event | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Yield the turn's events with seq > after, live, until the terminal event (or until
    the event loop's clock reaches `until`, or `stop` is set)."""
    loop = asyncio.get_running_loop()
    caught_up = False  # events read before the stream first reached the log's end are replays
    async with hub.subscribe(turn_id) as woken:
        while True:
            if (until is not None and loop.time() >= until) or (stop is not None and stop.is_set()):
                return
            woken.clear()
            batch = await events.read_after(pool, turn_id=turn_id, after=after)
            for event in batch:
                after = event["seq"]
                if caught_up:
                    _observe_lag(event)
                yield event
                if event["type"] in TERMINAL_EVENTS:
                    return
            if batch:
                continue  # there may be more than one page
            caught_up = True
            if await _ended_before(pool, turn_id, after):
                return  # resumed past the end: nothing more will come
            wait = _REREAD_EVERY if until is None else max(0.0, min(_REREAD_EVERY, until - loop.time()))
            await _wait_either(woken, stop, seconds=wait)


def _observe_lag(event: dict[str, Any]) -> None:
    written = datetime.fromisoformat(event["timestamp"])
    EVENT_LOG_LAG.observe(max(0.0, time.time() - written.timestamp()))


async def _wait_either(woken: asyncio.Event, stop: anyio.Event | None, *, seconds: float) -> None:
    """Wait until `woken` or `stop` is set, or `seconds` have passed."""
    waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(woken.wait())]
    if stop is not None:
        waits.append(asyncio.ensure_future(stop.wait()))
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


async def _ended_before(pool: Pool, turn_id: str, after: int) -> bool:
    """Whether the turn has ended and its last event is at or before `after`."""
    row = await pool.fetchrow("SELECT status, last_seq FROM turns WHERE id = $1", turn_id)
    return row is None or (row["status"] in TERMINAL_STATUSES and row["last_seq"] <= after)


def _frame(event: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(
        data=json.dumps(event, separators=(",", ":"), ensure_ascii=False),
        event=event["type"],
        id=str(event["seq"]),
        sep="\n",
    )


class _TurnEventStream(EventSourceResponse):
    """A turn's SSE stream, closed with a `retry:` hint once it has lasted `SSE_MAX_DURATION`
    or when the server shuts down (sse-starlette's shutdown watcher sets `_shutdown`).

    The maximum is read from the serving app's settings when the response is sent, so every
    route that streams gets it without passing it along.
    """

    def __init__(self, pool: Pool, hub: EventHub, *, turn_id: str, after: int, **options: Any) -> None:
        self._follow = (pool, hub, turn_id, after)
        self._max_duration: timedelta | None = None
        self._shutdown = anyio.Event()
        super().__init__(
            self._frames(),
            shutdown_event=self._shutdown,
            shutdown_grace_period=_SHUTDOWN_FAREWELL_SECONDS,
            **options,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = getattr(getattr(scope.get("app"), "state", None), "settings", None)
        self._max_duration = getattr(settings, "sse_max_duration", None)
        await super().__call__(scope, receive, send)

    async def _frames(self) -> AsyncIterator[ServerSentEvent]:
        pool, hub, turn_id, after = self._follow
        until = None
        if self._max_duration is not None:
            until = asyncio.get_running_loop().time() + self._max_duration.total_seconds()
        ended = False
        try:
            async for event in follow(
                pool, hub, turn_id=turn_id, after=after, until=until, stop=self._shutdown
            ):
                after = event["seq"]
                ended = event["type"] in TERMINAL_EVENTS
                yield _frame(event)
        except asyncio.CancelledError:
            log.info("event stream client disconnected", turn_id=turn_id)
            raise
        if ended:
            return
        if self._shutdown.is_set():
            # No database read here: the pool may be closing with the process.
            log.info("event stream closed by the server's shutdown", turn_id=turn_id, last_seq=after)
            yield ServerSentEvent(
                comment=f"the server is shutting down; resume with Last-Event-ID: {after}",
                retry=RECONNECT_AFTER_MS,
                sep="\n",
            )
        elif until is not None and not await _ended_before(pool, turn_id, after):
            log.info("event stream reached its maximum duration", turn_id=turn_id, last_seq=after)
            yield ServerSentEvent(
                comment=f"the stream's maximum duration was reached; resume with Last-Event-ID: {after}",
                retry=RECONNECT_AFTER_MS,
                sep="\n",
            )


def event_stream_response(
    pool: Pool,
    hub: EventHub,
    *,
    turn_id: str,
    after: int,
    ping: timedelta,
    headers: dict[str, str] | None = None,
) -> EventSourceResponse:
    """The SSE response following a turn from `after`, for at most `SSE_MAX_DURATION`."""
    return _TurnEventStream(
        pool,
        hub,
        turn_id=turn_id,
        after=after,
        headers=headers,
        ping=ping.total_seconds(),
        ping_message_factory=lambda: ServerSentEvent(comment="ping", sep="\n"),
        sep="\n",
    )


async def wait_for_change(hub: EventHub, *, turn_id: str, still_waiting: Any, seconds: float) -> None:
    """Wait up to `seconds` until `await still_waiting()` is false, re-checking on each event."""
    deadline = asyncio.get_running_loop().time() + seconds
    async with hub.subscribe(turn_id) as woken:
        while True:
            woken.clear()  # before the check, so an event during it is not missed
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0 or not await still_waiting():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), timeout=min(remaining, _REREAD_EVERY))
