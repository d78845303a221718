"""Bookkeeping activities of a turn: status changes and the terminal events."""

from typing import Any

from temporalio import activity

from activities.heartbeat import turn_closed_is_final
from core import contracts as c
from core import metrics
from core.errors import is_retryable_code
from store import messages, turns
from store.db import Pool


class TurnActivities:
    """Activities that write a turn's status; built once per worker with the pool."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    @activity.defn(name=c.SET_TURN_STATUS)
    async def set_status(self, change: c.TurnStatusInput) -> None:
        with turn_closed_is_final():
            await turns.set_status(
                self._pool, turn_id=change.turn_id, status=change.status, dedupe_key=change.dedupe_key
            )

    @activity.defn(name=c.FINISH_TURN)
    async def finish(self, end: c.FinishTurnInput) -> None:
        error: dict[str, Any] | None = None
        if end.status == "completed":
            message = await messages.get(self._pool, message_id=end.message_id or "")
            usage = await turns.usage(self._pool, turn_id=end.turn_id)
            terminal = (
                "complete",
                {
                    "message_id": end.message_id,
                    "content": message.content if message else "",
                    "usage": usage.model_dump(),
                },
            )
        elif end.status == "cancelled":
            terminal = ("cancelled", {})
        else:
            code = end.error_code or "internal_error"
            error = {
                "code": code,
                "message": end.error_message or code,
                "retryable": is_retryable_code(code),
            }
            terminal = (
                "error",
                {"error": error["message"], "code": code, "retryable": error["retryable"]},
            )
        ended = await turns.finish(
            self._pool,
            turn_id=end.turn_id,
            status=end.status,
            terminal_event=terminal,
            error=error,
            output_message_id=end.message_id,
        )
        if ended:  # once per turn: a retried finish writes (and counts) nothing
            metrics.TURNS_FINISHED.labels(status=end.status).inc()
            turn = await turns.get_by_id(self._pool, turn_id=end.turn_id)
            if turn is not None and turn.finished_at is not None:
                metrics.TURN_DURATION.observe((turn.finished_at - turn.created_at).total_seconds())
