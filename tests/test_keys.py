"""API keys as an operator relies on them: what a secret looks like and what is stored of it,
`last_used_at` without a write per request, revocation and disabling seen at once by every
API process, and the `assistant users` / `assistant keys` commands."""

import asyncio
import json
import math
import string
import sys
import uuid
from typing import Any

import httpx
import pytest

from devstack import free_port
from store import users
from store.users import hash_secret
from tests.conftest import ROOT, assistant_process, subprocess_env
from tests.helpers import wait_until_serving
from tests.test_auth import assert_problem, client_with

ALPHANUMERIC = set(string.ascii_letters + string.digits)


async def test_secrets_are_prefixed_random_and_stored_only_as_a_hash(user: Any, pool: Any) -> None:
    created = [
        (await user.client.post("/api/v1/auth/keys", json={"name": f"k{i}"})).json() for i in range(20)
    ]
    secrets = [k["secret"] for k in created]
    assert len(set(secrets)) == 20
    for key in created:
        secret = key["secret"]
        assert secret.startswith("sk-asst-")
        body = secret.removeprefix("sk-asst-")
        # Letters and digits only (a double-click selects it whole), at least 256 bits.
        assert set(body) <= ALPHANUMERIC
        assert len(body) * math.log2(len(ALPHANUMERIC)) >= 256
        assert key["prefix"] == secret[:12]
        row = await pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", key["id"])
        assert row["secret_hash"] == hash_secret(secret)
        assert all(secret not in str(value) and body[4:] not in str(value) for value in dict(row).values())
    # Every character position varies across keys (not a counter or a timestamp in disguise).
    bodies = [s.removeprefix("sk-asst-") for s in secrets]
    assert all(len({b[i] for b in bodies}) > 1 for i in range(43))


async def test_last_used_at_is_written_at_most_once_a_minute(user: Any, pool: Any) -> None:
    key = (await user.client.post("/api/v1/auth/keys", json={"name": "counted"})).json()
    assert key["last_used_at"] is None

    async def stored() -> Any:
        # xmin changes with every write of the row: equal xmin, no write.
        return await pool.fetchrow(
            "SELECT last_used_at, xmin::text AS xmin FROM api_keys WHERE id = $1", key["id"]
        )

    async with client_with(user, key["secret"]) as client:
        assert (await client.get("/api/v1/auth/me")).status_code == 200
        first = await stored()
        assert first["last_used_at"] is not None
        for _ in range(10):
            assert (await client.get("/api/v1/auth/me")).status_code == 200
        assert await stored() == first  # ten requests, no write
        shown = (await user.client.get(f"/api/v1/auth/keys/{key['id']}")).json()
        assert shown["last_used_at"] is not None

        # A minute later (moved back instead of waited for), the next request records its use.
        await pool.execute(
            "UPDATE api_keys SET last_used_at = last_used_at - interval '61 seconds' WHERE id = $1", key["id"]
        )
        aged = await stored()
        assert (await client.get("/api/v1/auth/me")).status_code == 200
        again = await stored()
        assert again["last_used_at"] > aged["last_used_at"] and again["xmin"] != aged["xmin"]


async def test_a_disabled_users_keys_are_refused_at_once_and_work_again_when_enabled(
    user: Any, pool: Any
) -> None:
    second = (await user.client.post("/api/v1/auth/keys", json={"name": "second"})).json()["secret"]
    async with client_with(user, second) as other:
        assert (await other.get("/api/v1/auth/me")).status_code == 200
        await users.update_user(pool, user_id=user.id, disabled=True)
        for client in (user.client, other):
            assert_problem(await client.get("/api/v1/auth/me"), 401, "unauthenticated")
            assert_problem(await client.post("/api/v1/conversations", json={}), 401, "unauthenticated")
        await users.update_user(pool, user_id=user.id, disabled=False)
        assert (await other.get("/api/v1/auth/me")).status_code == 200
        assert (await user.client.get("/api/v1/auth/me")).status_code == 200


