"""Turns: created with their user message in one transaction, finished with their terminal events."""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from core.errors import StaleAttempt, TurnClosed, TurnInProgress, UsageError
from core.ids import new_id
from store import approvals, events
from store.db import Connection, Executor, Pool
from store.messages import Message, insert_user_message, upsert_assistant_message
from store.pages import Page, PageRequest, fetch_page

_COLUMNS = (
    "id, conversation_id, user_id, user_message_id, status, created_at, started_at,"
    " finished_at, error, output_message_id, last_seq"
)
ACTIVE_STATUSES = ("queued", "running", "awaiting_approval")


class Turn(BaseModel):
    id: str
    conversation_id: str
    user_id: str
    user_message_id: str
    status: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: dict[str, Any] | None
    output_message_id: str | None
    last_seq: int


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class TooManyActiveTurns(UsageError):
    """The user already has as many active turns as `MAX_ACTIVE_TURNS_PER_USER` allows."""

    code = "too_many_active_turns"
    status = 429


class QuotaExceeded(UsageError):
    """The user has used their `DAILY_TOKEN_BUDGET` for today (UTC)."""

    code = "quota_exceeded"
    status = 429


@dataclass(frozen=True)
class TurnLimits:
    """Per-user limits checked when a turn starts; 0 means none."""

    max_active_turns: int = 0
    daily_token_budget: int = 0


def utc_midnight(now: datetime | None = None) -> datetime:
    """The start of the current UTC day."""
    return (now or datetime.now(UTC)).astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


async def start_turn(
    conn: Connection,
    *,
    user_id: str,
    conversation_id: str,
    content: str,
    limits: TurnLimits = TurnLimits(),
) -> tuple[Message, Turn] | None:
    """Insert the user message and a queued turn, inside the caller's transaction.

    None if the conversation is not the user's; `TurnInProgress` if it has an active turn;
    `TooManyActiveTurns` or `QuotaExceeded` if the user's limits forbid another turn now.
    The user's row is locked first (FOR NO KEY UPDATE: it still lets other transactions
    insert rows that reference the user), so turn starts of one user are serialised and
    the count of active turns cannot be raced past the limit by parallel requests.
    """
    if await conn.fetchval("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE", user_id) is None:
        return None
    conversation = await conn.fetchrow(
        "SELECT active_turn_id FROM conversations WHERE id = $1 AND user_id = $2 FOR UPDATE",
        conversation_id,
        user_id,
    )
    if conversation is None:
        return None
    if conversation["active_turn_id"] is not None:
        raise TurnInProgress(
            "the conversation already has an active turn",
            active_turn_id=conversation["active_turn_id"],
        )
    await _check_limits(conn, user_id=user_id, limits=limits)
    turn_id, message_id = new_id("turn"), new_id("msg")
    row = await conn.fetchrow(
        "INSERT INTO turns (id, conversation_id, user_id, user_message_id, status)"
        f" VALUES ($1, $2, $3, $4, 'queued') RETURNING {_COLUMNS}",
        turn_id,
        conversation_id,
        user_id,
        message_id,
    )
    message = await insert_user_message(
        conn,
        message_id=message_id,
        conversation_id=conversation_id,
        turn_id=turn_id,
        content=content,
    )
    await conn.execute(
        "UPDATE conversations SET active_turn_id = $2, updated_at = now() WHERE id = $1",
        conversation_id,
        turn_id,
    )
    await events.append(
        conn,
        turn_id=turn_id,
        type="status",
        payload={"status": "queued", "previous_status": None},
        dedupe_key="status:queued",
    )
    assert row is not None
    turn = Turn(**dict(row))
    turn.last_seq = 1
    return message, turn


async def _check_limits(conn: Connection, *, user_id: str, limits: TurnLimits) -> None:
    if limits.max_active_turns:
        active = await conn.fetchval(
            "SELECT count(*) FROM turns WHERE user_id = $1 AND finished_at IS NULL"
            " AND status = ANY($2::text[])",
            user_id,
            list(ACTIVE_STATUSES),
        )
        if active >= limits.max_active_turns:
            raise TooManyActiveTurns(
                f"you have {active} active turns, the most allowed at once is"
                f" {limits.max_active_turns}; wait for one to end",
                max_active_turns=limits.max_active_turns,
            )
    if limits.daily_token_budget:
        since = utc_midnight()
        used = await tokens_used_since(conn, user_id=user_id, since=since)
        if used >= limits.daily_token_budget:
            raise QuotaExceeded(
                f"the daily token budget of {limits.daily_token_budget} tokens is used up"
                f" ({used} tokens used since 00:00 UTC); it renews at 00:00 UTC",
                daily_token_budget=limits.daily_token_budget,
                tokens_used=used,
            )


