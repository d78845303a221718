"""Behaviour at the edges: batching, code-point offsets, retryable statuses, a turn
cancelled before its workflow ran, the LISTEN connection lost, Temporal unreachable."""

import asyncio
import time

import httpx

from devstack import free_port
from store import turns
from tests.conftest import assistant_process, marker, subprocess_env
from tests.helpers import (
    create_conversation,
    read_sse,
    start_turn_json,
    text_of,
    wait_turn,
    wait_until_serving,
)
from worker import reconcile_queued_turns


async def _stream(user, content):
    conv = await create_conversation(user.client)
    events, _ = await read_sse(
        user.client, "POST", f"/api/v1/conversations/{conv['id']}/messages", json={"content": content}
    )
    return events


async def test_tokens_are_batched_after_the_first(user, model):
    tag = marker()
    text = " ".join(f"w{i}" for i in range(200))
    model.script(tag, [{"kind": "reply", "content": text, "delay_ms": 1}])
    events = await _stream(user, f"fast {tag}")
    tokens = [e for e in events if e["type"] == "token"]
    assert text_of(events) == text
    assert tokens[0]["content"] == "w0", "the first token is written at once, alone"
    assert len(tokens) < 40, f"200 deltas in ~0.2 s arrive in a few batches, got {len(tokens)}"


async def test_index_counts_code_points(user, model):
    tag = marker()
    text = "Emoji 🎉 and \U0001d518\U0001d52b survive: " + "🙂 " * 30  # outside the BMP
    model.script(tag, [{"kind": "reply", "content": text, "delay_ms": 5}])
    events = await _stream(user, f"emoji {tag}")
    assert text_of(events) == text == events[-1]["content"]  # text_of checks index == len(text so far)


async def test_408_and_409_are_retried(user, model):
    tag = marker()
    model.script(
        tag,
        [
            {"kind": "error", "status": 408, "message": "timeout"},
            {"kind": "error", "status": 409, "message": "conflict"},
            {"kind": "reply", "content": "third time lucky"},
        ],
    )
    events = await _stream(user, f"retry {tag}")
    assert events[-1]["type"] == "complete" and events[-1]["content"] == "third time lucky"
    assert len(model.requests(tag)) == 3


async def test_cancel_before_the_workflow_ran(user, pool):
    conv = await create_conversation(user.client)
    async with pool.acquire() as conn, conn.transaction():
        started = await turns.start_turn(
            conn, user_id=user.id, conversation_id=conv["id"], content="never run"
        )
    assert started is not None
    turn_id = started[1].id
    response = await user.client.post(f"/api/v1/turns/{turn_id}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    events, _ = await read_sse(user.client, "GET", f"/api/v1/turns/{turn_id}/events")
    assert [(e["type"], e.get("status")) for e in events] == [
        ("status", "queued"),
        ("status", "cancelled"),
        ("cancelled", None),
    ]


async def test_streams_survive_losing_the_listen_connection(user, model, pool):
    killed = await pool.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%'"
    )
    assert killed >= 1
    tag = marker()
    model.script(tag, [{"kind": "reply", "content": "still streaming", "delay_ms": 20}])
    began = time.monotonic()
    events = await _stream(user, f"after {tag}")
    assert events[-1]["type"] == "complete" and text_of(events) == "still streaming"
    # The listener reconnects within a second; the 5 s re-read fallback is not what carried this.
    assert time.monotonic() - began < 4


async def test_temporal_unreachable_is_a_503_and_nothing_is_half_done(settings, user, tmp_path):
    port = free_port()
    env = subprocess_env(settings, TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}")
    with assistant_process(["api", "--port", str(port)], env, tmp_path / "api.log") as api:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {user.key}"}
        ) as client:
            await wait_until_serving(base, api)
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["temporal"]["status"] == "failed"
            assert ready.headers["retry-after"]
            conv = await create_conversation(client)  # reads and writes without Temporal still work
            refused = await client.post(
                f"/api/v1/conversations/{conv['id']}/messages", json={"content": "hi"}
            )
            assert refused.status_code == 503 and refused.json()["code"] == "unavailable"
            assert refused.headers["retry-after"]
            messages = (await client.get(f"/api/v1/conversations/{conv['id']}/messages")).json()["data"]
            assert messages == []
            assert (await client.get(f"/api/v1/conversations/{conv['id']}")).json()["active_turn_id"] is None


async def test_the_reconciler_never_runs_a_turn_twice(user, model, pool, temporal, settings):
    tag = marker()
    model.script(tag, [{"kind": "reply", "content": "once"}])
    conv = await create_conversation(user.client)
    started = await start_turn_json(user.client, conv["id"], f"once {tag}")
    assert (await wait_turn(user.client, started["turn"]["id"]))["status"] == "completed"
    assert await reconcile_queued_turns(temporal, pool, settings, grace_seconds=0) == 0
    await asyncio.sleep(0.5)
    assert len(model.requests(tag)) == 1
