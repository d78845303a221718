"""Concurrency limits and the daily token budget: turns active at once per user (exact under
50 parallel requests), open event streams per key, tokens per user per UTC day.

Each test runs an API of its own with low limits (the session's API has none)."""

import asyncio
import contextlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.conftest import marker
from tests.helpers import create_conversation, start_turn_json, wait_turn
from tests.test_approvals import email_args, script_email
from tests.test_rate_limits import Caller, Serve, retry_after, serve

__all__ = ["serve"]


def script_parked(model: Any, tag: str) -> None:
    """A model that asks to send an email, so the turn stays active until a person decides."""
    script_email(model, tag, email_args(tag), then=f"Sent {tag}.")


async def parked_turn(caller: Caller, model: Any) -> dict[str, Any]:
    """A turn of a new conversation, waiting for its approval."""
    tag = marker()
    script_parked(model, tag)
    conversation = await create_conversation(caller.client)
    started = await start_turn_json(caller.client, conversation["id"], f"mail {tag}")
    return await wait_turn(caller.client, started["turn"]["id"], until=("awaiting_approval",))


async def approve_all(caller: Caller, turn_id: str) -> dict[str, Any]:
    """Approve the turn's pending approval (once it asks) and return the finished turn."""
    turn = await wait_turn(caller.client, turn_id, until=("awaiting_approval",))
    assert turn["status"] == "awaiting_approval", turn
    for approval in turn["pending_approvals"]:
        decided = await caller.client.post(
            f"/api/v1/approvals/{approval['id']}", json={"decision": "approve"}
        )
        assert decided.status_code == 200, decided.text
    return await wait_turn(caller.client, turn_id)


async def test_fifty_parallel_turns_start_exactly_the_active_limit(serve: Serve, model):
    api = await serve(max_active_turns_per_user=5)
    alice = await api.user()
    tags = [marker() for _ in range(50)]
    for tag in tags:
        script_parked(model, tag)
    conversations = await asyncio.gather(*(create_conversation(alice.client) for _ in tags))

    async def post(conversation: dict[str, Any], tag: str) -> httpx.Response:
        return await alice.client.post(
            f"/api/v1/conversations/{conversation['id']}/messages",
            json={"content": f"mail {tag}"},
            headers={"Accept": "application/json"},
        )

    responses = await asyncio.gather(*(post(c, t) for c, t in zip(conversations, tags, strict=True)))
    statuses = [r.status_code for r in responses]
    assert sorted(set(statuses)) == [202, 429], statuses
    assert statuses.count(202) == 5
    for response in responses:
        if response.status_code == 429:
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "too_many_active_turns"
            assert response.json()["max_active_turns"] == 5
            assert retry_after(response) >= 1
    # A refused request left nothing behind: 5 turns exist for this user, all of them active.
    started = [r.json()["turn"]["id"] for r in responses if r.status_code == 202]
    count = await api.pool.fetchval("SELECT count(*) FROM turns WHERE user_id = $1", alice.user_id)
    assert count == 5

    # Another user is not held back by Alice's limit.
    bob = await api.user("bob")
    bobs = await parked_turn(bob, model)
    assert bobs["status"] == "awaiting_approval"

    finished = await asyncio.gather(*(approve_all(alice, turn_id) for turn_id in started))
    assert [t["status"] for t in finished] == ["completed"] * 5
    # With her turns ended, Alice may start another.
    refused = next(c for c, r in zip(conversations, responses, strict=True) if r.status_code == 429)
    again = await start_turn_json(alice.client, refused["id"], f"mail {tags[conversations.index(refused)]}")
    assert (await approve_all(alice, again["turn"]["id"]))["status"] == "completed"
    assert (await approve_all(bob, bobs["id"]))["status"] == "completed"


async def open_stream(
    stack: contextlib.AsyncExitStack, client: httpx.AsyncClient, url: str
) -> httpx.Response:
    """Open an event stream and read its first event (so it is surely being served)."""
    response = await stack.enter_async_context(client.stream("GET", url))
    assert response.status_code == 200, await response.aread()
    lines = response.aiter_lines()
    # Held until the stack closes: a line iterator left to the garbage collector closes the stream.
    stack.push_async_callback(lines.aclose)  # type: ignore[attr-defined]
    async for line in lines:
        if line.startswith("data:"):
            assert json.loads(line.removeprefix("data:"))["seq"] == 1
            break
    return response


