"""Building public objects that combine several tables."""

from api.schemas import MessagePublic, TurnError, TurnPublic, UsagePublic
from store import messages, turns
from store.db import Executor


async def turn_public(pool: Executor, turn: turns.Turn) -> TurnPublic:
    usage = await turns.usage(pool, turn_id=turn.id)
    output = None
    if turn.output_message_id:
        message = await messages.get(pool, message_id=turn.output_message_id)
        output = MessagePublic(**message.model_dump()) if message else None
    return TurnPublic(
        id=turn.id,
        conversation_id=turn.conversation_id,
        status=turn.status,
        created_at=turn.created_at,
        started_at=turn.started_at,
        finished_at=turn.finished_at,
        error=TurnError(**turn.error) if turn.error else None,
        usage=UsagePublic(**usage.model_dump()),
        pending_approvals=[],
        last_seq=turn.last_seq,
        output=output,
    )
