"""Durability: `kill -9` of the worker mid-stream, and of the API process serving a stream.

These run real `assistant worker` / `assistant api` child processes on a task queue of
their own, so killing them touches nothing else of the suite.
"""

import os
import signal

import httpx
import pytest

from devstack import free_port
from tests.conftest import assistant_process, marker
from tests.helpers import create_conversation, read_sse, text_of, wait_until_serving

pytestmark = pytest.mark.slow


def _client(url, user):
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {user.key}"}, timeout=60)


async def test_worker_killed_mid_stream_turn_completes(own_queue, user, model):
    env, logs = own_queue
    tag = marker()
    text = " ".join(f"w{i}" for i in range(60))
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
            path = f"/api/v1/conversations/{conv['id']}/messages"
            before, response = await read_sse(
                client, "POST", path, json={"content": f"go {tag}"}, stop_after=5
            )
            turn_id = response.headers["x-turn-id"]
            assert sum(e["type"] == "token" for e in before) >= 2, "tokens were flowing"
            os.kill(worker1.pid, signal.SIGKILL)
            worker1.wait()
            with assistant_process(["worker"], env, logs / "worker2.log"):
                rest, _ = await read_sse(
                    client,
                    "GET",
                    f"/api/v1/turns/{turn_id}/events",
                    headers={"Last-Event-ID": str(before[-1]["seq"])},
                )
            events = before + rest
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            assert events[-1]["type"] == "complete" and events[-2]["status"] == "completed"
            assert sum(e["type"] in ("complete", "error", "cancelled") for e in events) == 1
            assert any(e["type"] == "reset" for e in events), "the retried stream announced a reset"
            assert text_of(events) == text
            assert events[-1]["content"] == text
            messages = (await client.get(f"/api/v1/conversations/{conv['id']}/messages")).json()["data"]
            assert [(m["role"], m["content"]) for m in messages] == [
                ("user", f"go {tag}"),
                ("assistant", text),
            ]
            assert len(model.requests(tag)) == 2


async def test_api_killed_mid_stream_client_resumes_elsewhere(own_queue, user, model):
    env, logs = own_queue
    tag = marker()
    text = " ".join(f"v{i}" for i in range(40))
    model.script(tag, [{"kind": "reply", "content": text, "delay_ms": 50}])
    port1, port2 = free_port(), free_port()
    with (
        assistant_process(["api", "--port", str(port1)], env, logs / "api1.log") as api1,
        assistant_process(["api", "--port", str(port2)], env, logs / "api2.log") as api2,
        assistant_process(["worker"], env, logs / "worker.log"),
    ):
        await wait_until_serving(f"http://127.0.0.1:{port1}", api1)
        await wait_until_serving(f"http://127.0.0.1:{port2}", api2)
        async with (
            _client(f"http://127.0.0.1:{port1}", user) as first,
            _client(f"http://127.0.0.1:{port2}", user) as second,
        ):
            conv = await create_conversation(first)
            path = f"/api/v1/conversations/{conv['id']}/messages"
            seen: list[dict] = []
            turn_id = None
            with pytest.raises(httpx.TransportError):
                async with first.stream("POST", path, json={"content": f"go {tag}"}) as response:
                    turn_id = response.headers["x-turn-id"]
                    async for line in response.aiter_lines():
                        if line.startswith("data: "):
                            import json

                            seen.append(json.loads(line[6:]))
                            if sum(e["type"] == "token" for e in seen) == 3:
                                os.kill(api1.pid, signal.SIGKILL)
            assert turn_id and seen
            rest, _ = await read_sse(
                second,
                "GET",
                f"/api/v1/turns/{turn_id}/events",
                headers={"Last-Event-ID": str(seen[-1]["seq"])},
            )
            events = seen + rest
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
            assert events[-1]["type"] == "complete"
            assert text_of(events) == text == events[-1]["content"]
            everything, _ = await read_sse(second, "GET", f"/api/v1/turns/{turn_id}/events")
            assert everything == events
