"""`TurnWorkflow`: one conversation turn, from the user's message to a terminal event.

The workflow only decides: which step runs next, which tool calls run, wait for a person
or expire, and how the turn ends. Every write (events, messages, statuses, approvals)
happens in activities, which read the transcript and arguments from PostgreSQL by id, so
the history holds ids and outcomes, never text. Waiting for a person is a durable
`wait_condition` with a timer: it holds no worker slot, for hours if need be.
"""

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.exceptions import TimeoutError as ActivityTimeout

with workflow.unsafe.imports_passed_through():
    from core import contracts as c
    from core.errors import MODEL_ERROR_CODES
    from workflows import policies


@workflow.defn(name=c.WORKFLOW_NAME)
class TurnWorkflow:
    def __init__(self) -> None:
        self._decisions: dict[str, str] = {}
        self._cancel_requested = False
        self._undecided = 0  # gated calls of the current step still waiting for a person

    @workflow.signal(name=c.CANCEL_REQUESTED_SIGNAL)
    def cancel_requested(self) -> None:
        self._cancel_requested = True

    def _stop_if_cancelled(self) -> None:
        """Honour a cancel that the SDK absorbed (it arrived as an activity was finishing)."""
        if self._cancel_requested:
            raise asyncio.CancelledError

    @workflow.signal(name=c.APPROVAL_DECIDED_SIGNAL)
    def approval_decided(self, decided: c.ApprovalDecided) -> None:
        # Repeated signals (the API's and the reconciler's) are harmless: the first one counts.
        self._decisions.setdefault(decided.approval_id, decided.decision)

    @workflow.run
    async def run(self, turn: c.TurnInput) -> c.TurnOutcome:
        try:
            # The model activity marks the turn `running` as it starts (one round trip fewer
            # before the first token); `_set_status` serves later transitions.
            return await self._steps(turn)
        except asyncio.CancelledError:
            return await self._finish(turn, "cancelled")
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                return await self._finish(turn, "cancelled")
            code, message = _classify(err)
            return await self._finish(turn, "failed", error_code=code, error_message=message)

    async def _steps(self, turn: c.TurnInput) -> c.TurnOutcome:
        for step in range(1, turn.max_steps + 1):
            result = await workflow.execute_activity(
                c.STREAM_MODEL_REPLY,
                c.ModelStepInput(turn_id=turn.turn_id, conversation_id=turn.conversation_id, step=step),
                result_type=c.ModelStepResult,
                **policies.MODEL_CALL,
            )
            self._stop_if_cancelled()
            if not result.tool_calls:
                return await self._finish(turn, "completed", message_id=result.message_id)
            await self._use_tools(turn, step, result.message_id)
            self._stop_if_cancelled()
        return await self._finish(
            turn,
            "failed",
            error_code="max_steps_exceeded",
            error_message=f"the turn needed more than {turn.max_steps} model steps",
        )

    async def _use_tools(self, turn: c.TurnInput, step: int, message_id: str) -> None:
        """Run one step's tool calls: the ungated ones in parallel, the gated ones once decided."""
        plan = await workflow.execute_activity(
            c.PREPARE_TOOL_CALLS,
            c.ToolStepInput(
                turn_id=turn.turn_id,
                conversation_id=turn.conversation_id,
                user_id=turn.user_id,
                message_id=message_id,
                approval_timeout_seconds=turn.approval_timeout_seconds,
            ),
            result_type=c.ToolPlan,
            **policies.TURN_BOOKKEEPING,
        )
        ungated = [call for call in plan.calls if call.action == "run"]
        gated = [call for call in plan.calls if call.action == "approve"]
        if gated:
            await self._set_status(turn, "awaiting_approval", f"status:awaiting_approval:{step}")
        self._undecided = len(gated)
        wait = timedelta(seconds=turn.approval_timeout_seconds)
        # Each gated call goes its own way once decided: an approved email does not wait
        # for a sibling approval that nobody has answered yet.
        await asyncio.gather(
            *(self._run_tool(turn, message_id, call) for call in ungated),
            *(self._gated(turn, step, message_id, call, wait) for call in gated),
        )

    async def _gated(
        self, turn: c.TurnInput, step: int, message_id: str, call: c.PlannedCall, wait: timedelta
    ) -> None:
        decision = await self._decision(call, wait)
        self._undecided -= 1
        if self._undecided == 0:  # nothing left for a person: the turn runs again
            await self._set_status(turn, "running", f"status:running:{step + 1}")
        if decision == "approved":
            await self._run_tool(turn, message_id, call)
        else:
            await self._record(turn, message_id, call, "rejected")

    async def _decision(self, call: c.PlannedCall, wait: timedelta) -> str:
        approval_id = call.approval_id or ""
        try:
            await workflow.wait_condition(lambda: approval_id in self._decisions, timeout=wait)
            return self._decisions[approval_id]
        except TimeoutError:  # the builtin, raised by wait_condition
            # The database decides: a decision that arrived just now wins over the expiry.
            state = await workflow.execute_activity(
                c.EXPIRE_APPROVAL,
                c.ExpireApprovalInput(approval_id=approval_id),
                result_type=c.ApprovalState,
                **policies.TURN_BOOKKEEPING,
            )
            return state.status

    async def _run_tool(self, turn: c.TurnInput, message_id: str, call: c.PlannedCall) -> None:
        try:
            await workflow.execute_activity(
                c.RUN_TOOL,
                c.RunToolInput(
                    turn_id=turn.turn_id,
                    conversation_id=turn.conversation_id,
                    user_id=turn.user_id,
                    message_id=message_id,
                    tool_call_id=call.tool_call_id,
                    tool=call.tool,
                    approval_id=call.approval_id,
                ),
                result_type=c.ToolRunResult,
                **policies.TOOL_CALL.get(call.policy, policies.TOOL_CALL["default"]),
            )
        except ActivityError as err:
            if isinstance(err.cause, CancelledError):
                raise
            cause = err.cause
            if isinstance(cause, ApplicationError):
                code, message = cause.type or "tool_failed", cause.message
            elif isinstance(cause, ActivityTimeout):
                code, message = "tool_unavailable", "the tool did not answer in time, on every attempt"
            else:
                code, message = "tool_failed", "the tool failed on every attempt"
            await self._record(turn, message_id, call, "error", error_code=code, error_message=message)

    async def _record(
        self,
        turn: c.TurnInput,
        message_id: str,
        call: c.PlannedCall,
        status: str,
        *,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> None:
        await workflow.execute_activity(
            c.RECORD_TOOL_RESULT,
            c.RecordToolResultInput(
                turn_id=turn.turn_id,
                conversation_id=turn.conversation_id,
                tool_call_id=call.tool_call_id,
                tool=call.tool,
                status=status,
                approval_id=call.approval_id,
                error_code=error_code,
                error_message=error_message,
                message_id=message_id,
            ),
            **policies.TURN_BOOKKEEPING,
        )

    async def _set_status(self, turn: c.TurnInput, status: str, dedupe_key: str) -> None:
        await workflow.execute_activity(
            c.SET_TURN_STATUS,
            c.TurnStatusInput(turn_id=turn.turn_id, status=status, dedupe_key=dedupe_key),
            **policies.TURN_BOOKKEEPING,
        )

    async def _finish(
        self,
        turn: c.TurnInput,
        status: str,
        *,
        message_id: str | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> c.TurnOutcome:
        await workflow.execute_activity(
            c.FINISH_TURN,
            c.FinishTurnInput(
                turn_id=turn.turn_id,
                status=status,
                message_id=message_id,
                error_code=error_code,
                error_message=error_message,
            ),
            **policies.TURN_BOOKKEEPING,
        )
        return c.TurnOutcome(status=status, error_code=error_code)


def _classify(err: ActivityError) -> tuple[str, str]:
    """The `error` event's code and message for a failed activity."""
    cause = err.cause
    if isinstance(cause, ApplicationError) and cause.type in MODEL_ERROR_CODES:
        return cause.type, cause.message
    if isinstance(cause, ActivityTimeout):
        return "model_unavailable", "the model call timed out on every attempt"
    return "internal_error", "the turn failed on an internal error"
