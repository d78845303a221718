"""Many turns at once: each completes with its own, correct events."""

import asyncio

import pytest

from tests.conftest import marker
from tests.helpers import create_conversation, read_sse, start_turn_json, text_of, wait_turn

pytestmark = pytest.mark.slow


async def test_fifty_turns_in_parallel(user, model):
    async def one(i: int) -> tuple[str, list[dict]]:
        tag = marker()
        text = f"answer number {i}: " + " ".join(f"t{i}-{k}" for k in range(30))
        model.script(tag, [{"kind": "reply", "content": text, "delay_ms": 10}])
        conv = await create_conversation(user.client, title=f"c{i}")
        events, response = await read_sse(
            user.client, "POST", f"/api/v1/conversations/{conv['id']}/messages", json={"content": f"q {tag}"}
        )
        assert response.status_code == 200
        assert all(e["conversation_id"] == conv["id"] for e in events)
        return text, events

    results = await asyncio.gather(*(one(i) for i in range(50)))
    turn_ids = set()
    for text, events in results:
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert events[-1]["type"] == "complete", events[-1]
        assert text_of(events) == text == events[-1]["content"]
        turn_ids.add(events[0]["turn_id"])
    assert len(turn_ids) == 50


async def test_second_message_to_busy_conversation_is_refused(user, model):
    tag = marker()
    model.script(tag, [{"kind": "reply", "content": "slow " * 30, "delay_ms": 50}])
    conv = await create_conversation(user.client)
    started = await start_turn_json(user.client, conv["id"], f"first {tag}")
    second = await user.client.post(
        f"/api/v1/conversations/{conv['id']}/messages",
        json={"content": "second"},
        headers={"Accept": "application/json"},
    )
    assert second.status_code == 409
    assert second.headers["content-type"] == "application/problem+json"
    problem = second.json()
    assert problem["code"] == "turn_in_progress"
    assert problem["active_turn_id"] == started["turn"]["id"]
    assert (await wait_turn(user.client, started["turn"]["id"]))["status"] == "completed"
    transcript = (await user.client.get(f"/api/v1/conversations/{conv['id']}/messages")).json()["data"]
    assert [m["content"] for m in transcript if m["role"] == "user"] == [f"first {tag}"]
    # Once the turn has ended, the conversation takes a new message.
    again = await start_turn_json(user.client, conv["id"], f"third {tag}")
    assert (await wait_turn(user.client, again["turn"]["id"]))["status"] == "completed"
