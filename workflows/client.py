"""Starting, signalling and cancelling turn workflows: shared by the API and the worker."""

from datetime import timedelta

import structlog
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from core.config import Settings
from core.contracts import (
    APPROVAL_DECIDED_SIGNAL,
    CANCEL_REQUESTED_SIGNAL,
    WORKFLOW_NAME,
    ApprovalDecided,
    TurnInput,
)

log = structlog.get_logger(__name__)


def turn_input(*, turn_id: str, conversation_id: str, user_id: str, settings: Settings) -> TurnInput:
    """The workflow's input: ids, and the settings a workflow may not read itself."""
    return TurnInput(
        turn_id=turn_id,
        conversation_id=conversation_id,
        user_id=user_id,
        max_steps=settings.max_steps,
        approval_timeout_seconds=settings.approval_timeout.total_seconds(),
    )


async def start_turn(client: Client, turn: TurnInput, *, task_queue: str) -> bool:
    """Start the turn's workflow (id = turn id); False if it was already started."""
    try:
        await client.start_workflow(
            WORKFLOW_NAME,
            turn,
            id=turn.turn_id,
            task_queue=task_queue,
            # A turn id is used once: a duplicate start (a retried request, the reconciler)
            # must never run the turn twice.
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            execution_timeout=timedelta(days=30),
        )
    except WorkflowAlreadyStartedError:
        return False
    return True


def turn_handle(client: Client, turn_id: str) -> WorkflowHandle:
    return client.get_workflow_handle(turn_id)


async def signal_decision(client: Client, *, turn_id: str, approval_id: str, decision: str) -> bool:
    """Tell the turn's workflow of a decision; True once it is delivered or no longer needed.

    A workflow that has ended (the turn was cancelled meanwhile) needs no signal.
    """
    try:
        await turn_handle(client, turn_id).signal(
            APPROVAL_DECIDED_SIGNAL, ApprovalDecided(approval_id=approval_id, decision=decision)
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return True
        log.warning("signalling a decision failed", approval_id=approval_id, error=str(err))
        return False
    return True


async def cancel_turn_workflow(client: Client, turn_id: str) -> None:
    """Cancel the turn's workflow. The signal first: a cancellation that reaches the workflow
    while an activity is finishing can be absorbed by the SDK; the flag it sets cannot."""
    handle = turn_handle(client, turn_id)
    await handle.signal(CANCEL_REQUESTED_SIGNAL)
    await handle.cancel()
