"""Email sent exactly once whatever crashes: `kill -9` of the worker around the SMTP
server's acceptance, an SMTP outage, a restart of the worker and of Temporal while a turn
waits for a person, and header injection through edited arguments.

The crash tests run real `assistant worker` / `assistant api` child processes on a task
queue of their own, sending to an SMTP server of their own, so killing them (or stopping
that server) touches nothing else of the suite.
"""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

from devstack import EmbeddedTemporal, free_port
from tests.conftest import assistant_process, marker, subprocess_env
from tests.helpers import create_conversation, read_sse, start_turn_json, wait_turn, wait_until_serving
from tests.mailserver import MailServer, Received

pytestmark = pytest.mark.slow

TERMINAL = ("completed", "failed", "cancelled")


def email_args(tag: str, **extra: Any) -> dict[str, Any]:
    return {"to": "bob@example.test", "subject": f"Report {tag}", "body": "<p>Hello <b>Bob</b></p>", **extra}


def script_email(model: Any, tag: str, arguments: dict[str, Any]) -> None:
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


async def park(client: httpx.AsyncClient, model: Any, tag: str, arguments: dict[str, Any]) -> tuple[str, str]:
    """Start a turn whose model asks to send an email; (turn id, approval id) once it waits."""
    script_email(model, tag, arguments)
    conv = await create_conversation(client)
    started = await start_turn_json(client, conv["id"], f"please mail {tag}")
    turn_id = started["turn"]["id"]
    deadline = time.monotonic() + 60
    while True:
        turn = (await client.get(f"/api/v1/turns/{turn_id}", params={"wait": 5})).json()
        if turn["status"] not in ("queued", "running") or time.monotonic() > deadline:
            break
    assert turn["status"] == "awaiting_approval", turn
    assert len(turn["pending_approvals"]) == 1
    return turn_id, turn["pending_approvals"][0]["id"]


async def events_of(client: httpx.AsyncClient, turn_id: str) -> list[dict[str, Any]]:
    events, _ = await read_sse(client, "GET", f"/api/v1/turns/{turn_id}/events")
    return events


