"""One user's objects are invisible to another: every route answers B as if A's ids did not exist.

API.md: "Another user's object → 404 `not_found` (never 403: do not leak existence)". Each
response to B is compared with the response to an id that never existed, and searched for
anything of A's.
"""

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import marker
from tests.helpers import create_conversation, start_turn_json, wait_turn

SECRET_TITLE = "A's private plans"


@dataclass
class Owner:
    """User A's objects, and the strings that must never reach B."""

    client: httpx.AsyncClient
    conv: str
    turn: str
    message: str
    key_id: str
    secrets: list[str]


async def owner_with_a_turn(a: Any, model: Any) -> Owner:
    """User A with a conversation, a finished turn and a key; the strings B must never see."""
    tag = marker()
    reply = f"the launch code is 0000 {tag}"
    model.script(tag, [{"kind": "reply", "content": reply}])
    conv = await create_conversation(
        a.client, title=SECRET_TITLE, system_prompt="A's system prompt", metadata={"a-secret": "meta"}
    )
    started = await start_turn_json(a.client, conv["id"], f"what is the code? {tag}")
    assert (await wait_turn(a.client, started["turn"]["id"]))["status"] == "completed"
    keys = (await a.client.get("/api/v1/auth/keys")).json()["data"]
    return Owner(
        client=a.client,
        conv=conv["id"],
        turn=started["turn"]["id"],
        message=started["message"]["id"],
        key_id=keys[0]["id"],
        secrets=[SECRET_TITLE, "A's system prompt", "a-secret", tag, reply, a.key, keys[0]["prefix"]],
    )


@pytest.fixture
async def a_and_b(make_user: Any, model: Any) -> tuple[Owner, Any]:
    a, b = await make_user("alice"), await make_user("bob")
    return await owner_with_a_turn(a, model), b


