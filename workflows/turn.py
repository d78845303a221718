"""`TurnWorkflow`: one conversation turn, from the user's message to a terminal event.

The workflow only decides: which step runs next, and how the turn ends. Every write
(events, messages, statuses) happens in activities, which read the transcript from
PostgreSQL by id, so the history holds ids and outcomes, never text.
"""

import asyncio

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from core import contracts as c
    from core.errors import MODEL_ERROR_CODES
    from workflows import policies


@workflow.defn(name=c.WORKFLOW_NAME)
class TurnWorkflow:
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
            # Tools are not offered to the model yet, so a reply ends the turn.
            return await self._finish(turn, "completed", message_id=result.message_id)
        return await self._finish(
            turn,
            "failed",
            error_code="max_steps_exceeded",
            error_message=f"the turn needed more than {turn.max_steps} model steps",
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
    if isinstance(cause, TimeoutError):
        return "model_unavailable", "the model call timed out on every attempt"
    return "internal_error", "the turn failed on an internal error"
