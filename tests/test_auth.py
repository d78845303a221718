"""The caller, their API keys, and the life cycle of a conversation (create, update, delete)."""

from datetime import datetime
from typing import Any

import httpx

from store.users import hash_secret
from tests.conftest import marker
from tests.helpers import create_conversation, start_turn_json, wait_turn


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code and body["status"] == status, body
    assert body["request_id"] == response.headers["x-request-id"]
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    return body


def client_with(user: Any, secret: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=str(user.client.base_url), headers={"Authorization": f"Bearer {secret}"}, timeout=30
    )


async def test_me(make_user: Any) -> None:
    user = await make_user("Ada Lovelace")
    response = await user.client.get("/api/v1/auth/me")
    assert response.status_code == 200
    me = response.json()
    assert me["id"] == user.id and me["id"].startswith("usr_")
    assert me["name"] == "Ada Lovelace"
    assert datetime.fromisoformat(me["created_at"]).utcoffset() is not None
    assert set(me) == {"id", "name", "role", "created_at"} and me["role"] == "user"
    # The scheme is case-insensitive (RFC 7235).
    lower = await user.client.get("/api/v1/auth/me", headers={"Authorization": f"bearer {user.key}"})
    assert lower.status_code == 200 and lower.json()["id"] == user.id


async def test_create_list_and_revoke_keys(user: Any, pool: Any) -> None:
    created = await user.client.post("/api/v1/auth/keys", json={"name": "laptop"})
    assert created.status_code == 201, created.text
    key = created.json()
    assert set(key) == {"id", "name", "prefix", "created_at", "last_used_at", "secret"}
    assert key["id"].startswith("key_") and key["name"] == "laptop"
    assert created.headers["location"] == f"/api/v1/auth/keys/{key['id']}"
    located = (await user.client.get(created.headers["location"])).json()
    assert located == {k: v for k, v in key.items() if k != "secret"}
    secret = key["secret"]
    assert secret.startswith("sk-asst-") and len(secret) > 32
    assert key["prefix"] == secret[:12]
    # Only a hash is stored.
    stored = await pool.fetchrow("SELECT prefix, secret_hash FROM api_keys WHERE id = $1", key["id"])
    assert stored["secret_hash"] == hash_secret(secret) and secret not in str(dict(stored))

    # Without a body, or with an empty one, a key is created all the same.
    unnamed = await user.client.post("/api/v1/auth/keys")
    assert unnamed.status_code == 201 and unnamed.json()["name"] is None
    assert unnamed.json()["secret"] != secret

    listed = await user.client.get("/api/v1/auth/keys")
    assert listed.status_code == 200
    keys = listed.json()
    assert keys["object"] == "list" and keys["has_more"] is False
    assert secret not in listed.text and "secret" not in listed.text
    assert {k["id"] for k in keys["data"]} >= {key["id"], unnamed.json()["id"]}
    assert all(set(k) == {"id", "name", "prefix", "created_at", "last_used_at"} for k in keys["data"])
    assert next(k for k in keys["data"] if k["id"] == key["id"])["prefix"] == key["prefix"]

    async with client_with(user, secret) as laptop:
        used = await laptop.get("/api/v1/auth/me")
        assert used.status_code == 200 and used.json()["id"] == user.id
        # Revoking takes effect at once, for the very next request.
        revoked = await user.client.delete(f"/api/v1/auth/keys/{key['id']}")
        assert revoked.status_code == 204 and revoked.content == b""
        assert_problem(await laptop.get("/api/v1/auth/me"), 401, "unauthenticated")
        assert_problem(await laptop.post("/api/v1/conversations", json={}), 401, "unauthenticated")
    after = (await user.client.get("/api/v1/auth/keys")).json()["data"]
    assert key["id"] not in {k["id"] for k in after}
    # Revoked or unknown: 404.
    assert_problem(await user.client.delete(f"/api/v1/auth/keys/{key['id']}"), 404, "not_found")
    assert_problem(await user.client.delete("/api/v1/auth/keys/key_nope"), 404, "not_found")


