"""The scale-out topology without Docker: 2 `assistant api` and 2 `assistant worker` processes
against one Temporal server and one PostgreSQL, as docker-compose.yml deploys them.

The core flow crosses processes at every step (a conversation made through one API, its turn
streamed from the other, the approval decided through the first), then a second turn loses the
worker running its reply and the API serving its stream, both to SIGKILL, and still ends whole.
"""

import json
import os
import signal
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse
from temporalio.client import Client

from devstack import free_port
from tests.conftest import assistant_process, marker
from tests.helpers import create_conversation, read_sse, text_of, wait_turn, wait_until_serving
from tests.test_approvals import email_args, script_email

pytestmark = pytest.mark.slow


def _client(url: str, user: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {user.key}"}, timeout=60)


def _assert_whole(events: list[dict[str, Any]]) -> None:
    """Gap-free and without duplicates from seq 1, with exactly one terminal event, last."""
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert sum(e["type"] in ("complete", "error", "cancelled") for e in events) == 1
    assert events[-1]["type"] == "complete"


async def _worker_running_the_reply(temporal: Client, turn_id: str, workers: list[Any]) -> Any:
    """The worker process whose model call the turn is waiting on (by its Temporal identity)."""
    pids = {str(w.pid): w for w in workers}
    description = await temporal.get_workflow_handle(turn_id).describe()
    for activity in description.raw_description.pending_activities:
        owner = pids.get(activity.last_worker_identity.split("@")[0])
        if owner is not None:
            return owner
    raise AssertionError(f"no worker of ours runs an activity of {turn_id}")


async def test_two_apis_and_two_workers_survive_losing_one_of_each(own_queue, user, model, mail, temporal):
    env, logs = own_queue
    port1, port2 = free_port(), free_port()
    url1, url2 = f"http://127.0.0.1:{port1}", f"http://127.0.0.1:{port2}"
    with (
        assistant_process(["api", "--port", str(port1)], env, logs / "api1.log") as api1,
        assistant_process(["api", "--port", str(port2)], env, logs / "api2.log") as api2,
        assistant_process(["worker"], env, logs / "worker1.log") as worker1,
        assistant_process(["worker"], env, logs / "worker2.log") as worker2,
    ):
        await wait_until_serving(url1, api1)
        await wait_until_serving(url2, api2)
        async with _client(url1, user) as first, _client(url2, user) as second:
            conv = await create_conversation(first)
            path = f"/api/v1/conversations/{conv['id']}/messages"

            # 1. A turn whose model asks to send an email, streamed from API 2; the approval
            # is decided through API 1 while that stream stays open.
            tag = marker()
            script_email(model, tag, email_args(tag))
            mailed: list[dict[str, Any]] = []
            async with aconnect_sse(second, "POST", path, json={"content": f"please mail {tag}"}) as source:
                mail_turn = source.response.headers["x-turn-id"]
                async for sse in source.aiter_sse():
                    event = json.loads(sse.data)
                    mailed.append(event)
                    if event["type"] == "approval_required":
                        assert mail.messages(tag) == [], "nothing is sent before approval"
                        decided = await first.post(
                            f"/api/v1/approvals/{event['approval_id']}", json={"decision": "approve"}
                        )
                        assert decided.status_code == 200, decided.text
                        assert decided.json()["decided_by"] == user.id
            _assert_whole(mailed)
            statuses = [e["status"] for e in mailed if e["type"] == "status"]
            assert statuses == ["queued", "running", "awaiting_approval", "running", "completed"]
            assert mailed[-1]["content"] == "All done."
            received = mail.messages(tag)
            assert len(received) == 1, "the email is received exactly once"
            assert received[0].rcpt_tos == ["bob@example.test"]
            result = next(e for e in mailed if e["type"] == "tool_result")
            assert result["status"] == "ok"
            assert result["result"]["message_id"] == str(received[0].message["Message-ID"])
            assert (await wait_turn(first, mail_turn))["status"] == "completed"

            # 2. A slow reply, streamed from API 2: the worker running it is killed, the other
            # worker takes it over; then API 2 is killed and the client resumes on API 1.
            slow = marker()
            text = " ".join(f"s{i}" for i in range(50))
            model.script(slow, [{"kind": "reply", "content": text, "delay_ms": 60}])
            seen: list[dict[str, Any]] = []
            turn_id = ""
            victim = None
            with pytest.raises(httpx.TransportError):
                async with second.stream("POST", path, json={"content": f"slowly {slow}"}) as response:
                    turn_id = response.headers["x-turn-id"]
                    async for line in response.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        seen.append(json.loads(line[6:]))
                        tokens = sum(e["type"] == "token" for e in seen)
                        if victim is None and tokens == 3:
                            victim = await _worker_running_the_reply(temporal, turn_id, [worker1, worker2])
                            os.kill(victim.pid, signal.SIGKILL)
                            victim.wait()
                        resets = [i for i, e in enumerate(seen) if e["type"] == "reset"]
                        if resets and sum(e["type"] == "token" for e in seen[resets[-1] :]) == 3:
                            os.kill(api2.pid, signal.SIGKILL)
            api2.wait()
            assert victim is not None and turn_id
            assert any(e["type"] == "reset" for e in seen), "the reply was retried on the other worker"
            survivor = worker2 if victim is worker1 else worker1
            assert survivor.poll() is None
            rest, _ = await read_sse(
                first,
                "GET",
                f"/api/v1/turns/{turn_id}/events",
                headers={"Last-Event-ID": str(seen[-1]["seq"])},
            )
            events = seen + rest
            _assert_whole(events)
            assert text_of(events) == text == events[-1]["content"]
            replay, _ = await read_sse(first, "GET", f"/api/v1/turns/{turn_id}/events")
            assert replay == events
            assert len(model.requests(slow)) == 2

            # 3. The transcript, read through the surviving API.
            transcript = (await first.get(path)).json()["data"]
            said = [
                (m["role"], m["content"])
                for m in transcript
                if m["role"] == "user" or (m["role"] == "assistant" and m["content"])
            ]
            assert said == [
                ("user", f"please mail {tag}"),
                ("assistant", "All done."),
                ("user", f"slowly {slow}"),
                ("assistant", text),
            ], transcript
            assert sum(m["role"] == "tool" for m in transcript) == 1
            assert len(mail.messages(tag)) == 1
