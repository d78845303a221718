"""Starting and cancelling turn workflows: shared by the API and the worker's reconciler."""

from datetime import timedelta

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from core.contracts import WORKFLOW_NAME, TurnInput


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
