"""Heartbeats while an activity works: a dead worker is noticed within the heartbeat
timeout (the call is retried elsewhere), and cancellation reaches the activity."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from temporalio import activity

# Frequent heartbeats carry cancellation back quickly (the worker throttles them to 0.5 s).
HEARTBEAT_EVERY = 0.25


@contextlib.asynccontextmanager
async def heartbeating() -> AsyncIterator[None]:
    """Heartbeat in the background while the body runs."""

    async def beat() -> None:
        while True:
            activity.heartbeat()
            await asyncio.sleep(HEARTBEAT_EVERY)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
