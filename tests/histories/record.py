"""Record `TurnWorkflow` histories from the current code into tests/histories/*.json.

tests/test_history_replay.py replays these files against the workflow as it is now, so a
change to `TurnWorkflow` that would break executions started by this version (turns parked
on an approval for hours, say) fails before it ships. Re-record after a change that is
guarded by `workflow.patched(...)`, and keep the older files (see docs/DESIGN.md,
"Changing TurnWorkflow").

Run against the test stack (embedded PostgreSQL and Temporal, the fake model, SMTP):

    .venv/bin/python -m tests.histories.record

It writes the files named in `HISTORIES`, with a prefix (`--prefix v2-`) if given, so the
files of an earlier version are kept beside the new ones. The recorder is a pytest test
that runs only when this module asks for it, so the suite never re-records by itself.
"""

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from tests.conftest import marker
from tests.helpers import create_conversation, start_turn_json, wait_turn

HERE = Path(__file__).resolve().parent
HISTORIES = {
    "completed_tool_call": "a turn whose model calls web_search (no approval), then replies",
    "parked_on_approval": "a turn waiting for a person to approve send_email, cut mid-wait",
    "approved_email": "a send_email approved, sent, and the turn completed",
    "cancelled_while_parked": "a turn cancelled while waiting for an approval",
}
RECORD = "RECORD_TURN_HISTORIES"
PREFIX = "RECORD_TURN_HISTORIES_PREFIX"


def _email_script(model: Any, tag: str) -> None:
    arguments = {"to": "bob@example.test", "subject": f"Report {tag}", "body": "Hello Bob"}
    model.script(
        tag,
        [
            {
                "kind": "tool_calls",
                "tool_calls": [{"id": "call_mail", "name": "send_email", "arguments": arguments}],
            },
            {"kind": "reply", "content": "Sent."},
        ],
    )


async def _parked(user: Any, model: Any) -> dict[str, Any]:
    tag = marker()
    _email_script(model, tag)
    conv = await create_conversation(user.client)
    started = await start_turn_json(user.client, conv["id"], f"please mail {tag}")
    turn = await wait_turn(user.client, started["turn"]["id"], until=("awaiting_approval",))
    assert turn["status"] == "awaiting_approval", turn
    return turn


async def _save(temporal: Client, name: str, workflow_id: str, *, finished: bool = True) -> None:
    handle = temporal.get_workflow_handle(workflow_id)
    if finished:
        await handle.result()
    history = await handle.fetch_history()
    path = HERE / f"{os.environ.get(PREFIX, '')}{name}.json"
    path.write_text(history.to_json() + "\n")
    print(f"wrote {path.relative_to(HERE.parent.parent)} ({len(history.events)} events)")


@pytest.mark.skipif(not os.environ.get(RECORD), reason="records histories only when run as a module")
async def test_record_turn_histories(user: Any, model: Any, temporal: Client, mail: Any) -> None:
    # (a) a completed turn with one ungated tool call
    tag = marker()
    model.script(
        tag,
        [
            {
                "kind": "tool_calls",
                "tool_calls": [
                    {"id": "call_search", "name": "web_search", "arguments": {"query": "temporal"}}
                ],
            },
            {"kind": "reply", "content": "Found it."},
        ],
    )
    conv = await create_conversation(user.client)
    started = await start_turn_json(user.client, conv["id"], f"search {tag}")
    assert (await wait_turn(user.client, started["turn"]["id"]))["status"] == "completed"
    await _save(temporal, "completed_tool_call", started["turn"]["id"])

    # (b) parked on an approval: the history a restarted worker sees mid-wait
    parked = await _parked(user, model)
    await asyncio.sleep(0.5)  # let the workflow task that started the wait complete
    await _save(temporal, "parked_on_approval", parked["id"], finished=False)
    # (c) the same turn, approved: the email is sent and the turn completes
    approval = parked["pending_approvals"][0]
    decided = await user.client.post(f"/api/v1/approvals/{approval['id']}", json={"decision": "approve"})
    assert decided.status_code == 200, decided.text
    assert (await wait_turn(user.client, parked["id"]))["status"] == "completed"
    await _save(temporal, "approved_email", parked["id"])

    # (d) cancelled while parked
    parked = await _parked(user, model)
    assert (await user.client.post(f"/api/v1/turns/{parked['id']}/cancel")).status_code == 202
    assert (await wait_turn(user.client, parked["id"]))["status"] == "cancelled"
    await _save(temporal, "cancelled_while_parked", parked["id"])


def main(argv: list[str]) -> int:
    os.environ[RECORD] = "1"
    if argv[:1] == ["--prefix"] and len(argv) > 1:
        os.environ[PREFIX] = argv[1]
    return pytest.main([__file__, "-q", "-s", "-p", "no:cacheprovider"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
