"""Building public objects that combine several tables."""

from api.schemas import ApprovalPublic, MessagePublic, TurnError, TurnPublic, UsagePublic
from store import approvals, messages, turns
from store.db import Executor
from tools.email_preview import email_preview


async def turn_public(pool: Executor, turn: turns.Turn, *, sender: str | None) -> TurnPublic:
    usage = await turns.usage(pool, turn_id=turn.id)
    pending = await approvals.pending_for_turn(pool, turn_id=turn.id)
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
        pending_approvals=[
            approval_public(a, sender=sender).model_dump(mode="json", by_alias=True) for a in pending
        ],
        last_seq=turn.last_seq,
        output=output,
    )


def approval_public(approval: approvals.Approval, *, sender: str | None) -> ApprovalPublic:
    """`sender` is the configured SMTP_FROM, shown in the preview of an email to approve."""
    preview = email_preview(approval.arguments, sender=sender) if approval.tool == "send_email" else None
    return ApprovalPublic(**approval.model_dump(exclude={"user_id"}), preview=preview)
