"""`Idempotency-Key` on POST, as API.md "Conventions" describes it.

Same key + same body replays the stored response (`Idempotent-Replayed: true`) and creates
nothing; same key + different body → 422 `idempotency_key_reused`; a key still in flight →
409 `idempotency_key_in_use`. A replayed `POST …/messages` starts no second turn, whatever
the `Accept` header of either request.
"""

import asyncio
import json
import uuid
from typing import Any

import httpx

from api.idempotency import request_hash
from store import idempotency
from store.db import Pool
from tests.conftest import marker
from tests.helpers import create_conversation, read_sse, wait_turn

JSON_ACCEPT = {"Accept": "application/json"}


def new_key() -> str:
    return f"idem-{uuid.uuid4().hex}"


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code and body["request_id"] == response.headers["x-request-id"], body


def assert_replay(first: httpx.Response, again: httpx.Response, *, ignore: tuple[str, ...] = ()) -> None:
    """`again` is `first` replayed: same status, body and Location, marked as a replay."""
    assert "idempotent-replayed" not in first.headers
    assert again.headers.get("idempotent-replayed") == "true", again.headers
    assert again.status_code == first.status_code
    assert {k: v for k, v in again.json().items() if k not in ignore} == {
        k: v for k, v in first.json().items() if k not in ignore
    }
    assert again.headers.get("location") == first.headers.get("location")
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["x-request-id"] != first.headers["x-request-id"]  # a new request all the same


async def test_create_conversation_replays(user: Any) -> None:
    key = new_key()
    first = await user.client.post(
        "/api/v1/conversations",
        json={"title": "once", "metadata": {"a": 1, "b": 2}},
        headers={"Idempotency-Key": key},
    )
    assert first.status_code == 201, first.text
    assert first.headers["location"] == f"/api/v1/conversations/{first.json()['id']}"
    # The same JSON, formatted and ordered differently, is the same body.
    again = await user.client.post(
        "/api/v1/conversations",
        content=b'{ "metadata": {"b": 2, "a": 1},\n  "title": "once" }',
        headers={"Idempotency-Key": key, "Content-Type": "application/json"},
    )
    assert_replay(first, again)
    listing = (await user.client.get("/api/v1/conversations")).json()
    assert [c["id"] for c in listing["data"]] == [first.json()["id"]]

    changed = await user.client.post(
        "/api/v1/conversations", json={"title": "twice"}, headers={"Idempotency-Key": key}
    )
    assert_problem(changed, 422, "idempotency_key_reused")
    # The same key on another route is another request too.
    elsewhere = await user.client.post("/api/v1/auth/keys", json={}, headers={"Idempotency-Key": key})
    assert_problem(elsewhere, 422, "idempotency_key_reused")
    assert len((await user.client.get("/api/v1/conversations")).json()["data"]) == 1
    assert len((await user.client.get("/api/v1/auth/keys")).json()["data"]) == 1


async def test_create_key_replays(user: Any, pool: Any) -> None:
    key = new_key()
    first = await user.client.post("/api/v1/auth/keys", json={"name": "ci"}, headers={"Idempotency-Key": key})
    assert first.status_code == 201, first.text
    again = await user.client.post("/api/v1/auth/keys", json={"name": "ci"}, headers={"Idempotency-Key": key})
    # The secret is shown once: only its hash is stored, so the replay is the key without it.
    assert_replay(first, again, ignore=("secret",))
    assert "secret" not in again.json()
    stored = await pool.fetchval("SELECT response_body FROM idempotency_keys WHERE key = $1", key)
    assert first.json()["secret"].encode() not in stored
    keys = (await user.client.get("/api/v1/auth/keys")).json()["data"]
    assert [k["name"] for k in keys].count("ci") == 1
    async with httpx.AsyncClient(
        base_url=str(user.client.base_url), headers={"Authorization": f"Bearer {first.json()['secret']}"}
    ) as other:
        assert (await other.get("/api/v1/auth/me")).status_code == 200

    changed = await user.client.post(
        "/api/v1/auth/keys", json={"name": "cd"}, headers={"Idempotency-Key": key}
    )
    assert_problem(changed, 422, "idempotency_key_reused")
    assert len((await user.client.get("/api/v1/auth/keys")).json()["data"]) == len(keys)