@pytest.mark.slow
async def test_revoking_or_disabling_through_one_api_process_is_seen_by_another_at_once(
    settings: Any, pool: Any, tmp_path: Any
) -> None:
    admin = await users.create_user(pool, name="two-process admin", role="admin")
    admin_key = await users.create_key(pool, user_id=admin.id, name="admin")
    member = await users.create_user(pool, name="two-process member")
    laptop = await users.create_key(pool, user_id=member.id, name="laptop")
    phone = await users.create_key(pool, user_id=member.id, name="phone")
    env = subprocess_env(settings)
    port1, port2 = free_port(), free_port()
    url1, url2 = f"http://127.0.0.1:{port1}", f"http://127.0.0.1:{port2}"
    with (
        assistant_process(["api", "--port", str(port1)], env, tmp_path / "api1.log") as api1,
        assistant_process(["api", "--port", str(port2)], env, tmp_path / "api2.log") as api2,
    ):
        await wait_until_serving(url1, api1)
        await wait_until_serving(url2, api2)

        def client(url: str, secret: str) -> httpx.AsyncClient:
            return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=30)

        async with (
            client(url1, laptop.secret) as laptop_on_1,
            client(url2, laptop.secret) as laptop_on_2,
            client(url2, phone.secret) as phone_on_2,
            client(url1, admin_key.secret) as admin_on_1,
        ):
            # Process 2 has just accepted the key, many times over: nothing it may remember helps.
            for _ in range(5):
                assert (await laptop_on_2.get("/api/v1/auth/me")).json()["id"] == member.id
            assert (await laptop_on_1.delete(f"/api/v1/auth/keys/{laptop.id}")).status_code == 204
            assert_problem(await laptop_on_2.get("/api/v1/auth/me"), 401, "unauthenticated")
            assert_problem(await laptop_on_2.get("/api/v1/conversations"), 401, "unauthenticated")

            for _ in range(5):
                assert (await phone_on_2.get("/api/v1/auth/me")).status_code == 200
            disabled = await admin_on_1.patch(f"/api/v1/users/{member.id}", json={"disabled": True})
            assert disabled.status_code == 200 and disabled.json()["disabled_at"] is not None
            assert_problem(await phone_on_2.get("/api/v1/auth/me"), 401, "unauthenticated")
            enabled = await admin_on_1.patch(f"/api/v1/users/{member.id}", json={"disabled": False})
            assert enabled.status_code == 200 and enabled.json()["disabled_at"] is None
            assert (await phone_on_2.get("/api/v1/auth/me")).status_code == 200


# The commands