async def watch_until(
    client: httpx.AsyncClient, turn_id: str, done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """Follow the turn's live event stream until `done(events so far)` holds."""
    events: list[dict[str, Any]] = []
    async with aconnect_sse(client, "GET", f"/api/v1/turns/{turn_id}/events") as source:
        async for sse in source.aiter_sse():
            events.append(json.loads(sse.data))
            if done(events):
                return events
    raise AssertionError(f"the stream ended first: {[e['type'] for e in events]}")


def tool_result(events: list[dict[str, Any]]) -> dict[str, Any]:
    results = [e for e in events if e["type"] == "tool_result"]
    assert len(results) == 1, results
    return results[0]


def one_message(box: MailServer, tag: str) -> Received:
    received = box.messages(tag)
    assert len(received) == 1, f"{len(received)} messages for {tag}"
    return received[0]


def logged(log: Path, text: str) -> bool:
    return log.exists() and text in log.read_text(errors="replace")


async def wait_logged(log: Path, proc: subprocess.Popen[bytes], text: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the process exited early; see {log}"
        if logged(log, text):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{text!r} not in {log} within {within}s")


async def wait_exit(proc: subprocess.Popen[bytes], within: float = 30) -> int:
    deadline = time.monotonic() + within
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the worker was not killed"
        await asyncio.sleep(0.02)
    return proc.returncode


@dataclass
class Rig:
    """An API child and worker children on a private task queue, mailing to a private server."""

    env: dict[str, str]
    logs: Path
    url: str
    box: MailServer
    stack: contextlib.ExitStack
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    async def start_worker(self) -> subprocess.Popen[bytes]:
        log = self.logs / f"worker{len(self.workers)}.log"
        proc = self.stack.enter_context(assistant_process(["worker"], self.env, log))
        self.workers.append(proc)
        await wait_logged(log, proc, "worker started")
        return proc

    def client(self, user: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {user.key}"}, timeout=60
        )


@contextlib.contextmanager
def rig_parts(settings: Any, tmp_path: Path, **env: str) -> Iterator[tuple[Rig, subprocess.Popen[bytes]]]:
    box = MailServer()  # not started: each test decides when the server is up
    port = free_port()
    full_env = subprocess_env(
        settings, TEMPORAL_TASK_QUEUE=f"mail-{uuid.uuid4().hex[:8]}", SMTP_PORT=str(box.port), **env
    )
    with contextlib.ExitStack() as stack:
        stack.callback(box.stop)
        api = stack.enter_context(
            assistant_process(["api", "--port", str(port)], full_env, tmp_path / "api.log")
        )
        yield Rig(full_env, tmp_path, f"http://127.0.0.1:{port}", box, stack), api


class Killer:
    """Kills the armed worker from inside the SMTP server, at the armed point of the dialogue."""

    def __init__(self, box: MailServer) -> None:
        self._lock = threading.Lock()
        self._armed: tuple[str, subprocess.Popen[bytes]] | None = None
        self.fired: list[str] = []
        box.handler.on_data = lambda: self._fire("data")
        box.handler.on_quit = lambda: self._fire("quit")

    def arm(self, point: str, proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._armed = (point, proc)

    def _fire(self, point: str) -> None:
        with self._lock:
            if self._armed is None or self._armed[0] != point:
                return
            proc, self._armed = self._armed[1], None
        os.kill(proc.pid, signal.SIGKILL)
        self.fired.append(point)


async def test_worker_killed_around_acceptance_ten_times_sends_ten_messages(
    settings, user, model, pool, tmp_path
):
    """`kill -9` of the worker as the SMTP server takes the message: never a second send.

    Half the kills land after the server stored the message and before its 250 reply (the
    worker cannot know it was delivered: `delivery_uncertain`), half after the worker got
    the 250 and recorded it, before the activity completed (a retry returns the recorded
    result). The sends are serialized so each kill hits the worker running that send.
    """
    turns = 10
    with rig_parts(settings, tmp_path) as (rig, api):
        rig.box.start()
        killer = Killer(rig.box)
        await wait_until_serving(rig.url, api)
        worker = await rig.start_worker()
        async with rig.client(user) as client:
            tags = [marker() for _ in range(turns)]
            parked = await asyncio.gather(*(park(client, model, tag, email_args(tag)) for tag in tags))
            assert rig.box.handler.received == [], "nothing is sent before approval"
            points = ["data", "quit"] * (turns // 2)
            for tag, (_turn_id, approval_id), point in zip(tags, parked, points, strict=True):
                killer.arm(point, worker)
                decided = await client.post(f"/api/v1/approvals/{approval_id}", json={"decision": "approve"})
                assert decided.status_code == 200, decided.text
                assert await wait_exit(worker) == -signal.SIGKILL
                assert len(rig.box.messages(tag)) == 1
                worker = await rig.start_worker()
            assert killer.fired == points

            finished = await asyncio.gather(
                *(wait_turn(client, turn_id, within=240) for turn_id, _ in parked)
            )
            assert [t["status"] for t in finished] == ["completed"] * turns, finished
            assert all(t["output"]["content"] == "All done." for t in finished)
            # Exactly one message per turn, and nothing else: the server is this test's own.
            assert len(rig.box.handler.received) == turns
            outcomes = []
            for tag, (turn_id, _), point in zip(tags, parked, points, strict=True):
                received = one_message(rig.box, tag)
                assert received.rcpt_tos == ["bob@example.test"]
                result = tool_result(await events_of(client, turn_id))
                if result["status"] == "ok":
                    assert result["result"]["message_id"] == str(received.message["Message-ID"])
                else:
                    assert result["status"] == "error", result
                    assert result["error"]["code"] == "delivery_uncertain", result
                    # Acceptance was recorded before QUIT: that retry must know it was sent.
                    assert point == "data", f"{point}: {result}"
                outcomes.append((point, result["status"]))
                row = await pool.fetchrow(
                    "SELECT status, message_id FROM email_outbox WHERE turn_id = $1", turn_id
                )
                assert row["message_id"] == str(received.message["Message-ID"])
                assert row["status"] == ("accepted" if result["status"] == "ok" else "uncertain")
            assert ("quit", "ok") in outcomes and ("data", "error") in outcomes, outcomes


async def test_smtp_down_then_up_sends_one_message(settings, user, model, tmp_path):
    with rig_parts(settings, tmp_path) as (rig, api):
        await wait_until_serving(rig.url, api)
        await rig.start_worker()
        async with rig.client(user) as client:
            tag = marker()
            turn_id, approval_id = await park(client, model, tag, email_args(tag))
            decided = await client.post(f"/api/v1/approvals/{approval_id}", json={"decision": "approve"})
            assert decided.status_code == 200, decided.text

            def retried_twice(events: list[dict[str, Any]]) -> bool:
                return sum(e["type"] == "tool_retry" for e in events) >= 2

            seen = await asyncio.wait_for(watch_until(client, turn_id, retried_twice), 30)
            retries = [e for e in seen if e["type"] == "tool_retry"]
            assert [r["attempt"] for r in retries] == [1, 2]
            assert all(r["tool_id"] == "send_email" and r["tool_call_id"] == "call_mail" for r in retries)
            assert not any(e["type"] == "tool_result" for e in seen)
            waiting = (await client.get(f"/api/v1/turns/{turn_id}")).json()
            assert waiting["status"] == "running"
            rig.box.start()
            done = await wait_turn(client, turn_id, within=60)
            assert done["status"] == "completed" and done["output"]["content"] == "All done."
            received = one_message(rig.box, tag)
            assert len(rig.box.handler.received) == 1
            result = tool_result(await events_of(client, turn_id))
            assert result["status"] == "ok"
            assert result["result"]["message_id"] == str(received.message["Message-ID"])


async def test_parked_turn_survives_worker_and_temporal_restart(settings, user, model, pool, tmp_path):
    temporal = EmbeddedTemporal(tmp_path / "temporal", persistent=True)
    address = temporal.start()
    try:
        with rig_parts(settings, tmp_path, TEMPORAL_ADDRESS=address) as (rig, api):
            rig.box.start()
            await wait_until_serving(rig.url, api)
            worker = await rig.start_worker()
            async with rig.client(user) as client:
                tag = marker()
                turn_id, approval_id = await park(client, model, tag, email_args(tag))
                worker.kill()
                worker.wait()
                temporal.stop()
                assert temporal.proc is not None and temporal.proc.poll() is not None
                assert temporal.start() == address
                await rig.start_worker()
                still = (await client.get(f"/api/v1/turns/{turn_id}")).json()
                assert still["status"] == "awaiting_approval"
                assert rig.box.handler.received == []

                decided = await client.post(f"/api/v1/approvals/{approval_id}", json={"decision": "approve"})
                assert decided.status_code == 200, decided.text
                # The API itself reached the restarted Temporal (not the worker's re-signalling).
                signalled = await pool.fetchval(
                    "SELECT signalled_at FROM approvals WHERE id = $1", approval_id
                )
                assert signalled is not None, "the API did not signal the workflow after Temporal restarted"
                done = await wait_turn(client, turn_id, within=60)
                assert done["status"] == "completed" and done["output"]["content"] == "All done."
                received = one_message(rig.box, tag)
                result = tool_result(await events_of(client, turn_id))
                assert result["status"] == "ok"
                assert result["result"]["message_id"] == str(received.message["Message-ID"])
    finally:
        temporal.stop()


EVE = "eve@example.test"
CRLF_BCC = f"\r\nBcc: {EVE}"


def injections(tag: str) -> dict[str, dict[str, Any]]:
    """Edited arguments trying to add a header or a recipient, by name."""
    attachment = {"filename": "notes.txt", "content_type": "text/plain", "content_base64": "aGk="}
    return {
        "subject_crlf": email_args(tag, subject=f"Report {tag}{CRLF_BCC}"),
        "subject_lf": email_args(tag, subject=f"Report {tag}\nBcc: {EVE}"),
        "subject_cr": email_args(tag, subject=f"Report {tag}\rBcc: {EVE}"),
        "subject_line_separator": email_args(tag, subject=f"Report {tag}\u2028Bcc: {EVE}"),
        "to_crlf": email_args(tag, to=f"bob@example.test{CRLF_BCC}"),
        "to_list_crlf": email_args(tag, to=["bob@example.test", f"carol@example.test{CRLF_BCC}"]),
        "to_two_in_one": email_args(tag, to=f"bob@example.test, {EVE}"),
        "to_display_name_crlf": email_args(tag, to=f'"Bob{CRLF_BCC}" <bob@example.test>'),
        "cc_crlf": email_args(tag, cc=f"carol@example.test{CRLF_BCC}"),
        "cc_list_crlf": email_args(tag, cc=[f"carol@example.test{CRLF_BCC}"]),
        "reply_to_crlf": email_args(tag, reply_to=f"bob@example.test{CRLF_BCC}"),
        "filename_crlf": email_args(tag, attachments=[{**attachment, "filename": f"notes.txt{CRLF_BCC}"}]),
        "filename_quote_crlf": email_args(
            tag, attachments=[{**attachment, "filename": f'notes.txt"{CRLF_BCC}'}]
        ),
        "content_type_crlf": email_args(
            tag, attachments=[{**attachment, "content_type": f"text/plain{CRLF_BCC}"}]
        ),
    }


async def test_header_injection_in_edited_arguments_never_reaches_the_server(user, model, mail):
    """Every attempt is refused (422, or an `invalid_arguments` result) and nothing is sent."""
    names = list(injections("x"))

    async def attempt(name: str) -> tuple[str, int, dict[str, Any]]:
        tag = marker()
        turn_id, approval_id = await park(user.client, model, tag, email_args(tag))
        answer = await user.client.post(
            f"/api/v1/approvals/{approval_id}",
            json={"decision": "approve", "arguments": injections(tag)[name]},
        )
        if answer.status_code == 422:
            assert answer.json()["code"] == "validation_failed", answer.text
            # Still pending: end the turn without sending anything.
            rejected = await user.client.post(f"/api/v1/approvals/{approval_id}", json={"decision": "reject"})
            assert rejected.status_code == 200, rejected.text
        else:
            assert answer.status_code == 200, (name, answer.text)
        done = await wait_turn(user.client, turn_id, within=60)
        assert done["status"] == "completed", (name, done)
        return tag, answer.status_code, tool_result(await events_of(user.client, turn_id))

    outcomes = await asyncio.gather(*(attempt(name) for name in names))
    for name, (tag, status, result) in zip(names, outcomes, strict=True):
        if status == 422:
            assert result["status"] == "rejected", (name, result)
        else:
            assert result["status"] == "error", (name, result)
            assert result["error"]["code"] == "invalid_arguments", (name, result)
        # Whatever the outcome, no message with an extra header or recipient was received.
        for received in mail.messages(tag):
            assert received.rcpt_tos == ["bob@example.test"], (name, received.rcpt_tos)
            assert "bcc" not in {k.lower() for k in received.message}, name
            assert EVE not in received.data.decode(errors="replace"), name
        assert mail.messages(tag) == [], f"{name}: a message was sent"