async def test_key_in_flight_is_in_use(user: Any, pool: Pool) -> None:
    """While the first request has no response yet, a second with the same key gets 409."""
    key, path, body = new_key(), "/api/v1/conversations", b'{"title":"slow"}'
    reserved = await idempotency.reserve(
        pool,
        user_id=user.id,
        key=key,
        method="POST",
        path=path,
        request_hash=request_hash("POST", path, body),
    )
    assert reserved is None  # claimed, as a first request in flight would have it
    response = await user.client.post(
        path, content=body, headers={"Idempotency-Key": key, "Content-Type": "application/json"}
    )
    assert_problem(response, 409, "idempotency_key_in_use")
    assert (await user.client.get("/api/v1/conversations")).json()["data"] == []


async def test_concurrent_creates_make_one_conversation(user: Any) -> None:
    key = new_key()
    responses = await asyncio.gather(
        *[
            user.client.post(
                "/api/v1/conversations", json={"title": "race"}, headers={"Idempotency-Key": key}
            )
            for _ in range(5)
        ]
    )
    created = [r for r in responses if r.status_code == 201]
    assert created and all(r.status_code in (201, 409) for r in responses), [r.text for r in responses]
    assert len({r.json()["id"] for r in created}) == 1
    assert sum("idempotent-replayed" not in r.headers for r in created) == 1
    for r in responses:
        if r.status_code == 409:
            assert_problem(r, 409, "idempotency_key_in_use")
    assert len((await user.client.get("/api/v1/conversations")).json()["data"]) == 1