async def test_revoking_own_key(user: Any) -> None:
    """A key may revoke itself; the request after that is refused."""
    keys = (await user.client.get("/api/v1/auth/keys")).json()["data"]
    assert len(keys) == 1
    assert (await user.client.delete(f"/api/v1/auth/keys/{keys[0]['id']}")).status_code == 204
    assert_problem(await user.client.get("/api/v1/auth/keys"), 401, "unauthenticated")


async def test_conversation_create_update_delete(user: Any) -> None:
    created = await user.client.post(
        "/api/v1/conversations",
        json={"title": "plans", "system_prompt": "be brief", "metadata": {"project": "x"}},
    )
    assert created.status_code == 201, created.text
    conv = created.json()
    assert created.headers["location"] == f"/api/v1/conversations/{conv['id']}"
    assert conv["id"].startswith("conv_")
    assert conv["title"] == "plans" and conv["system_prompt"] == "be brief"
    assert conv["tools"] is None and conv["model"] is None and conv["active_turn_id"] is None
    assert conv["metadata"] == {"project": "x"}
    fetched = await user.client.get(created.headers["location"])
    assert fetched.status_code == 200 and fetched.json() == conv

    patched = await user.client.patch(created.headers["location"], json={"title": "new plans", "tools": []})
    assert patched.status_code == 200, patched.text
    updated = patched.json()
    assert updated["title"] == "new plans" and updated["tools"] == []
    assert updated["system_prompt"] == "be brief" and updated["metadata"] == {"project": "x"}  # untouched
    assert datetime.fromisoformat(updated["updated_at"]) > datetime.fromisoformat(conv["updated_at"])
    assert updated["created_at"] == conv["created_at"]
    assert (await user.client.get(created.headers["location"])).json() == updated
    cleared = await user.client.patch(created.headers["location"], json={"title": None, "metadata": None})
    assert cleared.status_code == 200
    assert cleared.json()["title"] is None and cleared.json()["metadata"] == {}

    deleted = await user.client.delete(created.headers["location"])
    assert deleted.status_code == 204 and deleted.content == b""
    assert_problem(await user.client.get(created.headers["location"]), 404, "not_found")
    assert_problem(await user.client.delete(created.headers["location"]), 404, "not_found")
    assert_problem(
        await user.client.patch(created.headers["location"], json={"title": "x"}), 404, "not_found"
    )
    assert (await user.client.get("/api/v1/conversations")).json()["data"] == []


async def test_active_turn_blocks_delete_and_second_message(user: Any, model: Any) -> None:
    tag = marker()
    model.script(
        tag, [{"kind": "reply", "content": "taking my time here, one word at a time", "delay_ms": 200}]
    )
    conv = await create_conversation(user.client, title="busy")
    started = await start_turn_json(user.client, conv["id"], f"slowly {tag}")
    turn_id = started["turn"]["id"]
    try:
        assert (await user.client.get(f"/api/v1/conversations/{conv['id']}")).json()[
            "active_turn_id"
        ] == turn_id
        assert_problem(
            await user.client.delete(f"/api/v1/conversations/{conv['id']}"), 409, "turn_in_progress"
        )

        url = f"/api/v1/conversations/{conv['id']}/messages"
        for accept in ("application/json", "text/event-stream"):
            second = await user.client.post(url, json={"content": "me too"}, headers={"Accept": accept})
            body = assert_problem(second, 409, "turn_in_progress")
            assert body["active_turn_id"] == turn_id
        # Neither refusal left anything behind.
        turns = (await user.client.get(f"/api/v1/conversations/{conv['id']}/turns")).json()["data"]
        assert [t["id"] for t in turns] == [turn_id]
        transcript = (await user.client.get(url)).json()["data"]
        assert [m["content"] for m in transcript if m["role"] == "user"] == [f"slowly {tag}"]
    finally:
        finished = await wait_turn(user.client, turn_id)
    assert finished["status"] == "completed"

    # Once the turn has ended, both work.
    after = await user.client.get(f"/api/v1/conversations/{conv['id']}")
    assert after.json()["active_turn_id"] is None
    next_turn = await start_turn_json(user.client, conv["id"], "and now?")
    await wait_turn(user.client, next_turn["turn"]["id"])
    assert (await user.client.delete(f"/api/v1/conversations/{conv['id']}")).status_code == 204
    assert_problem(await user.client.get(f"/api/v1/turns/{turn_id}"), 404, "not_found")