async def assistant(settings: Any, *args: str) -> tuple[int, str, str]:
    """Run `assistant ARGS…` against the test database: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        *args,
        env=subprocess_env(settings),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_users_and_keys_commands(settings: Any, api_url: str, pool: Any) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    code, out, _ = await assistant(settings, "users", "create", name, "--admin", "--json")
    assert code == 0
    created = json.loads(out)
    assert created["role"] == "admin" and created["user_id"].startswith("usr_")
    first_key = created["api_key"]

    def as_user(secret: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=api_url, headers={"Authorization": f"Bearer {secret}"}, timeout=30)

    async with as_user(first_key) as client:
        me = (await client.get("/api/v1/auth/me")).json()
        assert me == {**me, "id": created["user_id"], "name": name, "role": "admin"}

    code, out, _ = await assistant(settings, "users", "list", "--json")
    assert code == 0
    listed = {u["id"]: u for u in json.loads(out)}
    mine = listed[created["user_id"]]
    assert set(mine) == {"id", "name", "role", "created_at", "disabled_at", "disabled"}
    assert (mine["name"], mine["role"], mine["disabled"], mine["disabled_at"]) == (name, "admin", False, None)
    code, out, _ = await assistant(settings, "users", "list")
    line = next(line for line in out.splitlines() if line.startswith(created["user_id"]))
    assert line.split()[1:2] == ["admin"] and "active" in line and line.endswith(name)

    # A second key, by name of the user; printed once, listed without its secret.
    code, out, _ = await assistant(settings, "keys", "create", name, "--name", "backup", "--json")
    assert code == 0
    key = json.loads(out)
    assert key["user_id"] == created["user_id"] and key["name"] == "backup"
    assert key["api_key"].startswith(key["prefix"]) and key["key_id"].startswith("key_")
    code, out, _ = await assistant(settings, "keys", "list", created["user_id"])
    assert code == 0 and key["key_id"] in out and "backup" in out and key["api_key"] not in out
    code, out, _ = await assistant(settings, "keys", "list", name, "--json")
    keys = json.loads(out)
    assert [k["name"] for k in keys] == ["cli", "backup"] and keys[1]["id"] == key["key_id"]
    assert all(set(k) == {"id", "name", "prefix", "created_at", "last_used_at"} for k in keys)

    async with as_user(key["api_key"]) as backup, as_user(first_key) as first:
        assert (await backup.get("/api/v1/auth/me")).status_code == 200
        code, out, _ = await assistant(settings, "keys", "revoke", key["key_id"])
        assert code == 0 and key["key_id"] in out
        assert_problem(await backup.get("/api/v1/auth/me"), 401, "unauthenticated")
        assert (await first.get("/api/v1/auth/me")).status_code == 200

        code, out, _ = await assistant(settings, "users", "disable", name)
        assert code == 0 and "disabled" in out
        assert_problem(await first.get("/api/v1/auth/me"), 401, "unauthenticated")
        code, out, _ = await assistant(settings, "users", "list", "--json")
        assert next(u for u in json.loads(out) if u["id"] == created["user_id"])["disabled"] is True
        code, out, _ = await assistant(settings, "users", "enable", created["user_id"])
        assert code == 0
        assert (await first.get("/api/v1/auth/me")).status_code == 200

        code, out, _ = await assistant(settings, "users", "set-role", name, "user")
        assert code == 0 and "role user" in out
        assert (await first.get("/api/v1/auth/me")).json()["role"] == "user"


@pytest.mark.parametrize(
    "args, message",
    [
        (["users", "disable", "usr_nobody"], "no user with the id or name 'usr_nobody'"),
        (["users", "enable", "nobody at all"], "no user with the id or name 'nobody at all'"),
        (["users", "set-role", "usr_nobody", "admin"], "no user"),
        (["keys", "create", "usr_nobody"], "no user"),
        (["keys", "list", "usr_nobody"], "no user"),
        (["keys", "revoke", "key_nope"], "no active API key 'key_nope'"),
    ],
)
async def test_unknown_ids_are_clear_errors(settings: Any, pool: Any, args: list[str], message: str) -> None:
    code, out, err = await assistant(settings, *args)
    assert (code, out) == (1, "")
    assert err.startswith("assistant: ") and message in err
    assert "Traceback" not in err


async def test_an_ambiguous_name_asks_for_an_id(settings: Any, pool: Any) -> None:
    name = f"twin-{uuid.uuid4().hex[:8]}"
    twins = [await users.create_user(pool, name=name) for _ in range(2)]
    code, out, err = await assistant(settings, "users", "disable", name)
    assert (code, out) == (1, "")
    assert "2 users are named" in err and all(t.id in err for t in twins)
    for twin in twins:
        assert await users.get_user(pool, user_id=twin.id) == twin  # neither was disabled


async def test_revoking_a_revoked_key_is_an_error(settings: Any, user: Any) -> None:
    (key,) = (await user.client.get("/api/v1/auth/keys")).json()["data"]
    assert (await assistant(settings, "keys", "revoke", key["id"]))[0] == 0
    code, _, err = await assistant(settings, "keys", "revoke", key["id"])
    assert code == 1 and "no active API key" in err
    assert_problem(await user.client.get("/api/v1/auth/me"), 401, "unauthenticated")
