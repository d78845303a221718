"""The tools the caller's conversations may use, as the workers publish them."""

from typing import Any

from fastapi import APIRouter

from api.deps import CurrentUser, StoreDep
from api.schemas import ToolPublic
from store import catalog

router = APIRouter(prefix="/tools", tags=["tools"])


@router.get("")
async def list_tools(caller: CurrentUser, pool: StoreDep) -> Any:
    tools = [ToolPublic(**t.model_dump()) for t in await catalog.list_tools(pool)]
    return {
        "object": "list",
        "data": tools,
        "first_id": tools[0].name if tools else None,
        "last_id": tools[-1].name if tools else None,
        "has_more": False,
    }
