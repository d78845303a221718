"""The transcript, and POST of a user message, which starts a turn."""

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Header, Request, Response

from api.deps import Caller, CurrentUser, HubDep, OldestFirstPageDep, SettingsDep, StoreDep, TemporalDep
from api.idempotency import check_key, conflict_of, request_hash
from api.problems import Problem
from api.ratelimit import CONCURRENCY_RETRY_AFTER, holding_slot, limits_of
from api.routes.turns import wants_json
from api.schemas import MessageCreate, MessagePublic, MessageTurnStarted, list_of
from api.streams import event_stream_response
from api.views import turn_public
from core.config import Settings
from core.errors import TurnInProgress
from store import conversations, idempotency, messages, turns
from store.db import Connection, Pool
from store.messages import Message
from store.turns import QuotaExceeded, TooManyActiveTurns, Turn, TurnLimits, utc_midnight
from workflows.client import start_turn, turn_input

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/conversations/{conversation_id}/messages", tags=["messages"])


@router.get("")
async def list_messages(
    conversation_id: str, caller: CurrentUser, pool: StoreDep, page: OldestFirstPageDep
) -> Any:
    if await conversations.get(pool, user_id=caller.id, conversation_id=conversation_id) is None:
        raise Problem(404, "not_found", f"no conversation {conversation_id}")
    items, result = await messages.list_page(
        pool, user_id=caller.id, conversation_id=conversation_id, page=page
    )
    return list_of([MessagePublic(**m.model_dump()) for m in items], has_more=result.has_more)


@router.post(
    "",
    response_model=MessageTurnStarted,
    status_code=202,
    responses={200: {"description": "The turn's event stream (text/event-stream)"}},
)
async def post_message(
    conversation_id: str,
    body: MessageCreate,
    request: Request,
    caller: CurrentUser,
    pool: StoreDep,
    hub: HubDep,
    temporal: TemporalDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Any:
    if len(body.content) > settings.max_message_chars:
        raise Problem(
            422,
            "validation_failed",
            f"content is longer than {settings.max_message_chars} characters",
            errors=[
                {
                    "field": "content",
                    "location": "body",
                    "message": "too long",
                    "type": "string_too_long",
                }
            ],
        )
    key = check_key(idempotency_key) if idempotency_key is not None else None
    digest = request_hash("POST", request.url.path, await request.body())
    streaming = not wants_json(request.headers.get("accept", ""))
    limits = limits_of(request)
    # A streamed reply takes its stream slot before the turn exists: refused, it starts none.
    release = limits.streams.acquire(caller.key_id) if limits is not None and streaming else None
    try:
        turn_id, started_body, replayed = await _start_or_replay(
            request,
            caller,
            pool,
            settings,
            conversation_id=conversation_id,
            content=body.content,
            key=key,
            digest=digest,
        )
    except BaseException:
        if release is not None:
            release()
        raise
    if not replayed:
        await _start_workflow(temporal, settings, turn_id, conversation_id, caller.id)
    headers = {"X-Turn-ID": turn_id, "Location": f"/api/v1/turns/{turn_id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    if not streaming:
        return Response(
            json.dumps(started_body),
            status_code=202,
            headers=headers,
            media_type="application/json",
        )
    response = event_stream_response(
        pool, hub, turn_id=turn_id, after=0, ping=settings.sse_ping_interval, headers=headers
    )
    return holding_slot(response, release) if release is not None else response


async def _start_or_replay(
    request: Request,
    caller: Caller,
    pool: Pool,
    settings: Settings,
    *,
    conversation_id: str,
    content: str,
    key: str | None,
    digest: str,
) -> tuple[str, dict[str, Any], bool]:
    """(turn id, 202 body, replayed): the turn of a replayed Idempotency-Key, or a new turn,
    started under the caller's limits in the transaction that also completes the key."""
    async with pool.acquire() as conn, conn.transaction():
        record = None
        if key is not None:
            record = await idempotency.reserve(
                conn,
                user_id=caller.id,
                key=key,
                method="POST",
                path=request.url.path,
                request_hash=digest,
            )
        if record is not None:
            problem = conflict_of(record, digest)
            if problem is not None:
                raise problem
            assert record.turn_id is not None and record.response_body is not None
            return record.turn_id, json.loads(record.response_body), True
        started = await _start_turn(conn, caller, settings, conversation_id=conversation_id, content=content)
        message, turn = started
        # Counted once nothing else refuses the turn; over the limit, the 429 rolls it back.
        limits = limits_of(request)
        if limits is not None:
            await limits.hit_turn(request, caller.key_id, conn=conn)
        started_body = MessageTurnStarted(
            message=MessagePublic(**message.model_dump()),
            turn=await turn_public(conn, turn, sender=settings.smtp_from),
        ).model_dump(mode="json")
        if key is not None:
            await idempotency.complete(
                conn,
                user_id=caller.id,
                key=key,
                status=202,
                body=json.dumps(started_body).encode(),
                headers={},
                turn_id=turn.id,
            )
        return turn.id, started_body, False


async def _start_turn(
    conn: Connection, caller: Caller, settings: Settings, *, conversation_id: str, content: str
) -> tuple[Message, Turn]:
    """The new user message and turn, or the problem that prevents them."""
    limits = TurnLimits(
        max_active_turns=settings.max_active_turns_per_user,
        daily_token_budget=settings.daily_token_budget,
    )
    try:
        started = await turns.start_turn(
            conn, user_id=caller.id, conversation_id=conversation_id, content=content, limits=limits
        )
    except TurnInProgress as err:
        raise Problem(409, err.code, err.message, **err.context) from err
    except TooManyActiveTurns as err:
        raise Problem(
            429, err.code, err.message, headers={"Retry-After": str(CONCURRENCY_RETRY_AFTER)}, **err.context
        ) from err
    except QuotaExceeded as err:
        renews = utc_midnight() + timedelta(days=1)
        seconds = max(1, math.ceil((renews - datetime.now(UTC)).total_seconds()))
        raise Problem(
            429,
            err.code,
            err.message,
            headers={"Retry-After": str(seconds)},
            renews_at=renews.isoformat().replace("+00:00", "Z"),
            **err.context,
        ) from err
    if started is None:
        raise Problem(404, "not_found", f"no conversation {conversation_id}")
    return started


async def _start_workflow(
    temporal: Any, settings: Settings, turn_id: str, conversation_id: str, user_id: str
) -> None:
    try:
        await start_turn(
            temporal,
            turn_input(turn_id=turn_id, conversation_id=conversation_id, user_id=user_id, settings=settings),
            task_queue=settings.temporal_task_queue,
        )
    except Exception:
        # The turn is committed; the worker's reconciler starts it once Temporal answers.
        log.exception("starting the turn workflow failed; left for the reconciler", turn_id=turn_id)
