"""`Idempotency-Key` records: reserved when a POST starts, completed with its response."""

from dataclasses import dataclass
from typing import Any

from store.db import Executor

# How long a key is remembered (API.md: 24 h).
RETENTION = "24 hours"


@dataclass(frozen=True)
class Record:
    request_hash: str
    response_status: int | None
    response_body: bytes | None
    response_headers: dict[str, str] | None
    turn_id: str | None


async def reserve(
    conn: Executor, *, user_id: str, key: str, method: str, path: str, request_hash: str
) -> Record | None:
    """Claim the key for this request: None if claimed now, else the existing record.

    A record older than the retention is replaced, as if it had never been.
    """
    row = await conn.fetchrow(
        "INSERT INTO idempotency_keys (user_id, key, method, path, request_hash)"
        " VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (user_id, key) DO UPDATE SET method = EXCLUDED.method,"
        " path = EXCLUDED.path, request_hash = EXCLUDED.request_hash, response_status = NULL,"
        " response_body = NULL, response_headers = NULL, turn_id = NULL, created_at = now()"
        f" WHERE idempotency_keys.created_at < now() - interval '{RETENTION}'"
        " RETURNING 1",
        user_id,
        key,
        method,
        path,
        request_hash,
    )
    if row is not None:
        return None
    existing = await conn.fetchrow(
        "SELECT request_hash, response_status, response_body, response_headers, turn_id"
        " FROM idempotency_keys WHERE user_id = $1 AND key = $2",
        user_id,
        key,
    )
    assert existing is not None
    return Record(**dict(existing))


async def complete(
    conn: Executor,
    *,
    user_id: str,
    key: str,
    status: int,
    body: bytes,
    headers: dict[str, Any],
    turn_id: str | None = None,
) -> None:
    await conn.execute(
        "UPDATE idempotency_keys SET response_status = $3, response_body = $4,"
        " response_headers = $5, turn_id = $6 WHERE user_id = $1 AND key = $2",
        user_id,
        key,
        status,
        body,
        headers,
        turn_id,
    )


async def release(conn: Executor, *, user_id: str, key: str) -> None:
    """Forget an in-flight key whose request failed, so the client may retry with it."""
    await conn.execute(
        "DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND response_status IS NULL",
        user_id,
        key,
    )


async def forget_expired(pool: Executor) -> int:
    """Delete records past the retention; how many."""
    status = await pool.execute(
        f"DELETE FROM idempotency_keys WHERE created_at < now() - interval '{RETENTION}'"
    )
    return int(status.split()[-1])
