"""Approval expiry on the time-skipping test server: 24 h pass in no time, the approval
expires, the model is told, and the turn completes. Also: a decision whose signal was
lost (the API died after committing it) still reaches the workflow through the reconciler."""

import sys
import time
import uuid
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from core.contracts import WORKFLOW_NAME, TurnOutcome
from store import approvals, conversations, events, turns
from tests.conftest import marker
from tests.helpers import create_conversation, start_turn_json, wait_turn
from tools.registry import build_registry
from worker import build_worker, resignal_decisions
from workflows.client import turn_input

TEST_SERVER = str(Path(sys.executable).parent / "temporal-test-server")


@pytest.fixture
async def skipping_env():
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=TEST_SERVER)
    try:
        yield env
    finally:
        await env.shutdown()


async def test_unanswered_approval_expires_and_the_model_is_told(
    skipping_env, pool, settings, model, mail, user
):
    tag = marker()
    model.script(
        tag,
        [
            {
                "kind": "tool_calls",
                "tool_calls": [
                    {
                        "id": "call_x",
                        "name": "send_email",
                        "arguments": {
                            "to": "bob@example.test",
                            "subject": f"Late {tag}",
                            "body": "<p>hi</p>",
                        },
                    }
                ],
            },
            {"kind": "reply", "content": "Nobody approved, so I did not send it."},
        ],
    )
    conv = await conversations.create(
        pool, user_id=user.id, title=None, system_prompt=None, model=None, tools=None, metadata={}
    )
    async with pool.acquire() as conn, conn.transaction():
        started = await turns.start_turn(
            conn, user_id=user.id, conversation_id=conv.id, content=f"mail {tag}"
        )
    assert started is not None
    turn = started[1]
    queue = f"skip-{uuid.uuid4().hex[:8]}"
    local = settings.model_copy(update={"temporal_task_queue": queue})
    registry = build_registry(local, pool)
    began = time.monotonic()
    async with build_worker(skipping_env.client, pool, local, registry):
        handle = await skipping_env.client.start_workflow(
            WORKFLOW_NAME,
            turn_input(turn_id=turn.id, conversation_id=conv.id, user_id=user.id, settings=local),
            result_type=TurnOutcome,
            id=turn.id,
            task_queue=queue,
        )
        outcome = await handle.result()
    assert outcome.status == "completed"
    assert time.monotonic() - began < 60, "24 hours of waiting were skipped, not slept"

    log = await events.read_after(pool, turn_id=turn.id, after=0)
    decided = next(e for e in log if e["type"] == "approval_decided")
    assert decided["decision"] == "expired" and decided["decided_by"] is None
    result = next(e for e in log if e["type"] == "tool_result")
    assert result["status"] == "rejected"
    assert result["result"] == {"status": "rejected", "reason": "approval expired"}
    assert log[-1]["type"] == "complete" and log[-1]["content"] == "Nobody approved, so I did not send it."
    approval = await approvals.get(pool, user_id=user.id, approval_id=decided["approval_id"])
    assert approval is not None and approval.status == "expired"
    told = [m for m in model.requests(tag)[-1].body["messages"] if m["role"] == "tool"]
    assert told and "approval expired" in told[0]["content"]
    assert mail.messages(tag) == []


async def test_a_lost_decision_signal_is_sent_again(user, model, mail, pool, temporal):
    tag = marker()
    model.script(
        tag,
        [
            {
                "kind": "tool_calls",
                "tool_calls": [
                    {
                        "id": "call_y",
                        "name": "send_email",
                        "arguments": {
                            "to": "bob@example.test",
                            "subject": f"Lost {tag}",
                            "body": "<p>hi</p>",
                        },
                    }
                ],
            },
            {"kind": "reply", "content": "Sent."},
        ],
    )
    conv = await create_conversation(user.client)
    started = await start_turn_json(user.client, conv["id"], f"mail {tag}")
    turn_id = started["turn"]["id"]
    turn = (await user.client.get(f"/api/v1/turns/{turn_id}", params={"wait": 20})).json()
    assert turn["status"] == "awaiting_approval"
    approval_id = turn["pending_approvals"][0]["id"]
    # What an API process does before it dies: commit the decision, never signal.
    async with pool.acquire() as conn, conn.transaction():
        outcome, _ = await approvals.decide(
            conn, approval_id=approval_id, actor=user.id, decision="approved", arguments=None, reason=None
        )
    assert outcome == "applied"
    assert (await user.client.get(f"/api/v1/turns/{turn_id}")).json()["status"] == "awaiting_approval"
    assert await resignal_decisions(temporal, pool, older_than_seconds=0) >= 1
    done = await wait_turn(user.client, turn_id)
    assert done["status"] == "completed"
    assert len(mail.messages(tag)) == 1
