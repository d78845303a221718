"""Graceful shutdown: SIGTERM on a worker (running activities finish within
`WORKER_SHUTDOWN_GRACE`, or are handed back to another worker) and on an API process (event
streams closed at once with a `retry:` hint, new connections refused, exit 0).

These run real `assistant worker` / `assistant api` child processes on a task queue of
their own, so signalling them touches nothing else of the suite.
"""

import asyncio
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack import free_port
from tests.conftest import assistant_process, marker
from tests.helpers import (
    create_conversation,
    read_sse,
    start_turn_json,
    text_of,
    wait_turn,
    wait_until_serving,
)
from tests.mailserver import MailServer

pytestmark = pytest.mark.slow

TERMINAL_EVENTS = ("complete", "error", "cancelled")


def _client(url: str, user: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {user.key}"}, timeout=60)


async def _exit_code(proc: Any, within: float = 90) -> int:
    """The exit code of a child process, waiting for it without blocking the event loop."""
    return int(await asyncio.wait_for(asyncio.to_thread(proc.wait), within))


async def _logged(path: Path, text: str, proc: Any, within: float = 30) -> None:
    """Wait until the child process's log holds `text`."""
    deadline = time.monotonic() + within
    while text not in await asyncio.to_thread(path.read_text, errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} never logged in {path.name}"
        assert proc.poll() is None, f"{path.name}: the process exited first"
        await asyncio.sleep(0.05)


def _assert_one_whole_turn(events: list[dict[str, Any]], text: str) -> None:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "no gap, no duplicate"
    assert events[-1]["type"] == "complete" and events[-1]["content"] == text
    assert sum(e["type"] in TERMINAL_EVENTS for e in events) == 1
    assert text_of(events) == text


async def _sigterm_worker_mid_reply(
    env: dict[str, str], logs: Path, user: Any, model: Any, *, words: int
) -> Any:
    """Run a slow reply on worker 1, SIGTERM it after a few tokens, check it exits 0, finish
    the turn on worker 2; the turn's events and how many model requests were made."""
    tag = marker()
    text = " ".join(f"w{i}" for i in range(words))
    model.script(tag, [{"kind": "reply", "content": text, "delay_ms": 80}])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        assistant_process(["api", "--port", str(port)], env, logs / "api.log") as api,
        assistant_process(["worker"], env, logs / "worker1.log") as worker1,
    ):
        await wait_until_serving(url, api)
        async with _client(url, user) as client:
            conv = await create_conversation(client)
            before, response = await read_sse(
                client,
                "POST",
                f"/api/v1/conversations/{conv['id']}/messages",
                json={"content": f"go {tag}"},
                stop_after=5,
            )
            turn_id = response.headers["x-turn-id"]
            assert sum(e["type"] == "token" for e in before) >= 2, "tokens were flowing"
            worker1.send_signal(signal.SIGTERM)
            assert await _exit_code(worker1) == 0
            with assistant_process(["worker"], env, logs / "worker2.log"):
                rest, _ = await read_sse(
                    client,
                    "GET",
                    f"/api/v1/turns/{turn_id}/events",
                    headers={"Last-Event-ID": str(before[-1]["seq"])},
                )
                events = before + rest
                _assert_one_whole_turn(events, text)
                messages = (await client.get(f"/api/v1/conversations/{conv['id']}/messages")).json()["data"]
                assert [(m["role"], m["content"]) for m in messages] == [
                    ("user", f"go {tag}"),
                    ("assistant", text),
                ]
    return events, len(model.requests(tag))


async def test_worker_sigterm_lets_the_running_reply_finish(own_queue, user, model):
    env, logs = own_queue
    events, requests = await _sigterm_worker_mid_reply(env, logs, user, model, words=40)
    # Finished by the stopping worker within its grace period: streamed once, never restarted.
    assert not any(e["type"] == "reset" for e in events)
    assert requests == 1


async def test_worker_sigterm_hands_back_a_reply_outlasting_the_grace(own_queue, user, model):
    env, logs = own_queue
    env = {**env, "WORKER_SHUTDOWN_GRACE": "1s"}
    events, requests = await _sigterm_worker_mid_reply(env, logs, user, model, words=150)
    # Cancelled at the end of the grace period and retried by the second worker.
    assert any(e["type"] == "reset" for e in events), "the retried stream announced a reset"
    assert requests == 2


