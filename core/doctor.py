"""`assistant doctor`: the checks of `/readyz` from the command line, with a hint for each
problem (the troubleshooting guide, made executable), plus a worker check and config checks.

It uses the same configuration as every command: unset `DATABASE_URL`/`TEMPORAL_ADDRESS` are
taken from a running `assistant dev` in the data dir. Exit 0 when everything is ok or only
degraded, 1 when a required check (database, temporal) failed.
"""

import asyncio
import contextlib
import json
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from core import health
from core.config import Settings

_NO_DEV = "no `assistant dev` runs in this data dir"
_MARK = {"ok": "ok", "degraded": "WARN", "failed": "FAIL"}


def _db_address(dsn: str | None) -> str:
    """host:port of a DSN, never its user or password."""
    if not dsn:
        return "(not set)"
    try:
        parts = urlsplit(dsn)
        return f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    except ValueError:
        return "(unparsable DATABASE_URL)"


def _model_base(settings: Settings) -> str:
    return health.without_credentials(settings.openai_base_url or "https://api.openai.com/v1")


def _hint(name: str, result: health.CheckResult, settings: Settings) -> str | None:
    if result.status == "ok":
        return None
    text = f"{result.message} {result.detail or ''}"
    if name == "database":
        if not settings.database_url:
            return f"DATABASE_URL is not set and {_NO_DEV}: set it or start `assistant dev`"
        return (
            f"PostgreSQL unreachable at {_db_address(settings.database_url)} — is `assistant dev` running"
            " (or your PostgreSQL server)? check DATABASE_URL, then `assistant migrate`"
        )
    if name == "temporal":
        if not settings.temporal_address:
            return f"TEMPORAL_ADDRESS is not set and {_NO_DEV}: set it or start `assistant dev`"
        return (
            f"Temporal unreachable at {settings.temporal_address} — is `assistant dev` (or the Temporal"
            f" server) running? check TEMPORAL_ADDRESS and TEMPORAL_NAMESPACE ({settings.temporal_namespace})"
        )
    if name == "model":
        if "no model configured" in text:
            return (
                "set OPENAI_BASE_URL (an OpenAI-compatible server) and OPENAI_API_KEY,"
                " or run `assistant dev` (it starts an offline model)"
            )
        if "refused the API key" in text:
            return f"{_model_base(settings)} refused the key: check OPENAI_API_KEY"
        if "not offered" in text:
            return "set ASSISTANT_MODEL to a model the endpoint offers"
        return (
            f"is the model server running at {_model_base(settings)}? check OPENAI_BASE_URL"
            " (turns fail until it answers)"
        )
    if name == "mcp_servers":
        return (
            "see `assistant tools list` and the worker's log; check MCP_CONFIG and that each server runs;"
            " a server whose tools changed needs `assistant tools trust <server>`"
        )
    if name == "disk":
        return f"free some space on the disk of {settings.assistant_data_dir} and the temporary directory"
    if name == "memory":
        return "run fewer processes on this machine or give it more memory"
    if name == "worker":
        if "no worker polls" not in text:
            return "unknown until Temporal answers (see temporal above)"
        return (
            "start `assistant worker` (or `assistant dev`) with"
            f" TEMPORAL_TASK_QUEUE={settings.temporal_task_queue}: turns stay queued until a worker polls"
        )
    if name == "smtp":
        return (
            "set SMTP_HOST, SMTP_PORT and SMTP_FROM (and SMTP_USER/SMTP_PASSWORD):"
            " send_email fails until then"
        )
    if name == "mcp_config":
        return "fix MCP_CONFIG: it must name a readable JSON file in the `mcpServers` shape (docs/TOOLS.md)"
    return None


