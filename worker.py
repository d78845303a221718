"""Composition root of the worker: clients built once, activities bound to them, and a
reconciler that starts turns whose workflow never started (an API process that died
between committing a turn and starting its workflow)."""

import asyncio
import contextlib
import signal
from datetime import timedelta

import openai
import structlog
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from activities.model import ModelActivities
from activities.tools import ToolActivities
from activities.turn import TurnActivities
from core import metrics, telemetry
from core.config import Settings
from core.log_context import LogContextInterceptor
from store import approvals, catalog, idempotency, turns
from store.db import Pool, create_pool
from tools.registry import ToolRegistry, build_registry
from workflows.client import signal_decision, start_turn, turn_handle, turn_input
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


def build_worker(client: Client, pool: Pool, settings: Settings, registry: ToolRegistry) -> Worker:
    model = ModelActivities(pool, model_client(settings), settings, registry)
    turn = TurnActivities(pool)
    tools = ToolActivities(pool, registry)
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=[TurnWorkflow],
        activities=[
            model.stream_reply,
            turn.set_status,
            turn.finish,
            tools.prepare,
            tools.run,
            tools.record,
            tools.expire,
        ],
        # On SIGTERM: stop polling, let running activities finish for this long, then cancel
        # them; Temporal retries them on another worker (no lost turn, no duplicate email).
        graceful_shutdown_timeout=settings.worker_shutdown_grace,
        interceptors=[LogContextInterceptor()],
        # Cancellation reaches an activity with a heartbeat's answer: keep that prompt.
        max_heartbeat_throttle_interval=timedelta(milliseconds=500),
    )


async def publish_tools(pool: Pool, registry: ToolRegistry) -> None:
    """Tell the API (through the catalog table) which tools this worker runs, and which of
    them cannot be used now and why; remote definitions are checked against their pins first."""
    await registry.sync(pool)
    await catalog.publish(
        pool,
        tools=[
            catalog.CatalogTool(
                name=spec.name,
                description=spec.description,
                input_schema=spec.input_schema,
                requires_confirmation=spec.requires_confirmation,
                source=spec.source,
                healthy=problem is None,
                problem=problem,
            )
            for spec, problem in registry.catalog()
        ],
    )


async def keep_catalog_fresh(pool: Pool, registry: ToolRegistry, *, every: float = _RECONCILE_EVERY) -> None:
    """Republish the catalog every `every` seconds (entries nobody refreshes go stale), and at
    once when a tool server comes, goes or changes its tools. The caller publishes first."""
    changed = asyncio.Event()
    registry.on_change(changed.set)
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), every)
        changed.clear()
        try:
            await publish_tools(pool, registry)
        except Exception:
            log.exception("publishing the tool catalog failed")


async def reconcile_queued_turns(
    client: Client, pool: Pool, settings: Settings, *, grace_seconds: float = _QUEUED_GRACE_SECONDS
) -> int:
    """Start the workflow of every turn left queued past a grace period; how many were started."""
    started = 0
    for turn_id in await turns.stale_queued(pool, older_than_seconds=grace_seconds):
        turn = await turns.get_by_id(pool, turn_id=turn_id)
        if turn is None:
            continue
        task = turn_input(
            turn_id=turn.id, conversation_id=turn.conversation_id, user_id=turn.user_id, settings=settings
        )
        if await start_turn(client, task, task_queue=settings.temporal_task_queue):
            log.warning("started a turn left queued", turn_id=turn_id)
            started += 1
    return started


async def end_orphaned_turns(client: Client, pool: Pool, *, older_than_seconds: float = 300.0) -> int:
    """Fail turns still marked active whose workflow has ended (terminated by an operator,
    timed out, or lost), so their conversations take messages again; how many."""
    ended = 0
    for turn_id in await turns.sample_active(pool, older_than_seconds=older_than_seconds):
        try:
            running = (
                await turn_handle(client, turn_id).describe()
            ).status == WorkflowExecutionStatus.RUNNING
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            running = False
        if running:
            continue
        message = "the turn's workflow ended without finishing the turn"
        finished = await turns.finish(
            pool,
            turn_id=turn_id,
            status="failed",
            terminal_event=("error", {"error": message, "code": "internal_error", "retryable": True}),
            error={"code": "internal_error", "message": message, "retryable": True},
        )
        if finished:
            metrics.TURNS_FINISHED.labels(status="failed").inc()
            log.warning("ended a turn whose workflow was gone", turn_id=turn_id)
            ended += 1
    return ended


async def resignal_decisions(client: Client, pool: Pool, *, older_than_seconds: float = 10.0) -> int:
    """Tell workflows of decisions the API recorded but could not signal; how many were sent."""
    sent = 0
    for approval in await approvals.unsignalled(pool, older_than_seconds=older_than_seconds):
        if await signal_decision(
            client, turn_id=approval.turn_id, approval_id=approval.id, decision=approval.status
        ):
            await approvals.mark_signalled(pool, approval_id=approval.id)
            sent += 1
    return sent


async def _reconcile_forever(client: Client, pool: Pool, settings: Settings) -> None:
    while True:
        try:
            await reconcile_queued_turns(client, pool, settings)
            await resignal_decisions(client, pool)
            await idempotency.forget_expired(pool)
            await end_orphaned_turns(client, pool)
        except Exception:
            log.exception("reconciling queued turns failed")
        await asyncio.sleep(_RECONCILE_EVERY)


def _serve_metrics(port: int, host: str) -> Runtime:
    """Serve the worker's metrics on `host:port`, the Temporal SDK's among them; the runtime
    whose clients report to the SDK's exporter (on a loopback port of its own, proxied)."""
    from devstack import free_port

    sdk_port = free_port()
    runtime = Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=f"127.0.0.1:{sdk_port}", counters_total_suffix=True, durations_as_seconds=True
            )
        )
    )
    metrics.include_exposition(f"http://127.0.0.1:{sdk_port}/metrics")
    metrics.serve(port, host)
    log.info("serving metrics", host=host, port=port)
    return runtime


async def run_worker(settings: Settings, *, metrics_port: int = 0, metrics_host: str = "127.0.0.1") -> None:
    """Run a worker until SIGTERM/SIGINT; with `metrics_port`, serve its metrics there."""
    runtime = _serve_metrics(metrics_port, metrics_host) if metrics_port else None
    pool = await create_pool(settings.require_database_url())
    client = await Client.connect(
        settings.require_temporal_address(),
        namespace=settings.temporal_namespace,
        runtime=runtime,
        # Tracing (when on): the worker takes the client's interceptors as its own too.
        interceptors=telemetry.temporal_interceptors(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    registry = build_registry(settings, pool, tool_servers=True)
    await registry.start()
    await publish_tools(pool, registry)
    worker = build_worker(client, pool, settings, registry)
    reconciler = asyncio.create_task(_reconcile_forever(client, pool, settings))
    cataloguer = asyncio.create_task(keep_catalog_fresh(pool, registry))
    log.info("worker started", task_queue=settings.temporal_task_queue)
    try:
        async with worker:
            await stop.wait()
            log.info("worker stopping", grace_seconds=settings.worker_shutdown_grace.total_seconds())
    finally:
        for task in (reconciler, cataloguer):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await registry.aclose()
        await pool.close()
