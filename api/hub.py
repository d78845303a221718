"""One LISTEN connection per API process, fanning turn notifications out to waiters.

Notifications only wake waiters; the events themselves are always read from the table,
so a missed notification (a reconnect of the listener) costs latency, never data: waiters
also wake on a timeout and re-read, and every waiter is woken after a reconnect.
"""

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator

import asyncpg
import structlog

from store.events import CHANNEL

log = structlog.get_logger(__name__)


class EventHub:
    """Wakes the waiters of a turn when its event log grows."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._keep_listening())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout=10)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    @contextlib.asynccontextmanager
    async def subscribe(self, turn_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set whenever the turn's log may have grown; clear it before re-reading."""
        event = asyncio.Event()
        self._waiters[turn_id].add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(turn_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[turn_id]

    def _notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        turn_id = str(payload).partition(":")[0]
        for event in self._waiters.get(turn_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    async def _keep_listening(self) -> None:
        delay = 0.2
        while True:
            try:
                self._conn = await asyncpg.connect(self._dsn)
                lost = asyncio.Event()
                self._conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await self._conn.add_listener(CHANNEL, self._notify)
                self._connected.set()
                self._wake_all()  # anything appended while we were away
                delay = 0.2
                await lost.wait()
                log.warning("event listener connection lost; reconnecting")
            except (OSError, asyncpg.PostgresError) as err:
                log.warning("event listener cannot connect", error=str(err), retry_in=delay)
            self._connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