def _config_checks(settings: Settings) -> dict[str, health.CheckResult]:
    checks: dict[str, health.CheckResult] = {}
    if settings.smtp_host and settings.smtp_from:
        checks["smtp"] = health.CheckResult(
            "ok", "SMTP configured", f"{settings.smtp_host}:{settings.smtp_port or '(default port)'}"
        )
    else:
        missing = [
            n for n, v in (("SMTP_HOST", settings.smtp_host), ("SMTP_FROM", settings.smtp_from)) if not v
        ]
        checks["smtp"] = health.CheckResult("degraded", "SMTP not configured", f"{', '.join(missing)} unset")
    if settings.mcp_config is not None:
        try:
            servers = json.loads(settings.mcp_config.read_text()).get("mcpServers", {})
            checks["mcp_config"] = health.CheckResult(
                "ok",
                f"{len(servers)} tool server(s) configured",
                f"{settings.mcp_config}: {', '.join(servers)}",
            )
        except (OSError, ValueError, AttributeError) as err:
            checks["mcp_config"] = health.CheckResult(
                "degraded", "MCP_CONFIG cannot be read", f"{settings.mcp_config}: {type(err).__name__}: {err}"
            )
    return checks


async def diagnose(settings: Settings, *, per_check: float = health.CHECK_TIMEOUT) -> dict[str, Any]:
    """Every check, with a hint for each problem: `{status, checks: {name: {status, latency_ms,
    message, detail, hint}}}`."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
    from temporalio.client import Client

    from store.db import create_pool

    async def connect_pool() -> Any:
        if not settings.database_url:
            raise health.Degraded("DATABASE_URL not set", _NO_DEV)
        return await create_pool(settings.database_url, min_size=1, max_size=2)

    async def connect_temporal() -> Client:
        if not settings.temporal_address:
            raise health.Degraded("TEMPORAL_ADDRESS not set", _NO_DEV)
        return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)

    pool_task = asyncio.ensure_future(connect_pool())
    temporal_task = asyncio.ensure_future(connect_temporal())

    async def fetchval(query: str) -> Any:
        return await (await asyncio.shield(pool_task)).fetchval(query)

    async def fetch(query: str) -> Any:
        return await (await asyncio.shield(pool_task)).fetch(query)

    async def temporal_client() -> Client:
        return await asyncio.shield(temporal_task)

    async def worker() -> health.CheckResult:
        client = await temporal_client()
        queue = settings.temporal_task_queue
        pollers = 0
        for kind in (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY):
            answer = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=settings.temporal_namespace,
                    task_queue=TaskQueue(name=queue),
                    task_queue_type=kind,
                ),
                timeout=timedelta(seconds=2),
            )
            pollers = max(pollers, len(answer.pollers))
        if not pollers:
            raise health.Degraded("no worker polls the task queue", f"task queue {queue!r}")
        return health.CheckResult(
            "ok", f"{pollers} worker(s) polling", f"{pollers} worker(s) polling task queue {queue!r}"
        )

    checks = health.standard_checks(settings, fetchval=fetchval, fetch=fetch, temporal_client=temporal_client)
    checks["worker"] = worker
    try:
        report = await health.run_checks(checks, per_check=per_check)
    finally:
        for task in (pool_task, temporal_task):
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if pool_task.done() and not pool_task.cancelled() and pool_task.exception() is None:
            await pool_task.result().close()
    report.checks.update(_config_checks(settings))
    return {
        "status": report.status,
        "checks": {
            name: {
                "status": result.status,
                "latency_ms": result.latency_ms,
                "message": result.message,
                "detail": result.detail,
                "hint": _hint(name, result, settings),
            }
            for name, result in report.checks.items()
        },
    }


def render(diagnosis: dict[str, Any]) -> str:
    """One line per check (status, name, latency, what was found), a hint under each problem."""
    lines = []
    for name, check in diagnosis["checks"].items():
        message, detail = check["message"], check["detail"]
        said = detail if detail and message in detail else f"{message} — {detail}" if detail else message
        lines.append(f"{_MARK[check['status']]:<4}  {name:<12} {check['latency_ms']:>8.1f} ms  {said}")
        if check["hint"]:
            lines.append(f"{'':<4}  {'':<12} {'':>11}  hint: {check['hint']}")
    verdict = {
        "ok": "everything is ok",
        "degraded": "degraded: the service runs, with the problems above",
        "failed": "FAILED: a required service is unreachable; the API answers 503 on /readyz",
    }[diagnosis["status"]]
    lines.append(verdict)
    return "\n".join(lines)


def exit_code(diagnosis: dict[str, Any]) -> int:
    return 1 if diagnosis["status"] == "failed" else 0
