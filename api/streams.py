"""Following a turn's event log: the SSE stream and the waits of polling clients.

Every event is read from PostgreSQL; the hub only says when to look again. A client that
reconnects with `Last-Event-ID` therefore gets exactly the rows after it, from any API process.
"""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import structlog
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.hub import EventHub
from store import events
from store.db import Pool
from store.events import TERMINAL_STATUSES

log = structlog.get_logger(__name__)

TERMINAL_EVENTS = frozenset({"complete", "error", "cancelled"})
# A safety net: re-read even without a notification, in case one was lost.
_REREAD_EVERY = 5.0


async def follow(pool: Pool, hub: EventHub, *, turn_id: str, after: int) -> AsyncIterator[dict[str, Any]]:
    """Yield the turn's events with seq > after, live, until the terminal event."""
    async with hub.subscribe(turn_id) as woken:
        while True:
            woken.clear()
            batch = await events.read_after(pool, turn_id=turn_id, after=after)
            for event in batch:
                after = event["seq"]
                yield event
                if event["type"] in TERMINAL_EVENTS:
                    return
            if batch:
                continue  # there may be more than one page
            if await _ended_before(pool, turn_id, after):
                return  # resumed past the end: nothing more will come
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), timeout=_REREAD_EVERY)


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


async def _frames(pool: Pool, hub: EventHub, turn_id: str, after: int) -> AsyncIterator[ServerSentEvent]:
    try:
        async for event in follow(pool, hub, turn_id=turn_id, after=after):
            yield _frame(event)
    except asyncio.CancelledError:
        log.info("event stream client disconnected", turn_id=turn_id)
        raise


def event_stream_response(
    pool: Pool,
    hub: EventHub,
    *,
    turn_id: str,
    after: int,
    ping: timedelta,
    headers: dict[str, str] | None = None,
) -> EventSourceResponse:
    """The SSE response following a turn from `after`."""
    return EventSourceResponse(
        _frames(pool, hub, turn_id, after),
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