async def _turns(client: httpx.AsyncClient, conv_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/api/v1/conversations/{conv_id}/turns")
    assert response.status_code == 200
    return response.json()["data"]


async def test_message_json_replay_starts_no_second_turn(user: Any, model: Any) -> None:
    tag = marker()
    # Slow, so the replay arrives while the turn is still running: it is a replay, not a 409.
    model.script(tag, [{"kind": "reply", "content": "one two three four five six", "delay_ms": 100}])
    conv = await create_conversation(user.client)
    url, key = f"/api/v1/conversations/{conv['id']}/messages", new_key()
    body = {"content": f"hello {tag}"}

    first = await user.client.post(url, json=body, headers={**JSON_ACCEPT, "Idempotency-Key": key})
    assert first.status_code == 202, first.text
    turn_id = first.json()["turn"]["id"]
    assert first.headers["location"] == f"/api/v1/turns/{turn_id}"
    again = await user.client.post(url, json=body, headers={**JSON_ACCEPT, "Idempotency-Key": key})
    assert_replay(first, again)
    assert again.headers["x-turn-id"] == turn_id
    assert [t["id"] for t in await _turns(user.client, conv["id"])] == [turn_id]

    assert (await wait_turn(user.client, turn_id))["status"] == "completed"
    later = await user.client.post(url, json=body, headers={**JSON_ACCEPT, "Idempotency-Key": key})
    assert_replay(first, later)  # still the first 202 body, though the turn has ended since
    changed = await user.client.post(
        url, json={"content": f"something else {tag}"}, headers={**JSON_ACCEPT, "Idempotency-Key": key}
    )
    assert_problem(changed, 422, "idempotency_key_reused")
    assert [t["id"] for t in await _turns(user.client, conv["id"])] == [turn_id]
    transcript = (await user.client.get(f"/api/v1/conversations/{conv['id']}/messages")).json()["data"]
    assert [m["role"] for m in transcript] == ["user", "assistant"]


async def test_message_stream_replay_is_the_same_turn_from_seq_1(user: Any, model: Any) -> None:
    tag = marker()
    model.script(tag, [{"kind": "reply", "content": "streamed once"}])
    conv = await create_conversation(user.client)
    url, key = f"/api/v1/conversations/{conv['id']}/messages", new_key()
    body = {"content": f"stream {tag}"}

    events, first = await read_sse(user.client, "POST", url, json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    turn_id = first.headers["x-turn-id"]
    replayed, again = await read_sse(user.client, "POST", url, json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-turn-id"] == turn_id
    assert again.headers["location"] == f"/api/v1/turns/{turn_id}"
    assert again.headers["content-type"].startswith("text/event-stream")
    assert replayed == events and replayed[0]["seq"] == 1 and replayed[-1]["type"] == "complete"
    assert [t["id"] for t in await _turns(user.client, conv["id"])] == [turn_id]

    changed = await user.client.post(url, json={"content": "other"}, headers={"Idempotency-Key": key})
    assert_problem(changed, 422, "idempotency_key_reused")


async def test_accept_is_not_part_of_the_body(user: Any, model: Any) -> None:
    tag = marker()
    model.script(tag, [{"kind": "reply", "content": "either way"}])
    conv = await create_conversation(user.client)
    url = f"/api/v1/conversations/{conv['id']}/messages"

    # JSON first, then a streaming replay: the same turn's stream from its start.
    key = new_key()
    body = {"content": f"first json {tag}"}
    first = await user.client.post(url, json=body, headers={**JSON_ACCEPT, "Idempotency-Key": key})
    assert first.status_code == 202, first.text
    turn_id = first.json()["turn"]["id"]
    events, streamed = await read_sse(
        user.client, "POST", url, json=body, headers={"Idempotency-Key": key, "Accept": "text/event-stream"}
    )
    assert streamed.status_code == 200 and streamed.headers["idempotent-replayed"] == "true"
    assert streamed.headers["x-turn-id"] == turn_id
    assert events[0]["seq"] == 1 and events[-1]["type"] == "complete"
    assert {e["turn_id"] for e in events} == {turn_id}

    # Streaming first, then a JSON replay: the 202 body of that turn.
    key = new_key()
    body = {"content": f"then stream {tag}"}
    events, streamed = await read_sse(user.client, "POST", url, json=body, headers={"Idempotency-Key": key})
    second_turn = streamed.headers["x-turn-id"]
    as_json = await user.client.post(url, json=body, headers={**JSON_ACCEPT, "Idempotency-Key": key})
    assert as_json.status_code == 202 and as_json.headers["idempotent-replayed"] == "true"
    assert as_json.headers["content-type"].startswith("application/json")
    started = as_json.json()
    assert started["turn"]["id"] == second_turn and started["message"]["content"] == body["content"]
    assert started["message"]["turn_id"] == second_turn

    turns = await _turns(user.client, conv["id"])
    assert sorted(t["id"] for t in turns) == sorted([turn_id, second_turn])


async def test_concurrent_messages_start_one_turn(user: Any, model: Any) -> None:
    tag = marker()
    model.script(tag, [{"kind": "reply", "content": "only once"}])
    conv = await create_conversation(user.client)
    url, key = f"/api/v1/conversations/{conv['id']}/messages", new_key()
    body = json.dumps({"content": f"race {tag}"}).encode()
    headers = {**JSON_ACCEPT, "Idempotency-Key": key, "Content-Type": "application/json"}
    responses = await asyncio.gather(
        *[user.client.post(url, content=body, headers=headers) for _ in range(5)]
    )
    assert all(r.status_code == 202 for r in responses), [r.text for r in responses]
    assert len({r.json()["turn"]["id"] for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 4
    turns = await _turns(user.client, conv["id"])
    assert len(turns) == 1
    await wait_turn(user.client, turns[0]["id"])


async def test_redirected_post_keeps_its_key(user: Any) -> None:
    """A POST to a trailing-slash URL is redirected (307); the redirected request, sent with the
    same key as browsers and `follow_redirects` clients do, is the one the key belongs to."""
    key = new_key()
    slash = await user.client.post(
        "/api/v1/conversations/", json={"title": "slash"}, headers={"Idempotency-Key": key}
    )
    assert slash.status_code == 307 and "idempotent-replayed" not in slash.headers
    created = await user.client.post(
        "/api/v1/conversations/",
        json={"title": "slash"},
        headers={"Idempotency-Key": key},
        follow_redirects=True,
    )
    assert created.status_code == 201, created.text
    again = await user.client.post(
        "/api/v1/conversations", json={"title": "slash"}, headers={"Idempotency-Key": key}
    )
    assert_replay(created, again)

    key = new_key()
    url = f"/api/v1/conversations/{created.json()['id']}/messages"
    started = await user.client.post(
        url + "/",
        json={"content": "via a redirect"},
        headers={**JSON_ACCEPT, "Idempotency-Key": key},
        follow_redirects=True,
    )
    assert started.status_code == 202, started.text
    replayed = await user.client.post(
        url, json={"content": "via a redirect"}, headers={**JSON_ACCEPT, "Idempotency-Key": key}
    )
    assert_replay(started, replayed)
    await wait_turn(user.client, started.json()["turn"]["id"])
