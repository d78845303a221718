"""How a turn meets model failures: retries honour Retry-After, non-retryable errors end at
once with their code, a stream cut mid-way is retried after a `reset`."""

import asyncio
import itertools
import time

from tests.conftest import marker
from tests.helpers import create_conversation, read_sse, text_of


async def _run(user, content):
    conv = await create_conversation(user.client)
    events, response = await read_sse(
        user.client, "POST", f"/api/v1/conversations/{conv['id']}/messages", json={"content": content}
    )
    assert response.status_code == 200
    return events


def _assert_terminal(events, status, terminal_type):
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-2]["type"] == "status" and events[-2]["status"] == status
    assert events[-1]["type"] == terminal_type
    terminal = {"complete", "error", "cancelled"}
    assert sum(e["type"] in terminal for e in events) == 1


async def test_rate_limited_twice_then_success_honours_retry_after(user, model):
    tag = marker()
    model.script(
        tag,
        [
            {"kind": "error", "status": 429, "message": "slow down", "retry_after": 3},
            {"kind": "error", "status": 429, "message": "slow down", "retry_after": 3},
            {"kind": "reply", "content": "finally here"},
        ],
    )
    events = await _run(user, f"hello {tag}")
    _assert_terminal(events, "completed", "complete")
    assert events[-1]["content"] == "finally here"
    assert text_of(events) == "finally here"
    received = [r.received_at for r in model.requests(tag)]
    assert len(received) == 3
    gaps = [b - a for a, b in itertools.pairwise(received)]
    # 3 s, not the retry policy's own 1 s then 2 s: the server's Retry-After was honoured.
    assert all(gap >= 2.9 for gap in gaps), gaps


async def test_server_error_every_time_ends_with_model_unavailable(user, model):
    tag = marker()
    model.script(tag, [{"kind": "error", "status": 500, "message": "boom"}])
    events = await _run(user, f"hello {tag}")
    _assert_terminal(events, "failed", "error")
    assert events[-1]["code"] == "model_unavailable"
    assert events[-1]["retryable"] is True
    assert len(model.requests(tag)) == 4  # workflows/policies.py MODEL_CALL maximum_attempts
    turn = (await user.client.get(f"/api/v1/turns/{events[0]['turn_id']}")).json()
    assert turn["status"] == "failed"
    assert turn["error"]["code"] == "model_unavailable" and turn["error"]["retryable"] is True


async def test_auth_failure_is_not_retried(user, model):
    tag = marker()
    model.script(tag, [{"kind": "error", "status": 401, "message": "bad key", "code": "invalid_api_key"}])
    started = time.monotonic()
    events = await _run(user, f"hello {tag}")
    _assert_terminal(events, "failed", "error")
    assert events[-1]["code"] == "model_auth_failed"
    assert events[-1]["retryable"] is False
    assert len(model.requests(tag)) == 1
    assert time.monotonic() - started < 5


async def test_context_too_long_and_unknown_model_codes(user, model):
    tag = marker()
    model.script(
        tag,
        [
            {
                "kind": "error",
                "status": 400,
                "message": "too long",
                "code": "context_length_exceeded",
            }
        ],
    )
    events = await _run(user, f"hello {tag}")
    assert events[-1]["code"] == "context_length_exceeded"
    tag2 = marker()
    model.script(tag2, [{"kind": "error", "status": 404, "message": "no such model"}])
    events = await _run(user, f"hello {tag2}")
    assert events[-1]["code"] == "model_not_found"
    assert len(model.requests(tag2)) == 1


async def test_stream_broken_midway_is_retried_after_reset(user, model):
    tag = marker()
    final = "The complete and correct answer, streamed again from the start."
    model.script(
        tag,
        [
            {"kind": "break", "content": "A partial answer that will be cut", "after_chunks": 3},
            {"kind": "reply", "content": final},
        ],
    )
    events = await _run(user, f"hello {tag}")
    _assert_terminal(events, "completed", "complete")
    types = [e["type"] for e in events]
    assert "reset" in types
    reset = events[types.index("reset")]
    before = [e for e in events[: types.index("reset")] if e["type"] == "token"]
    after = [e for e in events[types.index("reset") :] if e["type"] == "token"]
    assert before and all(e["attempt"] == 1 for e in before)
    assert reset["attempt"] == 2 and reset["message_id"] == before[0]["message_id"]
    assert all(e["attempt"] == 2 and e["message_id"] == reset["message_id"] for e in after)
    assert after[0]["index"] == 0
    assert text_of(events) == final == events[-1]["content"]
    transcript = (
        await user.client.get(f"/api/v1/conversations/{events[0]['conversation_id']}/messages")
    ).json()
    assert [m["content"] for m in transcript["data"] if m["role"] == "assistant"] == [final]


async def test_cancel_stops_the_model_promptly(user, model):
    tag = marker()
    model.script(tag, [{"kind": "reply", "content": "word " * 400, "delay_ms": 50}])
    conv = await create_conversation(user.client)
    url = f"/api/v1/conversations/{conv['id']}/messages"
    first, response = await read_sse(user.client, "POST", url, json={"content": f"long {tag}"}, stop_after=4)
    turn_id = response.headers["x-turn-id"]
    assert any(e["type"] == "token" for e in first)
    started = time.monotonic()
    cancelled = await user.client.post(f"/api/v1/turns/{turn_id}/cancel")
    assert cancelled.status_code == 202
    assert cancelled.json()["id"] == turn_id
    events, _ = await read_sse(user.client, "GET", f"/api/v1/turns/{turn_id}/events")
    assert time.monotonic() - started < 2
    _assert_terminal(events, "cancelled", "cancelled")
    # Nothing streams after the end, and the model call was closed: no new tokens appear.
    await asyncio.sleep(0.5)
    again = (
        await user.client.get(
            f"/api/v1/turns/{turn_id}/events", params={"after": 0}, headers={"Accept": "application/json"}
        )
    ).json()["data"]
    assert again == events
    turn = (await user.client.get(f"/api/v1/turns/{turn_id}")).json()
    assert turn["status"] == "cancelled"
    # Idempotent: cancelling again is fine and changes nothing.
    assert (await user.client.post(f"/api/v1/turns/{turn_id}/cancel")).status_code == 202
    # The conversation is free again.
    conv_now = (await user.client.get(f"/api/v1/conversations/{conv['id']}")).json()
    assert conv_now["active_turn_id"] is None