def assert_hidden(response: httpx.Response, owner: Owner, status: int = 404, code: str = "not_found") -> None:
    """B gets the problem an unknown id gets, and nothing of A's."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code and body["request_id"] == response.headers["x-request-id"], body
    for secret in owner.secrets:
        assert secret not in response.text, (secret, response.text)
    # `detail` may echo the id B sent; A's other ids may not appear.
    sent = str(response.request.url)
    for other_id in (owner.conv, owner.turn, owner.message, owner.key_id):
        assert other_id in sent or other_id not in response.text, (other_id, response.text)
    assert "x-turn-id" not in response.headers and "location" not in response.headers


JSON_ACCEPT = {"Accept": "application/json"}
CONV, TURN = "/api/v1/conversations/{conv}", "/api/v1/turns/{turn}"
# Every route taking an id: method, url template, request kwargs.
ROUTES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "get-conversation": ("GET", CONV, {}),
    "patch-conversation": ("PATCH", CONV, {"json": {"title": "B was here", "metadata": {}}}),
    "delete-conversation": ("DELETE", CONV, {}),
    "list-messages": ("GET", f"{CONV}/messages", {}),
    "post-message-json": ("POST", f"{CONV}/messages", {"json": {"content": "hi"}, "headers": JSON_ACCEPT}),
    "post-message-stream": ("POST", f"{CONV}/messages", {"json": {"content": "hi"}}),
    "post-message-idempotent": (
        "POST",
        f"{CONV}/messages",
        {"json": {"content": "hi"}, "headers": {**JSON_ACCEPT, "Idempotency-Key": "b-key"}},
    ),
    "list-turns": ("GET", f"{CONV}/turns", {}),
    "get-turn": ("GET", TURN, {}),
    "get-turn-wait": ("GET", TURN, {"params": {"wait": "1"}}),
    "events-sse": ("GET", f"{TURN}/events", {}),
    "events-sse-resume": ("GET", f"{TURN}/events", {"headers": {"Last-Event-ID": "1"}}),
    "events-json": ("GET", f"{TURN}/events", {"params": {"after": "0"}, "headers": JSON_ACCEPT}),
    "cancel-turn": ("POST", f"{TURN}/cancel", {}),
    "cancel-turn-idempotent": ("POST", f"{TURN}/cancel", {"headers": {"Idempotency-Key": "b-cancel"}}),
    "delete-key": ("DELETE", "/api/v1/auth/keys/{key}", {}),
}
UNKNOWN = {
    "conv": "conv_00000000000000000000000000",
    "turn": "turn_00000000000000000000000000",
    "key": "key_00000000000000000000000000",
}


@pytest.mark.parametrize("route", list(ROUTES.values()), ids=list(ROUTES))
async def test_other_users_ids_are_not_found(
    a_and_b: tuple[Owner, Any], route: tuple[str, str, dict[str, Any]]
) -> None:
    owner, b = a_and_b
    method, template, kwargs = route
    response = await b.client.request(
        method, template.format(conv=owner.conv, turn=owner.turn, key=owner.key_id), **kwargs
    )
    assert_hidden(response, owner)
    # Exactly what an id that never existed gets (under its own Idempotency-Key, if any).
    headers = {
        k: f"{v}-unknown" if k == "Idempotency-Key" else v for k, v in kwargs.get("headers", {}).items()
    }
    unknown = await b.client.request(method, template.format(**UNKNOWN), **{**kwargs, "headers": headers})
    assert (unknown.status_code, unknown.json()["code"]) == (response.status_code, response.json()["code"])
    assert set(unknown.headers) == set(response.headers)

    # And nothing of A's changed.
    a = owner.client
    conv = await a.get(f"/api/v1/conversations/{owner.conv}")
    assert conv.status_code == 200 and conv.json()["title"] == SECRET_TITLE
    assert conv.json()["metadata"] == {"a-secret": "meta"}
    turns = (await a.get(f"/api/v1/conversations/{owner.conv}/turns")).json()["data"]
    assert [t["id"] for t in turns] == [owner.turn] and turns[0]["status"] == "completed"
    messages = (await a.get(f"/api/v1/conversations/{owner.conv}/messages")).json()["data"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert (await a.get("/api/v1/auth/me")).status_code == 200  # A's key still works


async def test_cancel_of_active_turn_by_other_user_is_not_found(make_user: Any, model: Any) -> None:
    a, b = await make_user("alice"), await make_user("bob")
    tag = marker()
    model.script(tag, [{"kind": "reply", "content": "slow and steady wins", "delay_ms": 200}])
    conv = await create_conversation(a.client, title=SECRET_TITLE)
    started = await start_turn_json(a.client, conv["id"], f"go {tag}")
    turn_id = started["turn"]["id"]
    owner = Owner(a.client, conv["id"], turn_id, started["message"]["id"], "key_x", [SECRET_TITLE, tag])

    assert_hidden(await b.client.post(f"/api/v1/turns/{turn_id}/cancel"), owner)
    assert_hidden(await b.client.delete(f"/api/v1/conversations/{conv['id']}"), owner)
    # B's message does not queue behind A's turn, nor reveal it with a 409.
    hidden = await b.client.post(
        f"/api/v1/conversations/{conv['id']}/messages",
        json={"content": "me too"},
        headers={"Accept": "application/json"},
    )
    assert_hidden(hidden, owner)
    assert "active_turn_id" not in hidden.json()

    finished = await wait_turn(a.client, turn_id)
    assert finished["status"] == "completed" and finished["output"]["content"] == "slow and steady wins"


async def test_cursors_of_another_user_act_as_unknown(a_and_b: tuple[Owner, Any]) -> None:
    """A's ids as B's page cursors get what an unknown cursor gets, never a page cut at A's row."""
    owner, b = a_and_b
    mine = await create_conversation(b.client, title="B's own")
    started = await start_turn_json(b.client, mine["id"], "hello")
    await wait_turn(b.client, started["turn"]["id"])
    conversations, messages = "/api/v1/conversations", f"/api/v1/conversations/{mine['id']}/messages"
    lists = [
        (conversations, owner.conv, "conv_00000000000000000000000000"),
        (messages, owner.message, "msg_00000000000000000000000000"),
        (f"/api/v1/conversations/{mine['id']}/turns", owner.turn, "turn_00000000000000000000000000"),
    ]
    for path, a_id, unknown_id in lists:
        for cursor in ("after", "before"):
            unknown = await b.client.get(path, params={cursor: unknown_id})
            assert unknown.status_code == 422 and unknown.json()["code"] == "invalid_cursor", unknown.text
            response = await b.client.get(path, params={cursor: a_id})
            assert_hidden(response, owner, status=422, code="invalid_cursor")

    # B's own lists hold nothing of A's.
    for path in ("/api/v1/conversations", "/api/v1/auth/keys"):
        listing = await b.client.get(path, params={"limit": 100})
        assert listing.status_code == 200
        for secret in [*owner.secrets, owner.conv, owner.key_id]:
            assert secret not in listing.text


async def test_idempotency_keys_are_per_user(make_user: Any) -> None:
    """The same Idempotency-Key from two users names two requests: B never gets A's replay."""
    a, b = await make_user("alice"), await make_user("bob")
    body = {"title": "same body"}
    first = await a.client.post("/api/v1/conversations", json=body, headers={"Idempotency-Key": "shared"})
    second = await b.client.post("/api/v1/conversations", json=body, headers={"Idempotency-Key": "shared"})
    assert first.status_code == second.status_code == 201
    assert "idempotent-replayed" not in second.headers
    assert first.json()["id"] != second.json()["id"]
    assert (await b.client.get(f"/api/v1/conversations/{first.json()['id']}")).status_code == 404
    # A different body from B under A's key is B's own new request, not a reuse conflict.
    third = await b.client.post(
        "/api/v1/auth/keys", json={"name": "b"}, headers={"Idempotency-Key": "shared-2"}
    )
    again = await a.client.post(
        "/api/v1/auth/keys", json={"name": "a"}, headers={"Idempotency-Key": "shared-2"}
    )
    assert third.status_code == again.status_code == 201
    assert third.json()["secret"] != again.json()["secret"]