async def tokens_used_since(pool: Executor, *, user_id: str, since: datetime) -> int:
    """Tokens (prompt + completion) of the user's model calls made since `since`.

    A turn with a call since then is still active or finished since then, which lets the
    (user_id, finished_at) index narrow the turns read.
    """
    used = await pool.fetchval(
        "SELECT coalesce(sum(mc.prompt_tokens + mc.completion_tokens), 0) FROM turns t"
        " JOIN model_calls mc ON mc.turn_id = t.id"
        " WHERE t.user_id = $1 AND (t.finished_at IS NULL OR t.finished_at >= $2) AND mc.created_at >= $2",
        user_id,
        since,
    )
    return int(used)


async def get(pool: Pool, *, user_id: str, turn_id: str) -> Turn | None:
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM turns WHERE id = $1 AND user_id = $2", turn_id, user_id
    )
    return Turn(**dict(row)) if row else None


async def get_by_id(pool: Pool, *, turn_id: str) -> Turn | None:
    """Unscoped read, for the worker."""
    row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM turns WHERE id = $1", turn_id)
    return Turn(**dict(row)) if row else None


async def list_page(
    pool: Pool, *, user_id: str, conversation_id: str, page: PageRequest
) -> tuple[list[Turn], Page]:
    result = await fetch_page(
        pool,
        table="turns",
        columns=_COLUMNS,
        scope="conversation_id = $1 AND user_id = $2",
        scope_args=[conversation_id, user_id],
        page=page,
    )
    return [Turn(**r) for r in result.rows], result


async def usage(pool: Executor, *, turn_id: str) -> Usage:
    row = await pool.fetchrow(
        "SELECT coalesce(sum(prompt_tokens), 0) AS p, coalesce(sum(completion_tokens), 0) AS c"
        " FROM model_calls WHERE turn_id = $1",
        turn_id,
    )
    assert row is not None
    return Usage(prompt_tokens=row["p"], completion_tokens=row["c"], total_tokens=row["p"] + row["c"])


async def record_model_call(
    pool: Pool, *, turn_id: str, step: int, model: str, prompt_tokens: int, completion_tokens: int
) -> None:
    await pool.execute(
        "INSERT INTO model_calls (turn_id, step, model, prompt_tokens, completion_tokens)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (turn_id, step) DO UPDATE SET"
        " model = EXCLUDED.model, prompt_tokens = EXCLUDED.prompt_tokens,"
        " completion_tokens = EXCLUDED.completion_tokens",
        turn_id,
        step,
        model,
        prompt_tokens,
        completion_tokens,
    )


async def set_status(pool: Pool, *, turn_id: str, status: str, dedupe_key: str) -> None:
    """Move an active turn to another active status, with its `status` event."""
    async with pool.acquire() as conn, conn.transaction():
        previous = await conn.fetchval("SELECT status FROM turns WHERE id = $1 FOR UPDATE", turn_id)
        await _transition(conn, turn_id=turn_id, status=status, previous=previous, dedupe_key=dedupe_key)


async def _transition(
    conn: Connection, *, turn_id: str, status: str, previous: str | None, dedupe_key: str
) -> None:
    """Append the `status` event and change the row; the caller holds the turn's row lock."""
    seq = await events.append(
        conn,
        turn_id=turn_id,
        type="status",
        payload={"status": status, "previous_status": previous},
        dedupe_key=dedupe_key,
    )
    if seq is not None:
        await conn.execute(
            "UPDATE turns SET status = $2, started_at = coalesce(started_at, now()) WHERE id = $1",
            turn_id,
            status,
        )


async def begin_model_stream(pool: Pool, *, turn_id: str, message_id: str, attempt: int) -> None:
    """Make `attempt` the owner of the turn's stream, in one transaction.

    A queued turn becomes `running` here rather than in an activity of its own: that saves a
    round trip through Temporal before the first token, the latency users feel most.
    `reset` is sent when text of this message was streamed and the newest token/reset event
    belongs to an earlier attempt, so clients always learn which attempt is current; a first
    attempt, or a retry after a failure before any text, needs none.
    """
    async with pool.acquire() as conn, conn.transaction():
        current = await conn.fetchrow(
            "SELECT status, stream_message_id, stream_attempt FROM turns WHERE id = $1 FOR UPDATE",
            turn_id,
        )
        if current is None or current["status"] in events.TERMINAL_STATUSES:
            raise TurnClosed(f"turn {turn_id} has ended")
        if current["stream_message_id"] == message_id and current["stream_attempt"] > attempt:
            raise StaleAttempt(f"attempt {attempt} of {message_id} is older than the current")
        if current["status"] == "queued":
            await _transition(
                conn, turn_id=turn_id, status="running", previous="queued", dedupe_key="status:running:1"
            )
        last_attempt = await conn.fetchval(
            "SELECT (payload->>'attempt')::int FROM events WHERE turn_id = $1 AND type IN ('token', 'reset')"
            " AND payload->>'message_id' = $2 ORDER BY seq DESC LIMIT 1",
            turn_id,
            message_id,
        )
        await conn.execute(
            "UPDATE turns SET stream_message_id = $2, stream_attempt = $3 WHERE id = $1",
            turn_id,
            message_id,
            attempt,
        )
        if last_attempt is not None and last_attempt < attempt:
            await events.append(
                conn,
                turn_id=turn_id,
                type="reset",
                payload={"message_id": message_id, "attempt": attempt},
                stream=(message_id, attempt),
            )