async def test_open_streams_are_limited_per_key(serve: Serve, model):
    api = await serve(max_streams_per_key=2)
    alice = await api.user()
    first_turn, second_turn = await parked_turn(alice, model), await parked_turn(alice, model)
    events = [f"/api/v1/turns/{t['id']}/events" for t in (first_turn, second_turn)]

    async with contextlib.AsyncExitStack() as first_stack, contextlib.AsyncExitStack() as second_stack:
        await open_stream(first_stack, alice.client, events[0])
        await open_stream(second_stack, alice.client, events[1])

        refused = await alice.client.get(events[0])
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "too_many_streams"
        assert refused.json()["max_streams"] == 2
        assert retry_after(refused) >= 1
        # A streamed reply is refused before its turn starts.
        conversation = await create_conversation(alice.client)
        streamed = await alice.client.post(
            f"/api/v1/conversations/{conversation['id']}/messages", json={"content": "hello"}
        )
        assert streamed.status_code == 429 and streamed.json()["code"] == "too_many_streams"
        turns = await alice.client.get(f"/api/v1/conversations/{conversation['id']}/turns")
        assert turns.json()["data"] == []
        # Polling is no stream; and another key has slots of its own.
        polled = await alice.client.get(events[0], headers={"Accept": "application/json"})
        assert polled.status_code == 200
        other = await api.another_key(alice)
        async with contextlib.AsyncExitStack() as other_stack:
            await open_stream(other_stack, other.client, events[0])

        # Closing a stream frees its slot (once the server has seen the client go).
        await first_stack.aclose()
        reopened = await _open_when_free(alice.client, events[0])
        assert reopened.status_code == 200
        await reopened.aclose()

    for turn in (first_turn, second_turn):
        assert (await approve_all(alice, turn["id"]))["status"] == "completed"


async def _open_when_free(client: httpx.AsyncClient, url: str) -> httpx.Response:
    """Open `url` as a stream, retrying while the server still counts a closed stream."""
    for _ in range(100):
        response = await client.send(client.build_request("GET", url), stream=True)
        if response.status_code != 429:
            return response
        await response.aclose()
        await asyncio.sleep(0.05)
    raise AssertionError("the closed stream's slot was never freed")


async def test_the_daily_token_budget_refuses_new_turns_until_midnight(serve: Serve, model):
    api = await serve(daily_token_budget=20)
    alice = await api.user()
    tag = marker()
    model.script(tag, [{"kind": "reply", "content": " ".join(f"word{i}" for i in range(30))}])
    conversation = await create_conversation(alice.client)
    first = await start_turn_json(alice.client, conversation["id"], f"talk {tag}")
    turn = await wait_turn(alice.client, first["turn"]["id"])
    assert turn["status"] == "completed", turn
    used = turn["usage"]["total_tokens"]
    assert used >= 20

    refused = await alice.client.post(
        f"/api/v1/conversations/{conversation['id']}/messages",
        json={"content": f"again {tag}"},
        headers={"Accept": "application/json"},
    )
    assert refused.status_code == 429, refused.text
    problem = refused.json()
    assert problem["code"] == "quota_exceeded"
    assert (problem["daily_token_budget"], problem["tokens_used"]) == (20, used)
    assert "20" in problem["detail"] and str(used) in problem["detail"]
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    assert problem["renews_at"] == midnight.isoformat().replace("+00:00", "Z")
    until_midnight = (midnight - datetime.now(UTC)).total_seconds()
    assert abs(retry_after(refused) - until_midnight) <= 5
    # Nothing was stored for the refused message.
    transcript = (await alice.client.get(f"/api/v1/conversations/{conversation['id']}/messages")).json()
    assert [m["content"] for m in transcript["data"] if m["role"] == "user"] == [f"talk {tag}"]
    # A streaming client gets the same problem, not a stream.
    streamed = await alice.client.post(
        f"/api/v1/conversations/{conversation['id']}/messages", json={"content": "again"}
    )
    assert streamed.status_code == 429 and streamed.json()["code"] == "quota_exceeded"

    # The budget is per user.
    bob = await api.user("bob")
    other = await create_conversation(bob.client)
    assert (
        await wait_turn(bob.client, (await start_turn_json(bob.client, other["id"], "hi"))["turn"]["id"])
    )["status"] == "completed"
