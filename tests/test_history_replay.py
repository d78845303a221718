"""Histories recorded from earlier versions of TurnWorkflow (tests/histories/) replay cleanly
against the workflow as it is now; a change that would break them fails here, naming the
file. Needs no stack: the Replayer runs the workflow code against the recorded events.

The second half shows the guard works: a copy of the workflow that reorders two steps of
the approval path fails on the approved-email history, and the same change behind
`workflow.patched(...)` replays every history (docs/DESIGN.md, "Changing TurnWorkflow")."""

from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from core import contracts as c
from workflows.turn import TurnWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))
REQUIRED = {"completed_tool_call", "parked_on_approval", "approved_email", "cancelled_while_parked"}


def _load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


async def _failures(workflow_class: type, **replayer_options: object) -> dict[str, str]:
    """File name -> replay failure, for every recorded history."""
    replayer = Replayer(workflows=[workflow_class], **replayer_options)  # type: ignore[arg-type]
    failures: dict[str, str] = {}
    for path in HISTORIES:
        result = await replayer.replay_workflow(_load(path), raise_on_replay_failure=False)
        if result.replay_failure is not None:
            failures[path.name] = str(result.replay_failure)
    return failures


@pytest.mark.parametrize("path", HISTORIES, ids=[path.name for path in HISTORIES])
async def test_each_recorded_history_replays_on_the_current_workflow(path: Path) -> None:
    """One test per file, so a history that no longer replays is named in the test id."""
    result = await Replayer(workflows=[TurnWorkflow]).replay_workflow(
        _load(path), raise_on_replay_failure=False
    )
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


def test_the_recorded_histories_cover_the_turn_shapes() -> None:
    assert {path.stem for path in HISTORIES} >= REQUIRED
    for path in HISTORIES:
        history = _load(path)
        assert history.events, path.name
        assert history.events[0].workflow_execution_started_event_attributes.workflow_type.name == (
            c.WORKFLOW_NAME
        ), path.name


@workflow.defn(name=c.WORKFLOW_NAME)
class StatusAfterTheTool(TurnWorkflow):
    """A careless change: after an approval, run the tool before setting the turn `running`."""

    @workflow.run
    async def run(self, turn: c.TurnInput) -> c.TurnOutcome:
        return await super().run(turn)

    async def _gated(
        self, turn: c.TurnInput, step: int, message_id: str, call: c.PlannedCall, wait: timedelta
    ) -> None:
        decision = await self._decision(call, wait)
        self._undecided -= 1
        if decision == "approved":
            await self._run_tool(turn, message_id, call)
        else:
            await self._record(turn, message_id, call, "rejected")
        if self._undecided == 0:
            await self._set_status(turn, "running", f"status:running:{step + 1}")


@workflow.defn(name=c.WORKFLOW_NAME)
class StatusAfterTheToolPatched(TurnWorkflow):
    """The same change as it should be made: new order only for executions that start on it."""

    @workflow.run
    async def run(self, turn: c.TurnInput) -> c.TurnOutcome:
        return await super().run(turn)

    async def _gated(
        self, turn: c.TurnInput, step: int, message_id: str, call: c.PlannedCall, wait: timedelta
    ) -> None:
        decision = await self._decision(call, wait)
        self._undecided -= 1
        new_order = workflow.patched("status-after-the-tool")
        if self._undecided == 0 and not new_order:
            await self._set_status(turn, "running", f"status:running:{step + 1}")
        if decision == "approved":
            await self._run_tool(turn, message_id, call)
        else:
            await self._record(turn, message_id, call, "rejected")
        if self._undecided == 0 and new_order:
            await self._set_status(turn, "running", f"status:running:{step + 1}")


# The copies live in this test module, which the workflow sandbox would re-import with pytest
# in it; they run unsandboxed (they are replayed, never run against a server).
UNSANDBOXED = {"workflow_runner": UnsandboxedWorkflowRunner()}


async def test_an_unguarded_reorder_fails_replay_naming_the_history() -> None:
    failures = await _failures(StatusAfterTheTool, **UNSANDBOXED)
    assert "approved_email.json" in failures
    assert "nondetermin" in failures["approved_email.json"].lower()
    # Histories that never reach the changed code are not affected, the parked one included:
    # the break shows when such a turn resumes on the new code, as approved_email.json does.
    assert "completed_tool_call.json" not in failures
    assert "parked_on_approval.json" not in failures


async def test_the_same_change_behind_workflow_patched_replays_every_history() -> None:
    assert await _failures(StatusAfterTheToolPatched, **UNSANDBOXED) == {}
