"""Batching of streamed text into `token` events.

The first delta is written at once (time to first token matters most), later ones at most
once per interval, so a turn costs a few rows per second rather than one per token. A
timer flushes a pending batch when the model pauses, so no text waits for the next delta.
A failed write keeps its text pending and fails the attempt at the next `add` or `close`:
text is never dropped silently (the retry starts over with a `reset`).
"""

import asyncio
import time
from datetime import timedelta

from store import events
from store.db import Pool


class TokenRelay:
    """Writes one attempt's text deltas to the event log, in batches."""

    def __init__(
        self, pool: Pool, *, turn_id: str, message_id: str, attempt: int, interval: timedelta
    ) -> None:
        self._pool = pool
        self._turn_id = turn_id
        self._message_id = message_id
        self._attempt = attempt
        self._interval = interval.total_seconds()
        self._pending = ""
        self._written = 0  # code points already in events: the next batch's `index`
        self._last_flush = float("-inf")
        self._lock = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self.text = ""

    async def add(self, delta: str) -> None:
        self._raise_failure()
        if not delta:
            return
        self.text += delta
        self._pending += delta
        wait = self._last_flush + self._interval - time.monotonic()
        if wait <= 0:
            await self.flush()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._flush_later(wait))

    async def _flush_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._timer = None
        try:
            await self.flush()
        except Exception as err:  # nobody awaits this task: hand the failure to the stream
            self._failure = err

    async def flush(self) -> None:
        async with self._lock:
            if not self._pending:
                return
            content = self._pending
            await events.append_one(
                self._pool,
                turn_id=self._turn_id,
                type="token",
                payload={
                    "message_id": self._message_id,
                    "attempt": self._attempt,
                    "content": content,
                    "index": self._written,
                },
                stream=(self._message_id, self._attempt),
            )
            # Only once written: a failed write leaves the text pending, never lost.
            self._pending = self._pending[len(content) :]
            self._written += len(content)
            self._last_flush = time.monotonic()

    async def close(self) -> None:
        """Write what is pending; stop the timer. Raises if any write failed."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._raise_failure()
        await self.flush()

    def abandon(self) -> None:
        """Drop the timer without writing (the attempt failed or was cancelled)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure
