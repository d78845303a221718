"""Tool activities: plan a step's tool calls, run one, record a result, expire an approval.

Inputs are ids; arguments are read from the stored assistant message (or from the
approval, when a person edited them), and results are written as tool messages with their
`tool_result` event in one transaction, so a retried activity never answers a call twice.
"""

import asyncio
import json
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeat import heartbeating, turn_closed_is_final
from core import contracts as c
from core import metrics
from core.ids import tool_message_id
from store import approvals, conversations, events, messages
from store.db import Pool
from tools.base import (
    InvalidArguments,
    ToolContext,
    ToolFailed,
    ToolTemporarilyFailed,
    parse_arguments,
    storable_text,
)
from tools.registry import ToolRegistry

log = structlog.get_logger(__name__)

# Results longer than this are cut before they reach the model (and the event log).
MAX_RESULT_CHARS = 100_000


class ToolActivities:
    """Activities that run tools; built once per worker with the pool and the registry."""

    def __init__(self, pool: Pool, registry: ToolRegistry) -> None:
        self._pool = pool
        self._registry = registry

    @activity.defn(name=c.PREPARE_TOOL_CALLS)
    async def prepare(self, step: c.ToolStepInput) -> c.ToolPlan:
        with turn_closed_is_final():
            return await self._prepare(step)

    async def _prepare(self, step: c.ToolStepInput) -> c.ToolPlan:
        """Announce each call, answer the ones that cannot run, open approvals for gated ones."""
        message = await messages.get(self._pool, message_id=step.message_id)
        conversation = await conversations.get_by_id(self._pool, conversation_id=step.conversation_id)
        if message is None or conversation is None:
            raise ApplicationError("the turn's message or conversation is gone", type="internal_error")
        # What the conversation allows, not what is usable this instant: a tool whose server
        # dropped since the model saw it is run anyway, to say so (or retry) with its reason.
        allowed = None if conversation.tools is None else set(conversation.tools)
        plan = c.ToolPlan()
        for call in message.tool_calls or []:
            plan.calls.append(await self._plan_call(step, call, allowed))
        return plan

    async def _plan_call(
        self, step: c.ToolStepInput, call: dict[str, Any], allowed: set[str] | None
    ) -> c.PlannedCall:
        call_id, name = call["id"], call["function"]["name"]
        tool = self._registry.get(name) if allowed is None or name in allowed else None
        needs_person = tool is not None and tool.spec.requires_confirmation
        invalid: ToolFailed | None = None
        try:
            arguments = parse_arguments(call["function"]["arguments"])
        except InvalidArguments as err:
            arguments, invalid = {}, err
        await events.append_one(
            self._pool,
            turn_id=step.turn_id,
            type="tool_request",
            payload={
                "tool_call_id": call_id,
                "tool_id": name,
                "arguments": arguments,
                "requires_confirmation": needs_person,
            },
            dedupe_key=f"tool_request:{step.message_id}:{call_id}",
        )
        failure: ToolFailed | None = invalid
        if tool is None:
            failure = ToolFailed("unknown_tool", f"there is no tool named {name!r} in this conversation")
        elif failure is None:
            try:
                self._registry.validate(name, arguments)
            except InvalidArguments as err:
                failure = err
        if failure is not None or tool is None:
            assert failure is not None
            if activity.info().attempt == 1:
                label = name if tool else metrics.UNKNOWN_TOOL
                metrics.TOOL_CALLS.labels(tool=label, outcome="invalid").inc()
            await _store_result(
                self._pool,
                CallRef(step.turn_id, step.conversation_id, step.message_id, call_id, name),
                "error",
                error=failure,
            )
            return c.PlannedCall(tool_call_id=call_id, tool=name, action="done")
        if not needs_person:
            return c.PlannedCall(tool_call_id=call_id, tool=name, action="run", policy=tool.spec.policy)
        approval = await self._open_approval(step, call_id, name, arguments)
        return c.PlannedCall(
            tool_call_id=call_id,
            tool=name,
            action="approve",
            approval_id=approval.id,
            policy=tool.spec.policy,
        )

    async def _open_approval(
        self, step: c.ToolStepInput, call_id: str, name: str, arguments: dict[str, Any]
    ) -> approvals.Approval:
        async with self._pool.acquire() as conn, conn.transaction():
            approval = await approvals.create(
                conn,
                turn_id=step.turn_id,
                conversation_id=step.conversation_id,
                user_id=step.user_id,
                step_message_id=step.message_id,
                tool=name,
                tool_call_id=call_id,
                arguments=arguments,
                expires_in=timedelta(seconds=step.approval_timeout_seconds),
            )
            await events.append(
                conn,
                turn_id=step.turn_id,
                type="approval_required",
                payload={
                    "approval_id": approval.id,
                    "tool_call_id": call_id,
                    "tool_id": name,
                    "arguments": approval.arguments,
                    "expires_at": approval.expires_at.isoformat().replace("+00:00", "Z"),
                },
                dedupe_key=f"approval_required:{step.message_id}:{call_id}",
            )
        return approval

    @activity.defn(name=c.RUN_TOOL)
    async def run(self, call: c.RunToolInput) -> c.ToolRunResult:
        with turn_closed_is_final():
            return await self._run(call)

    async def _run(self, call: c.RunToolInput) -> c.ToolRunResult:
        done = await messages.get(
            self._pool, message_id=tool_message_id(call.turn_id, call.message_id, call.tool_call_id)
        )
        if done is not None:  # a retry after the result was stored
            return c.ToolRunResult(status="done")
        tool = self._registry.get(call.tool)
        if tool is None:
            raise ApplicationError(f"this worker cannot run {call.tool}", type="unknown_tool")
        arguments = await self._arguments(call)
        context = ToolContext(
            turn_id=call.turn_id,
            tool_call_id=call.tool_call_id,
            user_id=call.user_id,
            idempotency_key=f"{call.turn_id}:{call.message_id}:{call.tool_call_id}",
        )
        started = time.monotonic()
        outcome = "error"
        try:
            self._registry.validate(call.tool, arguments)  # edited arguments too
            async with heartbeating():
                result = await _uninterrupted(tool.run(arguments, context))
            outcome = "ok"
        except ToolFailed as err:
            await _store_result(self._pool, CallRef.of(call), "error", error=err)
            return c.ToolRunResult(status="error")
        except ToolTemporarilyFailed as err:
            outcome = "retry"
            attempt = activity.info().attempt
            await events.append_one(
                self._pool,
                turn_id=call.turn_id,
                type="tool_retry",
                payload={
                    "tool_call_id": call.tool_call_id,
                    "tool_id": call.tool,
                    "attempt": attempt,
                    "error": str(err),
                },
            )
            raise ApplicationError(str(err), type=ToolTemporarilyFailed.code) from err
        except Exception as err:  # a tool's bug is the model's news, not the turn's end
            log.exception("tool raised", tool=call.tool, turn_id=call.turn_id)
            failure = ToolFailed("tool_failed", f"{call.tool} failed: {type(err).__name__}: {err}")
            await _store_result(self._pool, CallRef.of(call), "error", error=failure)
            return c.ToolRunResult(status="error")
        finally:
            metrics.TOOL_CALLS.labels(tool=call.tool, outcome=outcome).inc()
            metrics.TOOL_CALL_DURATION.labels(tool=call.tool).observe(time.monotonic() - started)
        log.info(
            "tool ran", tool=call.tool, turn_id=call.turn_id, ms=round((time.monotonic() - started) * 1000)
        )
        await _store_result(self._pool, CallRef.of(call), "ok", result=result)
        return c.ToolRunResult(status="ok")

    async def _arguments(self, call: c.RunToolInput) -> dict[str, Any]:
        if call.approval_id is not None:
            approval = await approvals.get_by_id(self._pool, approval_id=call.approval_id)
            # The database's decision, not the signal's word, allows a gated call to run.
            if (
                approval is None
                or approval.status != "approved"
                or approval.tool_call_id != call.tool_call_id
            ):
                raise ApplicationError(
                    "the call has no approval to run on", type="approval_missing", non_retryable=True
                )
            if activity.info().attempt == 1:
                metrics.count_decision(approval.status, approval.created_at, approval.decided_at)
            return approval.arguments
        message = await messages.get(self._pool, message_id=call.message_id)
        raw = (
            next(
                (
                    t["function"]["arguments"]
                    for t in (message.tool_calls or [])
                    if t["id"] == call.tool_call_id
                ),
                "{}",
            )
            if message
            else "{}"
        )
        return parse_arguments(raw)

    @activity.defn(name=c.RECORD_TOOL_RESULT)
    async def record(self, outcome: c.RecordToolResultInput) -> None:
        with turn_closed_is_final():
            return await self._record(outcome)

    async def _record(self, outcome: c.RecordToolResultInput) -> None:
        if outcome.status == "rejected":
            approval = await approvals.get_by_id(self._pool, approval_id=outcome.approval_id or "")
            reason = _rejection_reason(approval)
            await _store_result(
                self._pool, CallRef.of(outcome), "rejected", result={"status": "rejected", "reason": reason}
            )
            if activity.info().attempt == 1:
                metrics.TOOL_CALLS.labels(tool=outcome.tool, outcome="rejected").inc()
                if approval is not None:
                    metrics.count_decision(approval.status, approval.created_at, approval.decided_at)
            return
        if activity.info().attempt == 1:
            metrics.TOOL_CALLS.labels(tool=outcome.tool, outcome="error").inc()
        failure = ToolFailed(outcome.error_code or "tool_failed", outcome.error_message or "the tool failed")
        await _store_result(self._pool, CallRef.of(outcome), "error", error=failure)

    @activity.defn(name=c.EXPIRE_APPROVAL)
    async def expire(self, expiry: c.ExpireApprovalInput) -> c.ApprovalState:
        async with self._pool.acquire() as conn, conn.transaction():
            await approvals.lock_turn_of(conn, approval_id=expiry.approval_id)  # turn first, always
            approval = await approvals.close_unless_decided(
                conn, approval_id=expiry.approval_id, status="expired", reason="approval expired"
            )
        return c.ApprovalState(status=approval.status)


