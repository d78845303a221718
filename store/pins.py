"""Pinned tool definitions: trust on first sight, then only what an operator re-approves."""

from dataclasses import dataclass
from typing import Any

from store.db import Executor


@dataclass(frozen=True)
class Pin:
    name: str
    server: str
    pinned_hash: str
    seen_hash: str

    @property
    def changed(self) -> bool:
        return self.pinned_hash != self.seen_hash


async def observe(
    db: Executor, *, name: str, server: str, definition_hash: str, definition: dict[str, Any]
) -> Pin:
    """Record the definition a server offers now; a tool seen for the first time is pinned to it."""
    row = await db.fetchrow(
        "INSERT INTO tool_pins (name, server, pinned_hash, seen_hash, seen_definition)"
        " VALUES ($1, $2, $3, $3, $4)"
        " ON CONFLICT (name) DO UPDATE SET server = EXCLUDED.server, seen_hash = EXCLUDED.seen_hash,"
        " seen_definition = EXCLUDED.seen_definition,"
        " seen_at = CASE WHEN tool_pins.seen_hash = EXCLUDED.seen_hash THEN tool_pins.seen_at ELSE now() END"
        " RETURNING name, server, pinned_hash, seen_hash",
        name,
        server,
        definition_hash,
        definition,
    )
    assert row is not None
    return Pin(**dict(row))


async def trust_server(db: Executor, *, server: str) -> list[Pin]:
    """Pin every tool of `server` to the definition last seen; the tools whose pin moved."""
    rows = await db.fetch(
        "UPDATE tool_pins SET pinned_hash = seen_hash, pinned_at = now()"
        " WHERE server = $1 AND pinned_hash <> seen_hash RETURNING name, server, pinned_hash, seen_hash",
        server,
    )
    return [Pin(**dict(r)) for r in rows]


async def of_server(db: Executor, *, server: str) -> list[Pin]:
    rows = await db.fetch(
        "SELECT name, server, pinned_hash, seen_hash FROM tool_pins WHERE server = $1 ORDER BY name", server
    )
    return [Pin(**dict(r)) for r in rows]


async def of_names(db: Executor, *, names: list[str]) -> dict[str, Pin]:
    rows = await db.fetch(
        "SELECT name, server, pinned_hash, seen_hash FROM tool_pins WHERE name = ANY($1)", names
    )
    return {r["name"]: Pin(**dict(r)) for r in rows}
