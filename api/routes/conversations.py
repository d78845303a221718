"""Conversations: create, list, read, update, delete."""

from typing import Any

from fastapi import APIRouter, Response

from api.deps import CurrentUser, PageDep, StoreDep
from api.problems import Problem
from api.schemas import ConversationCreate, ConversationPublic, ConversationUpdate, list_of
from store import catalog, conversations

router = APIRouter(prefix="/conversations", tags=["conversations"])


def _not_found(conversation_id: str) -> Problem:
    return Problem(404, "not_found", f"no conversation {conversation_id}")


async def _check_tools(pool: Any, tools: list[str] | None) -> None:
    """Refuse tool names that no worker offers."""
    unknown = await catalog.unknown_names(pool, names=tools) if tools else []
    if unknown:
        raise Problem(
            422,
            "unknown_tool",
            f"unknown tool: {unknown[0]}",
            errors=[
                {
                    "field": "tools",
                    "location": "body",
                    "message": f"unknown tool {name!r}",
                    "type": "unknown_tool",
                }
                for name in unknown
            ],
        )


@router.post("", status_code=201, response_model=ConversationPublic)
async def create_conversation(
    body: ConversationCreate, caller: CurrentUser, pool: StoreDep, response: Response
) -> Any:
    await _check_tools(pool, body.tools)
    created = await conversations.create(pool, user_id=caller.id, **body.model_dump())
    response.headers["Location"] = f"/api/v1/conversations/{created.id}"
    return created.model_dump()


@router.get("")
async def list_conversations(caller: CurrentUser, pool: StoreDep, page: PageDep) -> Any:
    items, result = await conversations.list_page(pool, user_id=caller.id, page=page)
    return list_of([ConversationPublic(**c.model_dump()) for c in items], has_more=result.has_more)


@router.get("/{conversation_id}", response_model=ConversationPublic)
async def get_conversation(conversation_id: str, caller: CurrentUser, pool: StoreDep) -> Any:
    found = await conversations.get(pool, user_id=caller.id, conversation_id=conversation_id)
    if found is None:
        raise _not_found(conversation_id)
    return found.model_dump()


@router.patch("/{conversation_id}", response_model=ConversationPublic)
async def update_conversation(
    conversation_id: str, body: ConversationUpdate, caller: CurrentUser, pool: StoreDep
) -> Any:
    changes = body.model_dump(exclude_unset=True)
    if changes.get("metadata", {}) is None:
        changes["metadata"] = {}
    await _check_tools(pool, changes.get("tools"))
    updated = await conversations.update(
        pool, user_id=caller.id, conversation_id=conversation_id, changes=changes
    )
    if updated is None:
        raise _not_found(conversation_id)
    return updated.model_dump()


@router.delete("/{conversation_id}", status_code=204)
async def delete_conversation(conversation_id: str, caller: CurrentUser, pool: StoreDep) -> Response:
    outcome = await conversations.delete(pool, user_id=caller.id, conversation_id=conversation_id)
    if outcome is None:
        raise _not_found(conversation_id)
    if outcome != "deleted":
        raise Problem(
            409,
            "turn_in_progress",
            "the conversation has an active turn; cancel it first",
            active_turn_id=outcome,
        )
    return Response(status_code=204)