async def _uninterrupted(work: Coroutine[Any, Any, Any]) -> Any:
    """Run a tool to its end even if the turn is cancelled meanwhile.

    Heartbeats deliver cancellation, but a side effect cut half-way (an email during DATA)
    would only make its outcome unknown; the turn ends cancelled once the call is done.
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if task.done() or not activity.is_cancelled():
            raise
        return await task


# How much of an oversized result's JSON text is kept, as a preview the model can still read.
_PREVIEW_CHARS = MAX_RESULT_CHARS // 2


def _cut(content: str) -> dict[str, Any]:
    """An oversized result as valid JSON: a note saying so and the start of its text. Built-in
    tools cap their own results; this guards against tools (and servers) that do not."""
    return {
        "truncated": True,
        "note": f"the result was {len(content):,} characters of JSON; only the first "
        f"{_PREVIEW_CHARS:,} are kept, as text",
        "preview": content[:_PREVIEW_CHARS],
    }


def _storable(value: Any) -> Any:
    """`value` without what jsonb refuses: NUL is dropped, a lone surrogate becomes U+FFFD."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {_storable(str(k)): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(item) for item in value]
    return value


def _rejection_reason(approval: approvals.Approval | None) -> str:
    if approval is None or approval.status == "expired":
        return "approval expired"
    if approval.status == "cancelled":
        return "the turn was cancelled"
    return approval.reason or "rejected by the user"


