"""User management over the API (`/api/v1/users`): admins only, 403 `admin_required` for
everyone else, and never a state without an active admin (409 `last_admin`)."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest

from devstack import free_port
from store import users
from store.migrate import migrate
from tests.conftest import _serve
from tests.test_auth import assert_problem

USER_FIELDS = {"id", "name", "role", "created_at", "disabled_at"}
KEY_FIELDS = {"id", "name", "prefix", "created_at", "last_used_at"}


def keyed(api_url: str, secret: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=api_url, headers={"Authorization": f"Bearer {secret}"}, timeout=30)


@pytest.fixture
async def admin(pool: Any, api_url: str) -> AsyncIterator[httpx.AsyncClient]:
    user = await users.create_user(pool, name="admin", role="admin")
    key = await users.create_key(pool, user_id=user.id, name="admin")
    async with keyed(api_url, key.secret) as client:
        yield client


async def test_ordinary_keys_get_403_admin_required_on_every_users_route(user: Any, api_url: str) -> None:
    target = user.id
    (key,) = (await user.client.get("/api/v1/auth/keys")).json()["data"]
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/api/v1/users", {}),
        ("POST", "/api/v1/users", {"json": {"name": "mallory", "role": "admin"}}),
        ("GET", f"/api/v1/users/{target}", {}),
        ("PATCH", f"/api/v1/users/{target}", {"json": {"role": "admin"}}),
        ("GET", f"/api/v1/users/{target}/keys", {}),
        ("POST", f"/api/v1/users/{target}/keys", {"json": {}}),
        ("GET", f"/api/v1/users/{target}/keys/{key['id']}", {}),
        ("DELETE", f"/api/v1/users/{target}/keys/{key['id']}", {}),
    ]
    for method, path, kwargs in calls:
        body = assert_problem(await user.client.request(method, path, **kwargs), 403, "admin_required")
        assert "admin" in body["detail"]
        async with httpx.AsyncClient(base_url=api_url) as anonymous:
            assert_problem(await anonymous.request(method, path, **kwargs), 401, "unauthenticated")
    # Nothing happened: still an ordinary user, the key still works, nobody named mallory.
    me = (await user.client.get("/api/v1/auth/me")).json()
    assert me["role"] == "user" and me["id"] == target


async def test_admin_creates_reads_lists_and_updates_users(admin: httpx.AsyncClient, api_url: str) -> None:
    created = await admin.post("/api/v1/users", json={"name": "Grace Hopper"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == USER_FIELDS | {"api_key", "key_id"}
    assert body["id"].startswith("usr_") and body["name"] == "Grace Hopper"
    assert body["role"] == "user" and body["disabled_at"] is None
    assert datetime.fromisoformat(body["created_at"]).utcoffset() is not None
    assert body["api_key"].startswith("sk-asst-") and body["key_id"].startswith("key_")
    assert created.headers["location"] == f"/api/v1/users/{body['id']}"
    user = {k: v for k, v in body.items() if k in USER_FIELDS}
    assert (await admin.get(created.headers["location"])).json() == user

    # The first key is hers, and works at once.
    async with keyed(api_url, body["api_key"]) as grace:
        me = await grace.get("/api/v1/auth/me")
        assert me.json() == {
            "id": body["id"],
            "name": "Grace Hopper",
            "role": "user",
            "created_at": body["created_at"],
        }
        (only,) = (await grace.get("/api/v1/auth/keys")).json()["data"]
        assert only["id"] == body["key_id"]

        # Newest first, paginated like every list.
        second = (await admin.post("/api/v1/users", json={"name": "second", "role": "admin"})).json()
        assert second["role"] == "admin"
        page = (await admin.get("/api/v1/users", params={"limit": 1})).json()
        assert page["object"] == "list" and page["has_more"] is True
        assert [u["id"] for u in page["data"]] == [second["id"]]
        assert set(page["data"][0]) == USER_FIELDS and page["first_id"] == second["id"]
        following = (await admin.get("/api/v1/users", params={"limit": 1, "after": second["id"]})).json()
        assert following["data"] == [user]
        assert_problem(await admin.get("/api/v1/users", params={"limit": 0}), 422, "validation_failed")
        assert_problem(await admin.get("/api/v1/users", params={"after": "usr_nope"}), 422, "invalid_cursor")

        renamed = await admin.patch(f"/api/v1/users/{body['id']}", json={"name": "Rear Admiral Hopper"})
        assert renamed.status_code == 200 and renamed.json() == {**user, "name": "Rear Admiral Hopper"}
        promoted = (await admin.patch(f"/api/v1/users/{body['id']}", json={"role": "admin"})).json()
        assert promoted["role"] == "admin"
        assert (await grace.get("/api/v1/users")).status_code == 200  # her key is an admin's now
        assert (await admin.patch(f"/api/v1/users/{body['id']}", json={"role": "user"})).json()[
            "role"
        ] == "user"
        assert_problem(await grace.get("/api/v1/users"), 403, "admin_required")

        disabled = (await admin.patch(f"/api/v1/users/{body['id']}", json={"disabled": True})).json()
        assert datetime.fromisoformat(disabled["disabled_at"]).utcoffset() is not None
        assert_problem(await grace.get("/api/v1/auth/me"), 401, "unauthenticated")
        # Disabling again keeps the first time; the user is still listed and readable.
        again = (await admin.patch(f"/api/v1/users/{body['id']}", json={"disabled": True})).json()
        assert again["disabled_at"] == disabled["disabled_at"]
        assert (await admin.get(f"/api/v1/users/{body['id']}")).json()["disabled_at"] == disabled[
            "disabled_at"
        ]
        enabled = (await admin.patch(f"/api/v1/users/{body['id']}", json={"disabled": False})).json()
        assert enabled["disabled_at"] is None
        assert (await grace.get("/api/v1/auth/me")).status_code == 200


async def test_admin_manages_a_users_keys(admin: httpx.AsyncClient, user: Any, api_url: str) -> None:
    base = f"/api/v1/users/{user.id}/keys"
    created = await admin.post(base, json={"name": "issued by admin"})
    assert created.status_code == 201, created.text
    key = created.json()
    assert set(key) == KEY_FIELDS | {"secret"} and key["name"] == "issued by admin"
    assert created.headers["location"] == f"{base}/{key['id']}"
    assert (await admin.get(created.headers["location"])).json() == {k: key[k] for k in KEY_FIELDS}
    unnamed = await admin.post(base)
    assert unnamed.status_code == 201 and unnamed.json()["name"] is None
    listed = await admin.get(base)
    assert listed.status_code == 200 and "secret" not in listed.text and key["secret"] not in listed.text
    assert {k["id"] for k in listed.json()["data"]} >= {key["id"], unnamed.json()["id"]}
    # The user sees the key as theirs.
    assert key["id"] in {k["id"] for k in (await user.client.get("/api/v1/auth/keys")).json()["data"]}

    async with keyed(api_url, key["secret"]) as issued:
        assert (await issued.get("/api/v1/auth/me")).json()["id"] == user.id
        revoked = await admin.delete(f"{base}/{key['id']}")
        assert revoked.status_code == 204 and revoked.content == b""
        assert_problem(await issued.get("/api/v1/auth/me"), 401, "unauthenticated")
    assert_problem(await admin.delete(f"{base}/{key['id']}"), 404, "not_found")
    assert_problem(await admin.get(f"{base}/{key['id']}"), 404, "not_found")
    assert (await user.client.get("/api/v1/auth/me")).status_code == 200  # the user's other key lives on

    # A key id of another user is not found under this one.
    other = (await admin.post("/api/v1/users", json={"name": "other"})).json()
    assert_problem(
        await admin.delete(f"/api/v1/users/{other['id']}/keys/{unnamed.json()['id']}"), 404, "not_found"
    )
    assert unnamed.json()["id"] in {k["id"] for k in (await admin.get(base)).json()["data"]}


async def test_unknown_users_and_bad_bodies(admin: httpx.AsyncClient) -> None:
    nobody = "usr_00000000000000000000000000"
    unknown: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"/api/v1/users/{nobody}", {}),
        ("PATCH", f"/api/v1/users/{nobody}", {"json": {"name": "x"}}),
        ("GET", f"/api/v1/users/{nobody}/keys", {}),
        ("POST", f"/api/v1/users/{nobody}/keys", {"json": {}}),
        ("GET", f"/api/v1/users/{nobody}/keys/key_nope", {}),
        ("DELETE", f"/api/v1/users/{nobody}/keys/key_nope", {}),
    ]
    for method, path, kwargs in unknown:
        assert_problem(await admin.request(method, path, **kwargs), 404, "not_found")
    for bad in [
        {},
        {"name": ""},
        {"name": "x", "role": "root"},
        {"name": "x", "extra": 1},
        {"name": "a\x00b"},
    ]:
        body = assert_problem(await admin.post("/api/v1/users", json=bad), 422, "validation_failed")
        assert body["errors"]
    me = (await admin.get("/api/v1/auth/me")).json()["id"]
    for bad in [{"name": None}, {"role": None}, {"disabled": None}, {"role": "owner"}, {"disabled": "soon"}]:
        assert_problem(await admin.patch(f"/api/v1/users/{me}", json=bad), 422, "validation_failed")


async def test_a_replayed_user_creation_does_not_show_or_keep_the_key(
    admin: httpx.AsyncClient, pool: Any
) -> None:
    headers = {"Idempotency-Key": f"create-{uuid.uuid4().hex}"}
    first = await admin.post("/api/v1/users", json={"name": "once"}, headers=headers)
    again = await admin.post("/api/v1/users", json={"name": "once"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers.get("idempotent-replayed") == "true"
    secret = first.json()["api_key"]
    assert again.json() == {k: v for k, v in first.json().items() if k != "api_key"}
    stored = await pool.fetch(
        "SELECT response_body FROM idempotency_keys WHERE key = $1", headers["Idempotency-Key"]
    )
    assert stored and all(secret.encode() not in bytes(r["response_body"]) for r in stored)


# The last admin, on a database of its own: the check counts every admin there is.


@pytest.fixture
async def lone_api(settings: Any, pool: Any) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    from api.app import create_app
    from store.db import create_pool

    name = f"admins_{uuid.uuid4().hex[:8]}"
    await pool.execute(f'CREATE DATABASE "{name}"')
    url = settings.database_url.rsplit("/", 1)[0] + f"/{name}"
    await migrate(url)
    own = await create_pool(url)
    port = free_port()
    server, task = await _serve(create_app(settings.model_copy(update={"database_url": url})), port)
    try:
        yield f"http://127.0.0.1:{port}", own
    finally:
        server.should_exit = True
        await task
        await own.close()
        await pool.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


async def test_the_last_admin_cannot_demote_or_disable_themselves(lone_api: Any) -> None:
    api_url, own = lone_api
    first = await users.create_user(own, name="first admin", role="admin")
    first_key = await users.create_key(own, user_id=first.id, name="k")
    async with keyed(api_url, first_key.secret) as alone:
        path = f"/api/v1/users/{first.id}"
        for change in ({"role": "user"}, {"disabled": True}, {"role": "user", "disabled": True}):
            body = assert_problem(await alone.patch(path, json=change), 409, "last_admin")
            assert "no active admin" in body["detail"]
        unchanged = (await alone.get(path)).json()
        assert (unchanged["role"], unchanged["disabled_at"]) == ("admin", None)
        # Other changes of oneself are fine.
        assert (await alone.patch(path, json={"name": "the admin"})).json()["name"] == "the admin"

        # With a second admin, the first may step down; then the second is the last one.
        second = (await alone.post("/api/v1/users", json={"name": "second admin", "role": "admin"})).json()
        demoted = await alone.patch(path, json={"role": "user"})
        assert demoted.status_code == 200 and demoted.json()["role"] == "user"
        assert_problem(await alone.get("/api/v1/users"), 403, "admin_required")
        async with keyed(api_url, second["api_key"]) as successor:
            own_path = f"/api/v1/users/{second['id']}"
            assert_problem(await successor.patch(own_path, json={"disabled": True}), 409, "last_admin")
            # A disabled admin does not count: promoting a disabled user leaves one active admin.
            await successor.patch(path, json={"role": "admin", "disabled": True})
            assert_problem(await successor.patch(own_path, json={"role": "user"}), 409, "last_admin")


async def test_two_admins_demoting_themselves_at_once_leave_one(lone_api: Any) -> None:
    api_url, own = lone_api
    admins = [await users.create_user(own, name=f"admin {i}", role="admin") for i in range(2)]
    keys = [await users.create_key(own, user_id=a.id, name="k") for a in admins]
    for _ in range(5):
        async with keyed(api_url, keys[0].secret) as one, keyed(api_url, keys[1].secret) as two:
            answers = await asyncio.gather(
                one.patch(f"/api/v1/users/{admins[0].id}", json={"role": "user"}),
                two.patch(f"/api/v1/users/{admins[1].id}", json={"role": "user"}),
            )
            assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
            active = await own.fetchval(
                "SELECT count(*) FROM users WHERE role = 'admin' AND disabled_at IS NULL"
            )
            assert active == 1
        await own.execute("UPDATE users SET role = 'admin'")
