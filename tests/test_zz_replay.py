"""Workflow determinism: every TurnWorkflow history recorded by this run replays cleanly.

Named to run last, so it replays the histories of the tests before it (completed, failed,
cancelled, retried and crashed turns); it runs a turn of its own so it never replays nothing.
"""

import asyncio

from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from tests.conftest import marker
from tests.helpers import create_conversation, start_turn_json, wait_turn
from workflows.turn import TurnWorkflow


async def test_recorded_histories_replay(user, model, temporal):
    tag = marker()
    model.script(tag, [{"kind": "reply", "content": "replay me"}])
    conv = await create_conversation(user.client)
    started = await start_turn_json(user.client, conv["id"], f"hi {tag}")
    assert (await wait_turn(user.client, started["turn"]["id"]))["status"] == "completed"

    await temporal.get_workflow_handle(started["turn"]["id"]).result()

    histories: list[WorkflowHistory] = []
    for _ in range(50):  # visibility is eventually consistent
        ids = [
            e.id
            async for e in temporal.list_workflows(
                "WorkflowType = 'TurnWorkflow' AND ExecutionStatus != 'Running'"
            )
        ]
        if started["turn"]["id"] in ids:
            break
        await asyncio.sleep(0.1)
    for workflow_id in ids:
        histories.append(await temporal.get_workflow_handle(workflow_id).fetch_history())
    assert any(h.workflow_id == started["turn"]["id"] for h in histories)
    replayer = Replayer(workflows=[TurnWorkflow])
    failures = {}
    for history in histories:
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        if result.replay_failure is not None:
            failures[history.workflow_id] = str(result.replay_failure)
    assert failures == {}
    assert len(histories) >= 1