async def test_worker_sigterm_while_an_email_is_sent_delivers_it_once(
    own_queue, user, model, mail: MailServer
):
    env, logs = own_queue
    tag = marker()
    arguments = {"to": "bob@example.test", "subject": f"Report {tag}", "body": "Hello Bob"}
    model.script(
        tag,
        [
            {
                "kind": "tool_calls",
                "tool_calls": [{"id": "call_mail", "name": "send_email", "arguments": arguments}],
            },
            {"kind": "reply", "content": "All done."},
        ],
    )
    arrived, release = threading.Event(), threading.Event()

    def hold_the_reply() -> None:  # in the SMTP server's thread, before its 250 reply
        if tag in str(mail.handler.received[-1].message["Subject"]):
            arrived.set()
            release.wait(60)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mail.handler.on_data = hold_the_reply
    try:
        with (
            assistant_process(["api", "--port", str(port)], env, logs / "api.log") as api,
            assistant_process(["worker"], env, logs / "worker1.log") as worker1,
        ):
            await wait_until_serving(url, api)
            async with _client(url, user) as client:
                conv = await create_conversation(client)
                turn_id = (await start_turn_json(client, conv["id"], f"please mail {tag}"))["turn"]["id"]
                parked = await wait_turn(client, turn_id, until=("awaiting_approval",))
                assert parked["status"] == "awaiting_approval", parked
                approval_id = parked["pending_approvals"][0]["id"]
                decided = await client.post(f"/api/v1/approvals/{approval_id}", json={"decision": "approve"})
                assert decided.status_code == 200, decided.text
                assert await asyncio.to_thread(arrived.wait, 60), "the email reached the SMTP server"
                # The worker is told to stop while the SMTP server has not yet accepted the email.
                worker1.send_signal(signal.SIGTERM)
                await _logged(logs / "worker1.log", "worker stopping", worker1)
                release.set()
                assert await _exit_code(worker1) == 0
                with assistant_process(["worker"], env, logs / "worker2.log"):
                    done = await wait_turn(client, turn_id, within=90)
                assert done["status"] == "completed", done
                assert done["output"]["content"] == "All done."
                assert len(mail.messages(tag)) == 1, "sent exactly once"
                events, _ = await read_sse(client, "GET", f"/api/v1/turns/{turn_id}/events")
                results = [e for e in events if e["type"] == "tool_result"]
                assert [r["status"] for r in results] == ["ok"]
    finally:
        release.set()
        mail.handler.on_data = None


async def test_api_sigterm_closes_streams_with_a_retry_hint_and_refuses_new_requests(own_queue, user, model):
    env, logs = own_queue
    tag = marker()
    text = " ".join(f"v{i}" for i in range(120))
    model.script(tag, [{"kind": "reply", "content": text, "delay_ms": 60}])
    port1, port2 = free_port(), free_port()
    url1, url2 = f"http://127.0.0.1:{port1}", f"http://127.0.0.1:{port2}"
    # A grace period far longer than the test waits: the stream must not hold the process.
    env1 = {**env, "API_SHUTDOWN_GRACE": "10m"}
    with (
        assistant_process(["api", "--port", str(port1)], env1, logs / "api1.log") as api1,
        assistant_process(["api", "--port", str(port2)], env, logs / "api2.log") as api2,
        assistant_process(["worker"], env, logs / "worker.log"),
    ):
        await wait_until_serving(url1, api1)
        await wait_until_serving(url2, api2)
        async with _client(url1, user) as first, _client(url2, user) as second:
            conv = await create_conversation(first)
            seen: list[dict[str, Any]] = []
            lines: list[str] = []
            async with first.stream(
                "POST", f"/api/v1/conversations/{conv['id']}/messages", json={"content": f"go {tag}"}
            ) as response:
                turn_id = response.headers["x-turn-id"]
                async for line in response.aiter_lines():  # ends normally: the stream is closed, not cut
                    lines.append(line)
                    if line.startswith("data: "):
                        seen.append(json.loads(line[6:]))
                        if sum(e["type"] == "token" for e in seen) == 3:
                            api1.send_signal(signal.SIGTERM)
            assert "retry: 1000" in lines, lines[-5:]
            assert not any(e["type"] in TERMINAL_EVENTS for e in seen), "closed before the turn ended"

            # Shutdown has begun: a new request is refused.
            async with httpx.AsyncClient(timeout=10) as fresh:
                try:
                    refused = (await fresh.get(f"{url1}/healthz")).status_code
                except httpx.ConnectError:
                    refused = None
            assert refused in (None, 503)
            assert await _exit_code(api1) == 0

            rest, _ = await read_sse(
                second,
                "GET",
                f"/api/v1/turns/{turn_id}/events",
                headers={"Last-Event-ID": str(seen[-1]["seq"])},
            )
            _assert_one_whole_turn(seen + rest, text)
            everything, _ = await read_sse(second, "GET", f"/api/v1/turns/{turn_id}/events")
            assert everything == seen + rest
