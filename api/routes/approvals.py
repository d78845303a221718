"""Approvals: the caller's across conversations, and the decision on one.

The database decides (a conditional update under the row lock, so concurrent decisions
have exactly one winner); the workflow is then signalled. Should that signal be lost (the
process dies in between), the worker's reconciler sends it again.
"""

from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Query
from jsonschema import Draft202012Validator

from api.deps import CurrentUser, PageDep, SettingsDep, StoreDep, TemporalDep
from api.problems import Problem
from api.schemas import ApprovalDecision, ApprovalPublic, list_of
from api.views import approval_public
from store import approvals, catalog
from workflows.client import signal_decision

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/approvals", tags=["approvals"])

Status = Literal["pending", "approved", "rejected", "expired", "cancelled"]
_DECISIONS = {"approve": "approved", "reject": "rejected"}
_REFUSALS = {
    "approval_already_decided": "the approval was already decided otherwise",
    "approval_expired": "the approval has expired",
    "approval_cancelled": "the approval was cancelled with its turn",
}


@router.get("")
async def list_approvals(
    caller: CurrentUser,
    pool: StoreDep,
    page: PageDep,
    settings: SettingsDep,
    status: Annotated[Status | None, Query()] = None,
) -> Any:
    items, result = await approvals.list_page(pool, user_id=caller.id, status=status, page=page)
    return list_of([approval_public(a, sender=settings.smtp_from) for a in items], has_more=result.has_more)


async def _approval_or_404(pool: Any, user_id: str, approval_id: str) -> approvals.Approval:
    found = await approvals.get(pool, user_id=user_id, approval_id=approval_id)
    if found is None:
        raise Problem(404, "not_found", f"no approval {approval_id}")
    return found


@router.get("/{approval_id}", response_model=ApprovalPublic)
async def get_approval(approval_id: str, caller: CurrentUser, pool: StoreDep, settings: SettingsDep) -> Any:
    return approval_public(await _approval_or_404(pool, caller.id, approval_id), sender=settings.smtp_from)


@router.post("/{approval_id}", response_model=ApprovalPublic)
async def decide(
    approval_id: str,
    body: ApprovalDecision,
    caller: CurrentUser,
    pool: StoreDep,
    temporal: TemporalDep,
    settings: SettingsDep,
) -> Any:
    current = await _approval_or_404(pool, caller.id, approval_id)
    if body.arguments is not None:
        if body.decision != "approve":
            raise Problem(
                422,
                "validation_failed",
                "arguments can only be given with an approval",
                errors=[
                    {
                        "field": "arguments",
                        "location": "body",
                        "message": "only with approve",
                        "type": "value",
                    }
                ],
            )
        await _check_arguments(pool, current.tool, body.arguments)
    decision = _DECISIONS[body.decision]
    async with pool.acquire() as conn, conn.transaction():
        outcome, approval = await approvals.decide(
            conn,
            approval_id=approval_id,
            actor=caller.id,
            decision=decision,  # type: ignore[arg-type]
            arguments=body.arguments,
            reason=body.reason,
        )
    if outcome == "approval_expired" and approval.status == "expired":
        # Expired just now, by this request: the workflow need not wait for its own timer.
        await signal_decision(temporal, turn_id=approval.turn_id, approval_id=approval.id, decision="expired")
    if outcome in _REFUSALS:
        raise Problem(409, outcome, _REFUSALS[outcome], status_now=approval.status)
    if outcome == "applied":
        log.info(
            "approval decided", approval_id=approval_id, decision=decision, edited=body.arguments is not None
        )
        if await signal_decision(
            temporal, turn_id=approval.turn_id, approval_id=approval.id, decision=decision
        ):
            await approvals.mark_signalled(pool, approval_id=approval.id)
    return approval_public(approval, sender=settings.smtp_from)


async def _check_arguments(pool: Any, tool: str, arguments: dict[str, Any]) -> None:
    """Edited arguments must fit the tool's schema, as the catalog publishes it."""
    spec = await catalog.get_tool(pool, name=tool)
    if spec is None:
        raise Problem(
            409, "tool_unavailable", f"{tool} is not available to check the edited arguments against"
        )
    problems = sorted(
        Draft202012Validator(
            spec.input_schema, format_checker=Draft202012Validator.FORMAT_CHECKER
        ).iter_errors(arguments),
        key=lambda e: list(e.path),
    )
    if problems:
        raise Problem(
            422,
            "validation_failed",
            f"the edited arguments do not fit the {tool} schema",
            errors=[
                {
                    "field": ".".join(["arguments", *(str(p) for p in e.path)]),
                    "location": "body",
                    "message": e.message,
                    "type": e.validator,
                }
                for e in problems
            ],
        )
