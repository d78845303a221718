"""Approvals of tool calls: created by the worker, decided by a person (or expired, or
cancelled), exactly once: every transition is a conditional UPDATE under the row lock."""

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel

from core.errors import NotFound
from core.ids import new_id
from store import events
from store.db import Connection, Executor, Pool
from store.pages import Page, PageRequest, fetch_page

_COLUMNS = (
    "id, turn_id, conversation_id, user_id, tool, tool_call_id, requested_arguments, arguments, status,"
    " created_at, expires_at, decided_at, decided_by, reason"
)
Decision = Literal["approved", "rejected"]


class Approval(BaseModel):
    id: str
    turn_id: str
    conversation_id: str
    user_id: str
    tool: str
    tool_call_id: str
    requested_arguments: dict[str, Any]
    arguments: dict[str, Any]
    status: str
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    reason: str | None


async def create(
    conn: Connection,
    *,
    turn_id: str,
    conversation_id: str,
    user_id: str,
    step_message_id: str,
    tool: str,
    tool_call_id: str,
    arguments: dict[str, Any],
    expires_in: timedelta,
) -> Approval:
    """The pending approval of a tool call; an existing one (a retried activity) is returned."""
    row = await conn.fetchrow(
        "INSERT INTO approvals (id, turn_id, conversation_id, user_id, tool, tool_call_id,"
        " requested_arguments, arguments, status, expires_at, step_message_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $7, 'pending', now() + $8, $9)"
        " ON CONFLICT (turn_id, step_message_id, tool_call_id) DO NOTHING"
        f" RETURNING {_COLUMNS}",
        new_id("apr"),
        turn_id,
        conversation_id,
        user_id,
        tool,
        tool_call_id,
        arguments,
        expires_in,
        step_message_id,
    )
    if row is None:
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM approvals"
            " WHERE turn_id = $1 AND step_message_id = $2 AND tool_call_id = $3",
            turn_id,
            step_message_id,
            tool_call_id,
        )
    assert row is not None
    return Approval(**dict(row))


async def get(pool: Executor, *, user_id: str, approval_id: str) -> Approval | None:
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM approvals WHERE id = $1 AND user_id = $2", approval_id, user_id
    )
    return Approval(**dict(row)) if row else None


async def get_by_id(pool: Executor, *, approval_id: str) -> Approval | None:
    """Unscoped read, for the worker."""
    row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM approvals WHERE id = $1", approval_id)
    return Approval(**dict(row)) if row else None


async def pending_for_turn(pool: Executor, *, turn_id: str) -> list[Approval]:
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM approvals WHERE turn_id = $1 AND status = 'pending' ORDER BY created_at, id",
        turn_id,
    )
    return [Approval(**dict(r)) for r in rows]


async def list_page(
    pool: Pool, *, user_id: str, status: str | None, page: PageRequest
) -> tuple[list[Approval], Page]:
    scope, args = "user_id = $1", [user_id]
    if status is not None:
        scope, args = "user_id = $1 AND status = $2", [user_id, status]
    result = await fetch_page(
        pool, table="approvals", columns=_COLUMNS, scope=scope, scope_args=args, page=page
    )
    return [Approval(**r) for r in result.rows], result


def decided_event(approval: Approval) -> dict[str, Any]:
    """The `approval_decided` event's fields."""
    return {
        "approval_id": approval.id,
        "decision": approval.status,
        "decided_by": approval.decided_by,
        "reason": approval.reason,
        "arguments": approval.arguments,
    }


