"""The send_email outbox: what became of each send, keyed by its idempotency key.

States: `pending` → `data_sent` → `accepted`; `data_sent` → `uncertain` when the reply to
DATA never came; `pending` → `failed` when the server refused (a later attempt may claim a
failed row again: nothing was delivered). Each write is one statement on the caller's
connection, outside any transaction, so every state is durable before the SMTP step that
relies on it. A session advisory lock per key keeps two attempts of one call (a retry
racing a zombie attempt) from talking to the server at the same time; it is released when
the connection closes, so a crashed worker never leaves it held.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from store.db import Connection, Executor

Status = Literal["pending", "data_sent", "accepted", "uncertain", "failed"]

_COLUMNS = (
    "idempotency_key, status, message_id, recipients, result, attempts, error, turn_id,"
    " tool_call_id, created_at, updated_at, data_sent_at, finished_at"
)
# The advisory lock's key: a 64-bit hash of the idempotency key, in a namespace of its own.
_LOCK = "hashtextextended('email_outbox:' || $1, 0)"


@dataclass(frozen=True)
class OutboxRecord:
    idempotency_key: str
    status: Status
    message_id: str
    recipients: list[str]
    result: dict[str, Any] | None
    attempts: int
    error: str | None
    turn_id: str | None
    tool_call_id: str | None
    created_at: datetime
    updated_at: datetime
    data_sent_at: datetime | None
    finished_at: datetime | None


async def try_lock(conn: Connection, *, key: str) -> bool:
    """Take the key's session lock on this connection; False if another session holds it."""
    return bool(await conn.fetchval(f"SELECT pg_try_advisory_lock({_LOCK})", key))


async def unlock(conn: Connection, *, key: str) -> None:
    await conn.execute(f"SELECT pg_advisory_unlock({_LOCK})", key)


async def claim(
    conn: Executor,
    *,
    key: str,
    message_id: str,
    recipients: list[str],
    turn_id: str | None = None,
    tool_call_id: str | None = None,
) -> OutboxRecord:
    """The key's record; a new or retryable (`pending`, `failed`) one is set `pending` for a new attempt.

    A record in any other state is returned as it is, for the caller to act on.
    """
    row = await conn.fetchrow(
        "INSERT INTO email_outbox AS o"
        " (idempotency_key, message_id, recipients, turn_id, tool_call_id, attempts)"
        " VALUES ($1, $2, $3, $4, $5, 1)"
        " ON CONFLICT (idempotency_key) DO UPDATE SET status = 'pending', attempts = o.attempts + 1,"
        " message_id = EXCLUDED.message_id, recipients = EXCLUDED.recipients,"
        " turn_id = COALESCE(o.turn_id, EXCLUDED.turn_id),"
        " tool_call_id = COALESCE(o.tool_call_id, EXCLUDED.tool_call_id), updated_at = now()"
        " WHERE o.status IN ('pending', 'failed')"
        f" RETURNING {_COLUMNS}",
        key,
        message_id,
        recipients,
        turn_id,
        tool_call_id,
    )
    if row is not None:
        return OutboxRecord(**dict(row))
    record = await get(conn, key=key)
    assert record is not None
    return record


async def get(conn: Executor, *, key: str) -> OutboxRecord | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM email_outbox WHERE idempotency_key = $1", key)
    return OutboxRecord(**dict(row)) if row else None


async def mark_data_sent(conn: Executor, *, key: str) -> bool:
    """`pending` → `data_sent`, committed before DATA; False (send nothing) if the row was not pending."""
    result = await conn.execute(
        "UPDATE email_outbox SET status = 'data_sent', data_sent_at = now(), updated_at = now()"
        " WHERE idempotency_key = $1 AND status = 'pending'",
        key,
    )
    return result == "UPDATE 1"


async def mark_accepted(conn: Executor, *, key: str, result: dict[str, Any]) -> None:
    await conn.execute(
        "UPDATE email_outbox SET status = 'accepted', result = $2, error = NULL,"
        " updated_at = now(), finished_at = now() WHERE idempotency_key = $1",
        key,
        result,
    )


async def mark_uncertain(conn: Executor, *, key: str, error: str | None = None) -> None:
    """The message may have been delivered: no attempt may send it again."""
    await conn.execute(
        "UPDATE email_outbox SET status = 'uncertain', error = COALESCE($2, error), updated_at = now(),"
        " finished_at = COALESCE(finished_at, now()) WHERE idempotency_key = $1 AND status <> 'accepted'",
        key,
        error,
    )


async def mark_failed(conn: Executor, *, key: str, error: str) -> None:
    """The server refused the message for good; nothing was delivered."""
    await conn.execute(
        "UPDATE email_outbox SET status = 'failed', error = $2, updated_at = now(), finished_at = now()"
        " WHERE idempotency_key = $1",
        key,
        error,
    )


async def mark_retryable(conn: Executor, *, key: str, error: str) -> None:
    """Back to `pending` with the failure recorded: nothing was delivered, a later attempt may send."""
    await conn.execute(
        "UPDATE email_outbox SET status = 'pending', error = $2, updated_at = now()"
        " WHERE idempotency_key = $1",
        key,
        error,
    )