async def finish(
    pool: Pool,
    *,
    turn_id: str,
    status: str,
    terminal_event: tuple[str, dict[str, Any]],
    error: dict[str, Any] | None = None,
    output_message_id: str | None = None,
) -> bool:
    """End the turn: `status` event, terminal event, final status, conversation freed.

    Idempotent: False (and nothing written) if the turn had already ended.
    """
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT status, conversation_id FROM turns WHERE id = $1 FOR UPDATE", turn_id
        )
        if row is None or row["status"] in events.TERMINAL_STATUSES:
            return False
        # Approvals still waiting end with the turn, each with its `approval_decided` event.
        await approvals.cancel_pending(conn, turn_id=turn_id, reason=f"the turn was {status}")
        await events.append(
            conn,
            turn_id=turn_id,
            type="status",
            payload={"status": status, "previous_status": row["status"]},
        )
        event_type, payload = terminal_event
        await events.append(conn, turn_id=turn_id, type=event_type, payload=payload)
        await conn.execute(
            "UPDATE turns SET status = $2, finished_at = now(), error = $3,"
            " output_message_id = $4 WHERE id = $1",
            turn_id,
            status,
            error,
            output_message_id,
        )
        await conn.execute(
            "UPDATE conversations SET active_turn_id = NULL, updated_at = now()"
            " WHERE id = $1 AND active_turn_id = $2",
            row["conversation_id"],
            turn_id,
        )
        return True


async def stale_queued(pool: Pool, *, older_than_seconds: float) -> list[str]:
    """Ids of turns still queued long after creation (their workflow may never have started)."""
    rows = await pool.fetch(
        "SELECT id FROM turns WHERE status = 'queued'"
        " AND created_at < now() - make_interval(secs => $1) ORDER BY created_at LIMIT 100",
        older_than_seconds,
    )
    return [r["id"] for r in rows]


async def store_model_message(
    pool: Pool,
    *,
    turn_id: str,
    conversation_id: str,
    message_id: str,
    attempt: int,
    content: str,
    tool_calls: list[dict[str, Any]] | None,
) -> Message:
    """Store the finished assistant message and its `message` event, if `attempt` still owns
    the stream (a stale attempt, presumed dead but running, must not overwrite the winner)."""
    async with pool.acquire() as conn, conn.transaction():
        owner = await conn.fetchrow(
            "SELECT status, stream_message_id, stream_attempt FROM turns WHERE id = $1 FOR UPDATE", turn_id
        )
        if owner is None or owner["status"] in events.TERMINAL_STATUSES:
            raise TurnClosed(f"turn {turn_id} has ended")
        if (owner["stream_message_id"], owner["stream_attempt"]) != (message_id, attempt):
            raise StaleAttempt(f"attempt {attempt} no longer owns the stream of {turn_id}")
        stored = await upsert_assistant_message(
            conn,
            message_id=message_id,
            conversation_id=conversation_id,
            turn_id=turn_id,
            content=content,
            tool_calls=tool_calls,
        )
        await events.append(
            conn,
            turn_id=turn_id,
            type="message",
            payload={
                "message": {
                    "id": stored.id,
                    "role": "assistant",
                    "content": stored.content,
                    "tool_calls": stored.tool_calls,
                }
            },
            dedupe_key=f"message:{message_id}:{attempt}",
        )
        return stored


async def sample_active(pool: Pool, *, older_than_seconds: float, limit: int = 50) -> list[str]:
    """A random sample of turns active for a while (random, so every one is checked in time)."""
    rows = await pool.fetch(
        "SELECT id FROM turns WHERE status IN ('running', 'awaiting_approval')"
        " AND created_at < now() - make_interval(secs => $1) ORDER BY random() LIMIT $2",
        older_than_seconds,
        limit,
    )
    return [r["id"] for r in rows]


async def request_cancel(pool: Pool, *, user_id: str, turn_id: str) -> bool:
    """Record a cancel request and cancel the turn's pending approvals, in one transaction;
    False if the turn is not the user's or has already ended. The workflow ends the turn."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT status FROM turns WHERE id = $1 AND user_id = $2 FOR UPDATE", turn_id, user_id
        )
        if row is None or row["status"] in events.TERMINAL_STATUSES:
            return False
        await conn.execute(
            "UPDATE turns SET cancel_requested_at = coalesce(cancel_requested_at, now()) WHERE id = $1",
            turn_id,
        )
        await approvals.cancel_pending(conn, turn_id=turn_id, reason="the turn was cancelled")
        return True
