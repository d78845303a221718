"""Every log line of a request or a turn carries its ids.

Real `assistant api` and `assistant worker` child processes (JSON logs) serve one turn that
retries the model once, asks to send an email, is approved and completes; both logs are then
parsed line by line. Temporal's own workflow and activity loggers are checked with a real
workflow on a worker of its own.
"""

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.config import Settings
from devstack import free_port
from tests.conftest import ROOT, assistant_process, marker, subprocess_env
from tests.helpers import create_conversation, start_turn_json, wait_turn, wait_until_serving

pytestmark = pytest.mark.slow


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a log, parsed: a line that is not JSON fails the test."""
    lines = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(f"{path.name}:{number} is not JSON: {line!r}") from None
    return lines


def mentioning(lines: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    return [line for line in lines if text in json.dumps(line)]


async def test_the_lines_of_one_turn_carry_its_ids(own_queue, user, model):
    env, logs = own_queue
    tag = marker()
    model.script(
        tag,
        [
            {"kind": "error", "status": 500, "message": "boom once"},  # a second attempt
            {
                "kind": "tool_calls",
                "tool_calls": [
                    {
                        "id": "call_mail",
                        "name": "send_email",
                        "arguments": {"to": "ops@example.test", "subject": f"hi {tag}", "body": "hello"},
                    }
                ],
            },
            {"kind": "reply", "content": "Sent."},
        ],
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        assistant_process(["api", "--port", str(port)], env, logs / "api.log") as api,
        assistant_process(["worker"], env, logs / "worker.log"),
    ):
        await wait_until_serving(url, api)
        headers = {"Authorization": f"Bearer {user.key}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
            conv = await create_conversation(client)
            turn_id = (await start_turn_json(client, conv["id"], f"please mail {tag}"))["turn"]["id"]
            turn = await wait_turn(client, turn_id, until=("awaiting_approval",))
            assert turn["status"] == "awaiting_approval", turn
            approval_id = turn["pending_approvals"][0]["id"]
            decided = await client.post(
                f"/api/v1/approvals/{approval_id}",
                json={"decision": "approve"},
                headers={"X-Request-ID": "req-log-context-approve"},
            )
            assert decided.status_code == 200, decided.text
            turn = await wait_turn(client, turn_id)
            assert turn["status"] == "completed", turn

    api_lines, worker_lines = json_lines(logs / "api.log"), json_lines(logs / "worker.log")

    # Requests: every access line has a request id; those of the user carry the user.
    access = [line for line in api_lines if line.get("logger") == "api.access"]
    assert access and all(line.get("request_id") for line in access)
    authenticated = [line for line in access if line["path"].startswith("/api/v1/") and line["status"] < 400]
    assert authenticated and all(line.get("user_id") == user.id for line in authenticated), authenticated
    started = [line for line in access if line["method"] == "POST" and line["path"].endswith("/messages")]
    assert started and all(
        line["turn_id"] == turn_id and line["conversation_id"] == conv["id"] for line in started
    ), started
    polled = [line for line in access if line["path"] == f"/api/v1/turns/{turn_id}"]
    assert polled and all(line["turn_id"] == turn_id for line in polled)
    # A line written inside a route, not only the access line, carries the request's ids.
    decision = [line for line in api_lines if line["event"] == "approval decided"]
    assert len(decision) == 1
    assert decision[0]["request_id"] == "req-log-context-approve"
    assert decision[0]["user_id"] == user.id and decision[0]["approval_id"] == approval_id
    for line in mentioning(api_lines, turn_id):
        assert line.get("turn_id") == turn_id and line.get("request_id"), line

    # The worker: every line of the turn carries the turn, its workflow and, in an
    # activity, the activity and its attempt.
    of_turn = mentioning(worker_lines, turn_id)
    assert of_turn, worker_lines
    for line in of_turn:
        assert line.get("turn_id") == turn_id and line.get("workflow_id") == turn_id, line
        if "activity" in line:
            assert isinstance(line.get("attempt"), int), line
    # Our own activity lines (structlog) and Temporal's activity logger both do.
    ran = [line for line in of_turn if line["event"] == "tool ran"]
    assert len(ran) == 1
    assert ran[0]["activity"] == "run_tool", ran
    assert ran[0]["conversation_id"] == conv["id"] and ran[0]["attempt"] == 1
    retried = [line for line in of_turn if line["event"].startswith("model call retried")]
    assert len(retried) == 1 and retried[0]["logger"] == "temporalio.activity", retried
    assert retried[0]["attempt"] == 2 and retried[0]["conversation_id"] == conv["id"], retried
    assert retried[0]["event"] == "model call retried", "no info dict appended to the message"


_WORKFLOW_SCRIPT = """
import asyncio
import os
from datetime import timedelta

import structlog
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from core.contracts import TurnInput
from core.log_context import LogContextInterceptor
from core.logging import configure_logging

configure_logging("INFO", "json")


@activity.defn(name="say_hello")
async def say_hello(turn: TurnInput) -> None:
    activity.logger.info("temporal activity logger")
    structlog.get_logger("mine").info("structlog in an activity")


# Not named TurnWorkflow: the replay test replays every TurnWorkflow history of the run.
@workflow.defn(name="LogContextProbe")
class Hello:
    @workflow.run
    async def run(self, turn: TurnInput) -> None:
        workflow.logger.info("temporal workflow logger")
        await workflow.execute_activity(say_hello, turn, start_to_close_timeout=timedelta(seconds=30))


async def main() -> None:
    client = await Client.connect(os.environ["TEMPORAL_ADDRESS"])
    queue = os.environ["TEMPORAL_TASK_QUEUE"]
    turn = TurnInput(turn_id=os.environ["TURN_ID"], conversation_id="conv_logs", user_id="usr_logs")
    async with Worker(
        client,
        task_queue=queue,
        workflows=[Hello],
        activities=[say_hello],
        interceptors=[LogContextInterceptor()],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        await client.execute_workflow(Hello.run, turn, id=turn.turn_id, task_queue=queue)


asyncio.run(main())
"""


def test_temporal_workflow_and_activity_loggers_write_json_with_the_ids(settings: Settings):
    turn_id = f"turn_{uuid.uuid4().hex}"
    env = subprocess_env(settings, TEMPORAL_TASK_QUEUE=f"logs-{uuid.uuid4().hex[:8]}", TURN_ID=turn_id)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_WORKFLOW_SCRIPT)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    by_event = {line["event"]: line for line in lines}
    from_workflow = by_event["temporal workflow logger"]
    assert from_workflow["logger"] == "temporalio.workflow"
    assert from_workflow["workflow_id"] == turn_id and from_workflow["run_id"]
    assert from_workflow["workflow_type"] == "LogContextProbe"
    assert "turn_id" not in from_workflow, "only a TurnWorkflow's id is a turn id"
    assert "temporal_workflow" not in from_workflow
    for event in ("temporal activity logger", "structlog in an activity"):
        line = by_event[event]
        assert line["workflow_id"] == turn_id and line["turn_id"] == turn_id, line
        assert line["conversation_id"] == "conv_logs", line
        assert line["activity"] == "say_hello" and line["attempt"] == 1, line
        assert "temporal_activity" not in line
