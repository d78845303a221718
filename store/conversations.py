"""Conversations, always read and written within their owner's scope."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from core.ids import new_id
from store.db import Pool
from store.pages import Page, PageRequest, fetch_page

_COLUMNS = "id, title, system_prompt, model, tools, metadata, created_at, updated_at, active_turn_id"
_UPDATABLE = ("title", "system_prompt", "model", "tools", "metadata")


class Conversation(BaseModel):
    id: str
    title: str | None
    system_prompt: str | None
    model: str | None
    tools: list[str] | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    active_turn_id: str | None


async def create(
    pool: Pool,
    *,
    user_id: str,
    title: str | None,
    system_prompt: str | None,
    model: str | None,
    tools: list[str] | None,
    metadata: dict[str, Any],
) -> Conversation:
    row = await pool.fetchrow(
        "INSERT INTO conversations (id, user_id, title, system_prompt, model, tools, metadata)"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_COLUMNS}",
        new_id("conv"),
        user_id,
        title,
        system_prompt,
        model,
        tools,
        metadata,
    )
    assert row is not None
    return Conversation(**dict(row))


async def get(pool: Pool, *, user_id: str, conversation_id: str) -> Conversation | None:
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM conversations WHERE id = $1 AND user_id = $2",
        conversation_id,
        user_id,
    )
    return Conversation(**dict(row)) if row else None


async def get_by_id(pool: Pool, *, conversation_id: str) -> Conversation | None:
    """Unscoped read, for the worker, which acts on behalf of the turn's owner."""
    row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM conversations WHERE id = $1", conversation_id)
    return Conversation(**dict(row)) if row else None


async def list_page(pool: Pool, *, user_id: str, page: PageRequest) -> tuple[list[Conversation], Page]:
    result = await fetch_page(
        pool,
        table="conversations",
        columns=_COLUMNS,
        scope="user_id = $1",
        scope_args=[user_id],
        page=page,
    )
    return [Conversation(**r) for r in result.rows], result


async def update(
    pool: Pool, *, user_id: str, conversation_id: str, changes: dict[str, Any]
) -> Conversation | None:
    fields = [name for name in _UPDATABLE if name in changes]
    assignments = [f"{name} = ${i + 3}" for i, name in enumerate(fields)]
    row = await pool.fetchrow(
        f"UPDATE conversations SET {', '.join([*assignments, 'updated_at = now()'])}"
        f" WHERE id = $1 AND user_id = $2 RETURNING {_COLUMNS}",
        conversation_id,
        user_id,
        *[changes[name] for name in fields],
    )
    return Conversation(**dict(row)) if row else None


async def delete(pool: Pool, *, user_id: str, conversation_id: str) -> str | None:
    """Delete unless a turn is active: 'deleted', the active turn's id, or None if missing."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT active_turn_id FROM conversations WHERE id = $1 AND user_id = $2 FOR UPDATE",
            conversation_id,
            user_id,
        )
        if row is None:
            return None
        if row["active_turn_id"] is not None:
            return str(row["active_turn_id"])
        await conn.execute("DELETE FROM conversations WHERE id = $1", conversation_id)
        return "deleted"