@dataclass(frozen=True)
class CallRef:
    """One tool call of one model reply: call ids are unique within a reply only."""

    turn_id: str
    conversation_id: str
    message_id: str
    tool_call_id: str
    tool: str

    @classmethod
    def of(cls, call: c.RunToolInput | c.RecordToolResultInput) -> "CallRef":
        return cls(call.turn_id, call.conversation_id, call.message_id, call.tool_call_id, call.tool)


async def _store_result(
    pool: Pool,
    call: CallRef,
    status: str,
    *,
    result: Any = None,
    error: ToolFailed | None = None,
) -> None:
    """The tool message for the model and its `tool_result` event, in one transaction."""
    payload: dict[str, Any] = {"tool_call_id": call.tool_call_id, "tool_id": call.tool, "status": status}
    if error is None:
        try:  # NaN/Infinity cannot be stored (jsonb) and are not JSON: the tool's fault
            content = json.dumps(_storable(result), ensure_ascii=False, default=str, allow_nan=False)
            result = json.loads(content)
        except ValueError:
            error, status = (
                ToolFailed("tool_failed", f"{call.tool} returned a result that is not JSON"),
                "error",
            )
    if error is not None:
        described = _storable(error.as_result())
        content = json.dumps({"error": described}, ensure_ascii=False, default=str)
        if len(content) > MAX_RESULT_CHARS:  # a server's error text can be as long as a result
            described = _storable({"code": error.code, "message": error.message[:_PREVIEW_CHARS] + " …[cut]"})
            content = json.dumps({"error": described}, ensure_ascii=False, default=str)
        payload["error"] = described
    else:
        if len(content) > MAX_RESULT_CHARS:
            result = _cut(content)
            content = json.dumps(result, ensure_ascii=False)
        payload["result"] = result
    async with pool.acquire() as conn, conn.transaction():
        await messages.upsert_tool_message(
            conn,
            message_id=tool_message_id(call.turn_id, call.message_id, call.tool_call_id),
            conversation_id=call.conversation_id,
            turn_id=call.turn_id,
            tool_call_id=call.tool_call_id,
            content=content,
        )
        await events.append(
            conn,
            turn_id=call.turn_id,
            type="tool_result",
            payload=payload,
            dedupe_key=f"tool_result:{call.message_id}:{call.tool_call_id}",
        )
