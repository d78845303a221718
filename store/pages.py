"""Keyset pagination shared by every list route (`?limit`, `?after`, `?before`, `?order`).

Cursors are ids; the page is cut at the cursor row's (sort key, id), looked up inside the
caller's scope, so another user's id never works as a cursor.
"""

from dataclasses import dataclass
from typing import Any, Literal

from core.errors import InvalidCursor
from store.db import Pool

Order = Literal["asc", "desc"]


@dataclass(frozen=True)
class PageRequest:
    limit: int = 20
    after: str | None = None
    before: str | None = None
    order: Order = "desc"


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    has_more: bool


async def fetch_page(
    pool: Pool,
    *,
    table: str,
    columns: str,
    scope: str,
    scope_args: list[Any],
    page: PageRequest,
    sort_key: str = "created_at",
) -> Page:
    """One page of `table` rows matching `scope` (SQL with $1..$n for `scope_args`)."""
    args = list(scope_args)
    clauses = [scope]
    # `after` continues in list order; `before` walks back, so it scans the other way.
    forward = page.before is None
    cursor = page.after if forward else page.before
    ascending = (page.order == "asc") == forward
    if cursor is not None:
        args.append(cursor)
        exists = await pool.fetchval(f"SELECT 1 FROM {table} WHERE id = ${len(args)} AND {scope}", *args)
        if not exists:
            raise InvalidCursor(f"cursor {cursor!r} is not an item of this list")
        op = ">" if ascending else "<"
        clauses.append(f"({sort_key}, id) {op} (SELECT {sort_key}, id FROM {table} WHERE id = ${len(args)})")
    direction = "ASC" if ascending else "DESC"
    args.append(page.limit + 1)
    rows = await pool.fetch(
        f"SELECT {columns} FROM {table} WHERE {' AND '.join(clauses)}"
        f" ORDER BY {sort_key} {direction}, id {direction} LIMIT ${len(args)}",
        *args,
    )
    items = [dict(r) for r in rows[: page.limit]]
    if not forward:
        items.reverse()
    return Page(rows=items, has_more=len(rows) > page.limit)
