"""Shared activity plumbing: heartbeats while an activity works (a dead worker is noticed
within the heartbeat timeout; cancellation reaches the activity), and final failures."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.errors import TurnClosed

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


@contextlib.contextmanager
def turn_closed_is_final() -> Iterator[None]:
    """A turn ended elsewhere (cancelled before its workflow ran, ended by the reconciler)
    cannot be written to again: fail for good instead of retrying forever."""
    try:
        yield
    except TurnClosed as err:
        raise ApplicationError(str(err), type=err.code, non_retryable=True) from err
