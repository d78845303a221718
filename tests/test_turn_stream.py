"""A streamed reply, end to end: HTTP → workflow → model → event log → SSE."""

from tests.conftest import marker
from tests.helpers import create_conversation, read_sse, start_turn_json, text_of, wait_turn


async def test_streamed_reply_matches_stored_message(user, model):
    tag = marker()
    reply = "Hello there! " * 20 + "Done."
    model.script(tag, [{"kind": "reply", "content": reply, "delay_ms": 2}])
    conv = await create_conversation(user.client, title="stream")

    events, response = await read_sse(
        user.client,
        "POST",
        f"/api/v1/conversations/{conv['id']}/messages",
        json={"content": f"say hello {tag}"},
    )

    assert response.status_code == 200
    turn_id = response.headers["x-turn-id"]
    assert response.headers["location"] == f"/api/v1/turns/{turn_id}"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "status" and events[0]["status"] == "queued"
    assert events[1]["type"] == "status" and events[1]["status"] == "running"
    assert events[-2] == {**events[-2], "type": "status", "status": "completed"}
    assert events[-1]["type"] == "complete"
    assert [e["type"] for e in events].count("complete") == 1
    assert all(e["turn_id"] == turn_id and e["conversation_id"] == conv["id"] for e in events)
    assert text_of(events) == reply
    assert events[-1]["content"] == reply
    message_event = next(e for e in events if e["type"] == "message")
    assert message_event["message"]["content"] == reply
    assert events[-1]["usage"]["completion_tokens"] > 0

    transcript = (await user.client.get(f"/api/v1/conversations/{conv['id']}/messages")).json()
    assert [m["role"] for m in transcript["data"]] == ["user", "assistant"]
    assert transcript["data"][1]["content"] == reply
    assert transcript["data"][1]["id"] == events[-1]["message_id"]

    # A polling client sees the same events.
    polled = (
        await user.client.get(
            f"/api/v1/turns/{turn_id}/events",
            params={"after": 0, "limit": 1000},
            headers={"Accept": "application/json"},
        )
    ).json()
    assert polled["data"] == events and polled["has_more"] is False
    turn = await wait_turn(user.client, turn_id)
    assert turn["status"] == "completed"
    assert turn["last_seq"] == events[-1]["seq"]
    assert turn["output"]["content"] == reply
    assert (
        turn["usage"]["total_tokens"] == turn["usage"]["prompt_tokens"] + turn["usage"]["completion_tokens"]
    )


async def test_json_client_polls_with_wait(user, model):
    tag = marker()
    model.script(tag, [{"kind": "reply", "content": "polled answer", "delay_ms": 20}])
    conv = await create_conversation(user.client)
    started = await start_turn_json(user.client, conv["id"], f"hi {tag}")
    assert started["message"]["content"] == f"hi {tag}"
    assert started["turn"]["status"] == "queued"
    turn = await wait_turn(user.client, started["turn"]["id"])
    assert turn["status"] == "completed"
    assert turn["output"]["content"] == "polled answer"
    assert turn["error"] is None


async def test_resume_with_last_event_id(user, model):
    tag = marker()
    model.script(tag, [{"kind": "reply", "content": "one two three four five six seven", "delay_ms": 30}])
    conv = await create_conversation(user.client)
    started = await start_turn_json(user.client, conv["id"], f"count {tag}")
    turn_id = started["turn"]["id"]
    first, _ = await read_sse(user.client, "GET", f"/api/v1/turns/{turn_id}/events", stop_after=3)
    rest, _ = await read_sse(
        user.client, "GET", f"/api/v1/turns/{turn_id}/events", headers={"Last-Event-ID": "3"}
    )
    assert [e["seq"] for e in first] == [1, 2, 3]
    assert [e["seq"] for e in rest] == list(range(4, rest[-1]["seq"] + 1))
    assert rest[-1]["type"] == "complete"
    everything, _ = await read_sse(user.client, "GET", f"/api/v1/turns/{turn_id}/events")
    assert first + rest == everything
    # After the end: nothing left → 204.
    done = await user.client.get(f"/api/v1/turns/{turn_id}/events", params={"after": everything[-1]["seq"]})
    assert done.status_code == 204
