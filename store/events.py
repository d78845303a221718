"""The event log of turns: per-turn, gap-free `seq`, announced with NOTIFY.

Appending bumps `turns.last_seq` and inserts the row in one transaction: the row lock on
the turn serialises appenders, and a rollback takes the seq back, so there are no gaps.
Appends to a finished turn are refused, which keeps the terminal event last.
"""

from datetime import datetime
from typing import Any

from core.errors import StaleAttempt, TurnClosed
from store.db import Connection, Pool

CHANNEL = "turn_events"
TERMINAL_STATUSES = ("completed", "failed", "cancelled")


async def append(
    conn: Connection,
    *,
    turn_id: str,
    type: str,
    payload: dict[str, Any],
    dedupe_key: str | None = None,
    stream: tuple[str, int] | None = None,
) -> int | None:
    """Append one event inside the caller's transaction; its seq, or None if deduplicated.

    `stream` = (message_id, attempt) makes the append conditional on that attempt still
    owning the turn's stream.
    """
    if dedupe_key is not None:
        seen = await conn.fetchval(
            "SELECT seq FROM events WHERE turn_id = $1 AND dedupe_key = $2", turn_id, dedupe_key
        )
        if seen is not None:
            return None
    row = await conn.fetchrow(
        "UPDATE turns SET last_seq = last_seq + 1 WHERE id = $1"
        " RETURNING last_seq, conversation_id, status, stream_message_id, stream_attempt",
        turn_id,
    )
    if row is None or row["status"] in TERMINAL_STATUSES:
        raise TurnClosed(f"turn {turn_id} has ended")
    if stream is not None and (row["stream_message_id"], row["stream_attempt"]) != stream:
        raise StaleAttempt(f"attempt {stream[1]} no longer owns the stream of {turn_id}")
    seq: int = row["last_seq"]
    body = {"type": type, "turn_id": turn_id, "conversation_id": row["conversation_id"], **payload}
    await conn.execute(
        "INSERT INTO events (turn_id, seq, type, payload, dedupe_key) VALUES ($1, $2, $3, $4, $5)",
        turn_id,
        seq,
        type,
        body,
        dedupe_key,
    )
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"{turn_id}:{seq}")
    return seq


async def append_one(
    pool: Pool,
    *,
    turn_id: str,
    type: str,
    payload: dict[str, Any],
    dedupe_key: str | None = None,
    stream: tuple[str, int] | None = None,
) -> int | None:
    """`append` in a transaction of its own."""
    async with pool.acquire() as conn, conn.transaction():
        return await append(
            conn, turn_id=turn_id, type=type, payload=payload, dedupe_key=dedupe_key, stream=stream
        )


def _event(row: Any) -> dict[str, Any]:
    payload: dict[str, Any] = row["payload"]
    created: datetime = row["created_at"]
    return {
        "type": payload["type"],
        "seq": row["seq"],
        "turn_id": payload["turn_id"],
        "conversation_id": payload["conversation_id"],
        "timestamp": created.isoformat().replace("+00:00", "Z"),
        **{k: v for k, v in payload.items() if k not in ("type", "turn_id", "conversation_id")},
    }


async def read_after(pool: Pool, *, turn_id: str, after: int, limit: int = 1000) -> list[dict[str, Any]]:
    """Events with seq > after, oldest first, in their public shape."""
    rows = await pool.fetch(
        "SELECT seq, payload, created_at FROM events WHERE turn_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        turn_id,
        after,
        limit,
    )
    return [_event(r) for r in rows]
