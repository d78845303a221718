"""Users, their roles and their API keys. Keys are stored only as a SHA-256 hash.

A secret is `sk-asst-` (so a leaked key is recognisable in secret scans) and 43 characters
drawn by `secrets` from 62 letters and digits: 43 · log2(62) ≈ 256 bits.

SHA-256 (not a slow password hash) is right here: keys cannot be guessed, and every request
must verify one cheaply. Verifying is a lookup of the hash in a unique index, so the secret is
never compared with anything: what a timing attack could learn is how far the B-tree search
for SHA-256(guess) went, i.e. a few bits of the hash of a key the attacker already knows, and
nothing about any stored key's secret (finding an input whose hash shares more leading bytes
with a stored hash is a preimage search). That is why there is no `hmac.compare_digest` here.

Nothing about a key is cached: every request reads the key and its user, so a revoked key or
a disabled user is refused by every API process from the next request on.
"""

import hashlib
import secrets
import string
from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from core.errors import Conflict
from core.ids import new_id
from store.db import Pool
from store.pages import Page, PageRequest, fetch_page

KEY_PREFIX = "sk-asst-"
_KEY_ALPHABET = string.ascii_letters + string.digits
_KEY_LENGTH = 43  # 62**43 > 2**256

Role = Literal["user", "admin"]
_USER_COLUMNS = "id, name, role, created_at, disabled_at"
_KEY_COLUMNS = "id, name, prefix, created_at, last_used_at"


class LastAdmin(Conflict):
    """The change would leave no active admin."""

    code = "last_admin"


class User(BaseModel):
    id: str
    name: str
    role: Role = "user"
    created_at: datetime
    disabled_at: datetime | None = None


class ApiKey(BaseModel):
    id: str
    name: str | None
    prefix: str
    created_at: datetime
    last_used_at: datetime | None


class NewApiKey(ApiKey):
    secret: str


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _new_secret() -> str:
    return KEY_PREFIX + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(_KEY_LENGTH))


async def create_user(pool: Pool, *, name: str, role: Role = "user") -> User:
    row = await pool.fetchrow(
        f"INSERT INTO users (id, name, role) VALUES ($1, $2, $3) RETURNING {_USER_COLUMNS}",
        new_id("usr"),
        name,
        role,
    )
    assert row is not None
    return User(**dict(row))


async def get_user(pool: Pool, *, user_id: str) -> User | None:
    row = await pool.fetchrow(f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1", user_id)
    return User(**dict(row)) if row else None


async def find_user_by_name(pool: Pool, *, name: str) -> User | None:
    found = await users_named(pool, name=name)
    return found[0] if found else None


async def users_named(pool: Pool, *, name: str) -> list[User]:
    """Every user called `name`, oldest first (names are not unique)."""
    rows = await pool.fetch(
        f"SELECT {_USER_COLUMNS} FROM users WHERE name = $1 ORDER BY created_at, id", name
    )
    return [User(**dict(r)) for r in rows]


async def list_users(pool: Pool, *, page: PageRequest) -> tuple[list[User], Page]:
    result = await fetch_page(
        pool, table="users", columns=_USER_COLUMNS, scope="TRUE", scope_args=[], page=page
    )
    return [User(**r) for r in result.rows], result


async def all_users(pool: Pool) -> list[User]:
    rows = await pool.fetch(f"SELECT {_USER_COLUMNS} FROM users ORDER BY created_at, id")
    return [User(**dict(r)) for r in rows]


async def update_user(
    pool: Pool,
    *,
    user_id: str,
    name: str | None = None,
    role: Role | None = None,
    disabled: bool | None = None,
    keep_an_admin: bool = True,
) -> User | None:
    """Apply the given changes (None: unchanged); None if there is no such user.

    With `keep_an_admin`, demoting or disabling the last active admin raises LastAdmin. The
    active admins' rows are locked first, so two admins demoting each other at once cannot
    both succeed.
    """
    async with pool.acquire() as conn, conn.transaction():
        if keep_an_admin and (role == "user" or disabled):
            admins = await conn.fetch(
                "SELECT id FROM users WHERE role = 'admin' AND disabled_at IS NULL ORDER BY id FOR UPDATE"
            )
            if {r["id"] for r in admins} == {user_id}:
                raise LastAdmin(
                    "this would leave no active admin: make another user an admin first",
                )
        row = await conn.fetchrow(
            "UPDATE users SET name = COALESCE($2, name), role = COALESCE($3, role),"
            " disabled_at = CASE WHEN $4::boolean IS NULL THEN disabled_at"
            "  WHEN $4 THEN COALESCE(disabled_at, now()) ELSE NULL END"
            f" WHERE id = $1 RETURNING {_USER_COLUMNS}",
            user_id,
            name,
            role,
            disabled,
        )
    return User(**dict(row)) if row else None


async def create_key(pool: Pool, *, user_id: str, name: str | None) -> NewApiKey:
    secret = _new_secret()
    row = await pool.fetchrow(
        "INSERT INTO api_keys (id, user_id, name, prefix, secret_hash)"
        " VALUES ($1, $2, $3, $4, $5)"
        f" RETURNING {_KEY_COLUMNS}",
        new_id("key"),
        user_id,
        name,
        secret[:12],
        hash_secret(secret),
    )
    assert row is not None
    return NewApiKey(**dict(row), secret=secret)


async def list_keys(pool: Pool, *, user_id: str) -> list[ApiKey]:
    """The user's active (not revoked) keys."""
    rows = await pool.fetch(
        f"SELECT {_KEY_COLUMNS} FROM api_keys"
        " WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at, id",
        user_id,
    )
    return [ApiKey(**dict(r)) for r in rows]


async def get_key(pool: Pool, *, user_id: str, key_id: str) -> ApiKey | None:
    row = await pool.fetchrow(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
        key_id,
        user_id,
    )
    return ApiKey(**dict(row)) if row else None


async def revoke_key(pool: Pool, *, user_id: str, key_id: str) -> bool:
    status = await pool.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
        key_id,
        user_id,
    )
    return status.endswith(" 1")


async def revoke_any_key(pool: Pool, *, key_id: str) -> str | None:
    """Revoke an active key whoever owns it (the operator's CLI); its user's id, or None."""
    owner: str | None = await pool.fetchval(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING user_id",
        key_id,
    )
    return owner


async def authenticate(pool: Pool, *, secret: str) -> tuple[User, str] | None:
    """The active user owning an active key, and the key id; None for unknown or revoked keys
    and for disabled users.

    `last_used_at` is written at most once a minute per key, not on every request.
    """
    row = await pool.fetchrow(
        "WITH k AS ("
        "  SELECT id, user_id FROM api_keys WHERE secret_hash = $1 AND revoked_at IS NULL),"
        " touched AS ("
        "  UPDATE api_keys SET last_used_at = now() FROM k WHERE api_keys.id = k.id"
        "  AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute'))"
        " SELECT u.id, u.name, u.role, u.created_at, u.disabled_at, k.id AS key_id"
        " FROM k JOIN users u ON u.id = k.user_id WHERE u.disabled_at IS NULL",
        hash_secret(secret),
    )
    if row is None:
        return None
    data = dict(row)
    key_id = data.pop("key_id")
    return User(**data), key_id