async def decide(
    conn: Connection,
    *,
    approval_id: str,
    actor: str,
    decision: Decision,
    arguments: dict[str, Any] | None,
    reason: str | None,
) -> tuple[str, Approval]:
    """Apply a person's decision: ('applied' | 'unchanged' | a refusal code, the approval).

    The row lock makes concurrent decisions queue: exactly one is applied, the same decision
    repeated is 'unchanged', and any other gets `approval_already_decided`. Every attempt
    is written to the audit trail.
    """
    turn = await lock_turn_of(conn, approval_id=approval_id)
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM approvals WHERE id = $1 FOR UPDATE", approval_id)
    if row is None or turn is None:  # deleted with its conversation meanwhile
        raise NotFound(f"no approval {approval_id}")
    current = Approval(**dict(row))
    outcome = _refusal(current, decision, arguments)
    if outcome is None and (
        turn["cancel_requested_at"] is not None or turn["status"] in events.TERMINAL_STATUSES
    ):
        current = await close_unless_decided(
            conn, approval_id=approval_id, status="cancelled", reason="the turn was cancelled"
        )
        outcome = "approval_cancelled"
    if outcome is None:
        expired = await conn.fetchval("SELECT $1::timestamptz <= now()", current.expires_at)
        if expired:
            # Say so in the row at once, not only when the workflow's timer fires.
            current = await close_unless_decided(
                conn, approval_id=approval_id, status="expired", reason="approval expired"
            )
            outcome = "approval_expired"
        else:
            outcome = "applied"
    if outcome == "applied":
        row = await conn.fetchrow(
            "UPDATE approvals SET status = $2, decided_at = now(), decided_by = $3, reason = $4,"
            f" arguments = coalesce($5, arguments) WHERE id = $1 RETURNING {_COLUMNS}",
            approval_id,
            decision,
            actor,
            reason,
            arguments,
        )
        assert row is not None
        current = Approval(**dict(row))
        await events.append(
            conn, turn_id=current.turn_id, type="approval_decided", payload=decided_event(current)
        )
    await conn.execute(
        "INSERT INTO approval_audit (approval_id, actor, decision, arguments, reason, outcome)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        approval_id,
        actor,
        decision,
        arguments,
        reason,
        outcome,
    )
    return outcome, current


async def lock_turn_of(conn: Connection, *, approval_id: str) -> Any:
    """Lock the approval's turn row first: every writer takes turn, then approval, so a
    decision racing a cancel or a finish queues instead of deadlocking."""
    return await conn.fetchrow(
        "SELECT t.status, t.cancel_requested_at FROM turns t JOIN approvals a ON a.turn_id = t.id"
        " WHERE a.id = $1 FOR UPDATE OF t",
        approval_id,
    )


def _refusal(current: Approval, decision: str, arguments: dict[str, Any] | None) -> str | None:
    if current.status == "pending":
        return None
    if current.status == "expired":
        return "approval_expired"
    if current.status == "cancelled":
        return "approval_cancelled"
    same = current.status == decision and (arguments is None or arguments == current.arguments)
    return "unchanged" if same else "approval_already_decided"


async def close_unless_decided(
    conn: Connection, *, approval_id: str, status: str, reason: str | None
) -> Approval:
    """Expire or cancel a pending approval; if a decision won the race, return it unchanged."""
    row = await conn.fetchrow(
        "UPDATE approvals SET status = $2, decided_at = now(), reason = $3"
        f" WHERE id = $1 AND status = 'pending' RETURNING {_COLUMNS}",
        approval_id,
        status,
        reason,
    )
    if row is None:
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM approvals WHERE id = $1", approval_id)
        assert row is not None
        return Approval(**dict(row))
    closed = Approval(**dict(row))
    await events.append(conn, turn_id=closed.turn_id, type="approval_decided", payload=decided_event(closed))
    return closed


async def cancel_pending(conn: Connection, *, turn_id: str, reason: str) -> None:
    """Cancel the turn's pending approvals, each with its `approval_decided` event; the
    caller holds the turn's row lock."""
    for approval in await pending_for_turn(conn, turn_id=turn_id):
        await close_unless_decided(conn, approval_id=approval.id, status="cancelled", reason=reason)


async def mark_signalled(pool: Executor, *, approval_id: str) -> None:
    await pool.execute("UPDATE approvals SET signalled_at = now() WHERE id = $1", approval_id)


async def unsignalled(pool: Pool, *, older_than_seconds: float) -> list[Approval]:
    """Decisions the workflow may not have heard of (the API died before signalling)."""
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM approvals WHERE status IN ('approved', 'rejected')"
        " AND signalled_at IS NULL AND decided_at < now() - make_interval(secs => $1) LIMIT 100",
        older_than_seconds,
    )
    return [Approval(**dict(r)) for r in rows]
