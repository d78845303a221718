"""The transcript: user, assistant (with tool_calls) and tool messages, in conversation order."""

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from store.db import Connection, Executor, Pool
from store.pages import Page, PageRequest, fetch_page

_COLUMNS = "id, conversation_id, turn_id, role, content, tool_calls, tool_call_id, created_at"


class Message(BaseModel):
    id: str
    conversation_id: str
    turn_id: str | None
    role: Literal["user", "assistant", "tool"]
    content: str | None
    tool_calls: list[dict[str, Any]] | None
    tool_call_id: str | None
    created_at: datetime


async def insert_user_message(
    conn: Connection, *, message_id: str, conversation_id: str, turn_id: str, content: str
) -> Message:
    row = await conn.fetchrow(
        "INSERT INTO messages (id, conversation_id, turn_id, role, content)"
        f" VALUES ($1, $2, $3, 'user', $4) RETURNING {_COLUMNS}",
        message_id,
        conversation_id,
        turn_id,
        content,
    )
    assert row is not None
    return Message(**dict(row))


async def upsert_assistant_message(
    conn: Executor,
    *,
    message_id: str,
    conversation_id: str,
    turn_id: str,
    content: str,
    tool_calls: list[dict[str, Any]] | None,
) -> Message:
    """Store a finished assistant message; a retry under the same id overwrites it in place."""
    row = await conn.fetchrow(
        "INSERT INTO messages (id, conversation_id, turn_id, role, content, tool_calls)"
        " VALUES ($1, $2, $3, 'assistant', $4, $5)"
        " ON CONFLICT (id) DO UPDATE SET content = EXCLUDED.content,"
        " tool_calls = EXCLUDED.tool_calls"
        f" RETURNING {_COLUMNS}",
        message_id,
        conversation_id,
        turn_id,
        content,
        tool_calls,
    )
    assert row is not None
    return Message(**dict(row))


async def upsert_tool_message(
    conn: Executor, *, message_id: str, conversation_id: str, turn_id: str, tool_call_id: str, content: str
) -> Message:
    """Store a tool's result for the model; a retry under the same id overwrites it in place."""
    row = await conn.fetchrow(
        "INSERT INTO messages (id, conversation_id, turn_id, role, content, tool_call_id)"
        " VALUES ($1, $2, $3, 'tool', $4, $5)"
        " ON CONFLICT (id) DO UPDATE SET content = EXCLUDED.content"
        f" RETURNING {_COLUMNS}",
        message_id,
        conversation_id,
        turn_id,
        content,
        tool_call_id,
    )
    assert row is not None
    return Message(**dict(row))


async def get(pool: Executor, *, message_id: str) -> Message | None:
    row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM messages WHERE id = $1", message_id)
    return Message(**dict(row)) if row else None


async def transcript(pool: Pool, *, conversation_id: str) -> list[Message]:
    """Every message of a conversation, oldest first (for the model activity)."""
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM messages WHERE conversation_id = $1 ORDER BY position",
        conversation_id,
    )
    return [Message(**dict(r)) for r in rows]


async def list_page(
    pool: Pool, *, user_id: str, conversation_id: str, page: PageRequest
) -> tuple[list[Message], Page]:
    result = await fetch_page(
        pool,
        table="messages",
        columns=_COLUMNS,
        scope="conversation_id = $1 AND EXISTS (SELECT 1 FROM conversations c"
        " WHERE c.id = messages.conversation_id AND c.user_id = $2)",
        scope_args=[conversation_id, user_id],
        page=page,
        sort_key="position",
    )
    return [Message(**r) for r in result.rows], result
