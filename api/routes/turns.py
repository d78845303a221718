"""Turns: poll (with `?wait`), list per conversation, follow events, cancel."""

from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Header, Query, Request, Response
from temporalio.service import RPCError, RPCStatusCode

from api.deps import CurrentUser, HubDep, PageDep, SettingsDep, StoreDep, TemporalDep
from api.problems import Problem
from api.ratelimit import holding_slot, limits_of
from api.schemas import TurnPublic, list_of
from api.streams import event_stream_response, wait_for_change
from api.views import turn_public
from store import approvals, conversations, events, turns
from store.events import TERMINAL_STATUSES
from workflows.client import cancel_turn_workflow

log = structlog.get_logger(__name__)

router = APIRouter(tags=["turns"])

_SETTLED = (*TERMINAL_STATUSES, "awaiting_approval")


async def _settled(pool: Any, turn: turns.Turn) -> bool:
    """Finished, or waiting for a person. Between the last decision and the workflow's
    return to `running` the turn still says `awaiting_approval` with nothing pending: that
    is not a wait for a person, so `?wait` keeps waiting instead of answering at once."""
    if turn.status != "awaiting_approval":
        return turn.status in _SETTLED
    return bool(await approvals.pending_for_turn(pool, turn_id=turn.id))


async def _turn_or_404(pool: Any, user_id: str, turn_id: str) -> turns.Turn:
    turn = await turns.get(pool, user_id=user_id, turn_id=turn_id)
    if turn is None:
        raise Problem(404, "not_found", f"no turn {turn_id}")
    return turn


@router.get("/conversations/{conversation_id}/turns")
async def list_turns(
    conversation_id: str, caller: CurrentUser, pool: StoreDep, page: PageDep, settings: SettingsDep
) -> Any:
    if await conversations.get(pool, user_id=caller.id, conversation_id=conversation_id) is None:
        raise Problem(404, "not_found", f"no conversation {conversation_id}")
    items, result = await turns.list_page(pool, user_id=caller.id, conversation_id=conversation_id, page=page)
    return list_of(
        [await turn_public(pool, t, sender=settings.smtp_from) for t in items], has_more=result.has_more
    )


@router.get("/turns/{turn_id}", response_model=TurnPublic, response_model_exclude_none=False)
async def get_turn(
    turn_id: str,
    caller: CurrentUser,
    pool: StoreDep,
    hub: HubDep,
    settings: SettingsDep,
    wait: Annotated[float, Query(ge=0, le=60)] = 0,
) -> Any:
    turn = await _turn_or_404(pool, caller.id, turn_id)
    if wait > 0 and not await _settled(pool, turn):

        async def still_running() -> bool:
            nonlocal turn
            turn = await _turn_or_404(pool, caller.id, turn_id)
            return not await _settled(pool, turn)

        await wait_for_change(hub, turn_id=turn_id, still_waiting=still_running, seconds=wait)
    return await turn_public(pool, turn, sender=settings.smtp_from)


def _resume_point(after: int | None, last_event_id: str | None) -> int:
    """Where to resume: the later of `?after` and `Last-Event-ID`.

    A browser's EventSource reconnects to the same URL (with its `?after`) adding the
    header, so the header must win when it is further along, or events would repeat.
    """
    if last_event_id is None or last_event_id.strip() == "":
        return after or 0
    value = last_event_id.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 9:
        raise Problem(
            422,
            "validation_failed",
            "Last-Event-ID must be a non-negative integer (an event seq)",
            errors=[
                {
                    "field": "Last-Event-ID",
                    "location": "header",
                    "message": "not a non-negative integer",
                    "type": "int_parsing",
                }
            ],
        )
    return max(int(value), after or 0)


@router.get("/turns/{turn_id}/events", response_model=None)
async def turn_events(
    turn_id: str,
    request: Request,
    caller: CurrentUser,
    pool: StoreDep,
    hub: HubDep,
    settings: SettingsDep,
    after: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Any:
    turn = await _turn_or_404(pool, caller.id, turn_id)
    start = _resume_point(after, last_event_id)
    if wants_json(request.headers.get("accept", "")):
        batch = await events.read_after(pool, turn_id=turn_id, after=start, limit=limit + 1)
        return {"object": "list", "data": batch[:limit], "has_more": len(batch) > limit}
    if turn.status in TERMINAL_STATUSES and start >= turn.last_seq:
        return Response(status_code=204)
    limits = limits_of(request)
    release = limits.streams.acquire(caller.key_id) if limits is not None else None
    response = event_stream_response(pool, hub, turn_id=turn_id, after=start, ping=settings.sse_ping_interval)
    return holding_slot(response, release) if release is not None else response


@router.post("/turns/{turn_id}/cancel", status_code=202, response_model=TurnPublic)
async def cancel_turn(
    turn_id: str, caller: CurrentUser, pool: StoreDep, temporal: TemporalDep, settings: SettingsDep
) -> Any:
    turn = await _turn_or_404(pool, caller.id, turn_id)
    if await turns.request_cancel(pool, user_id=caller.id, turn_id=turn_id):
        try:
            await cancel_turn_workflow(temporal, turn_id)
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            # The workflow never started (or is gone): end the turn here.
            await turns.finish(pool, turn_id=turn_id, status="cancelled", terminal_event=("cancelled", {}))
        turn = await _turn_or_404(pool, caller.id, turn_id)
    return await turn_public(pool, turn, sender=settings.smtp_from)


def wants_json(accept: str) -> bool:
    """JSON when Accept names application/json and not text/event-stream."""
    lowered = accept.lower()
    return "application/json" in lowered and "text/event-stream" not in lowered
