"""Composition root of the worker: clients built once, activities bound to them, and a
reconciler that starts turns whose workflow never started (an API process that died
between committing a turn and starting its workflow)."""

import asyncio
import contextlib
import signal
from datetime import timedelta

import openai
import structlog
from temporalio.client import Client
from temporalio.worker import Worker

from activities.model import ModelActivities
from activities.turn import TurnActivities
from core.config import Settings
from core.contracts import TurnInput
from store import turns
from store.db import Pool, create_pool
from workflows.client import start_turn
from workflows.turn import TurnWorkflow

log = structlog.get_logger(__name__)

_RECONCILE_EVERY = 10.0
_QUEUED_GRACE_SECONDS = 15.0


def model_client(settings: Settings) -> openai.AsyncOpenAI:
    """The OpenAI-compatible client; it never retries: Temporal does, visibly."""
    return openai.AsyncOpenAI(
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key or "not-needed",
        max_retries=0,
        timeout=settings.model_timeout.total_seconds(),
    )


def build_worker(client: Client, pool: Pool, settings: Settings) -> Worker:
    model = ModelActivities(pool, model_client(settings), settings)
    turn = TurnActivities(pool)
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=[TurnWorkflow],
        activities=[model.stream_reply, turn.set_status, turn.finish],
        graceful_shutdown_timeout=timedelta(seconds=5),
    )


async def reconcile_queued_turns(
    client: Client, pool: Pool, settings: Settings, *, grace_seconds: float = _QUEUED_GRACE_SECONDS
) -> int:
    """Start the workflow of every turn left queued past a grace period; how many were started."""
    started = 0
    for turn_id in await turns.stale_queued(pool, older_than_seconds=grace_seconds):
        turn = await turns.get_by_id(pool, turn_id=turn_id)
        if turn is None:
            continue
        task = TurnInput(
            turn_id=turn.id,
            conversation_id=turn.conversation_id,
            user_id=turn.user_id,
            max_steps=settings.max_steps,
        )
        if await start_turn(client, task, task_queue=settings.temporal_task_queue):
            log.warning("started a turn left queued", turn_id=turn_id)
            started += 1
    return started


async def _reconcile_forever(client: Client, pool: Pool, settings: Settings) -> None:
    while True:
        try:
            await reconcile_queued_turns(client, pool, settings)
        except Exception:
            log.exception("reconciling queued turns failed")
        await asyncio.sleep(_RECONCILE_EVERY)


async def run_worker(settings: Settings) -> None:
    """Run a worker until SIGTERM/SIGINT."""
    pool = await create_pool(settings.require_database_url())
    client = await Client.connect(settings.require_temporal_address(), namespace=settings.temporal_namespace)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = build_worker(client, pool, settings)
    reconciler = asyncio.create_task(_reconcile_forever(client, pool, settings))
    log.info("worker started", task_queue=settings.temporal_task_queue)
    try:
        async with worker:
            await stop.wait()
            log.info("worker stopping")
    finally:
        reconciler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reconciler
        await pool.close()
