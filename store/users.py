"""Users and their API keys. Keys are stored only as a SHA-256 hash.

SHA-256 (not a slow password hash) is right here: keys carry ~238 bits of randomness, so
they cannot be guessed, and every request must verify one cheaply.
"""

import hashlib
import secrets
import string
from datetime import datetime

from pydantic import BaseModel

from core.ids import new_id
from store.db import Pool

KEY_PREFIX = "sk-asst-"
_KEY_ALPHABET = string.ascii_letters + string.digits


class User(BaseModel):
    id: str
    name: str
    created_at: datetime


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
    return KEY_PREFIX + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(40))


async def create_user(pool: Pool, *, name: str) -> User:
    row = await pool.fetchrow(
        "INSERT INTO users (id, name) VALUES ($1, $2) RETURNING id, name, created_at",
        new_id("usr"),
        name,
    )
    assert row is not None
    return User(**dict(row))


async def find_user_by_name(pool: Pool, *, name: str) -> User | None:
    row = await pool.fetchrow(
        "SELECT id, name, created_at FROM users WHERE name = $1 ORDER BY created_at LIMIT 1", name
    )
    return User(**dict(row)) if row else None


async def create_key(pool: Pool, *, user_id: str, name: str | None) -> NewApiKey:
    secret = _new_secret()
    row = await pool.fetchrow(
        "INSERT INTO api_keys (id, user_id, name, prefix, secret_hash)"
        " VALUES ($1, $2, $3, $4, $5)"
        " RETURNING id, name, prefix, created_at, last_used_at",
        new_id("key"),
        user_id,
        name,
        secret[:12],
        hash_secret(secret),
    )
    assert row is not None
    return NewApiKey(**dict(row), secret=secret)


async def list_keys(pool: Pool, *, user_id: str) -> list[ApiKey]:
    rows = await pool.fetch(
        "SELECT id, name, prefix, created_at, last_used_at FROM api_keys"
        " WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at, id",
        user_id,
    )
    return [ApiKey(**dict(r)) for r in rows]


async def revoke_key(pool: Pool, *, user_id: str, key_id: str) -> bool:
    status = await pool.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
        key_id,
        user_id,
    )
    return status.endswith(" 1")


async def authenticate(pool: Pool, *, secret: str) -> tuple[User, str] | None:
    """The user owning an active key, and the key id; None for unknown or revoked keys.

    The lookup is by hash, so the comparison never touches the secret itself; `last_used_at`
    is written at most once a minute per key, not on every request.
    """
    row = await pool.fetchrow(
        "WITH k AS ("
        "  SELECT id, user_id FROM api_keys WHERE secret_hash = $1 AND revoked_at IS NULL),"
        " touched AS ("
        "  UPDATE api_keys SET last_used_at = now() FROM k WHERE api_keys.id = k.id"
        "  AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute'))"
        " SELECT u.id, u.name, u.created_at, k.id AS key_id"
        " FROM k JOIN users u ON u.id = k.user_id WHERE u.disabled_at IS NULL",
        hash_secret(secret),
    )
    if row is None:
        return None
    data = dict(row)
    key_id = data.pop("key_id")
    return User(**data), key_id
