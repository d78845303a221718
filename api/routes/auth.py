"""The caller and their API keys."""

from typing import Any

from fastapi import APIRouter, Response

from api.deps import CurrentUser, StoreDep
from api.problems import Problem
from api.schemas import CallerPublic, KeyCreate, KeyCreated, KeyPublic, list_of
from store import users

router = APIRouter(prefix="/auth", tags=["auth"])


@router.get("/me", response_model=CallerPublic)
async def me(caller: CurrentUser) -> Any:
    return caller.user.model_dump()


@router.get("/keys")
async def list_keys(caller: CurrentUser, pool: StoreDep) -> Any:
    keys = await users.list_keys(pool, user_id=caller.id)
    return list_of([KeyPublic(**k.model_dump()) for k in keys], has_more=False)


@router.post("/keys", status_code=201, response_model=KeyCreated)
async def create_key(
    caller: CurrentUser, pool: StoreDep, response: Response, body: KeyCreate | None = None
) -> Any:
    created = await users.create_key(pool, user_id=caller.id, name=body.name if body else None)
    response.headers["Location"] = f"/api/v1/auth/keys/{created.id}"
    return created.model_dump()


@router.get("/keys/{key_id}", response_model=KeyPublic)
async def get_key(key_id: str, caller: CurrentUser, pool: StoreDep) -> Any:
    found = await users.get_key(pool, user_id=caller.id, key_id=key_id)
    if found is None:
        raise Problem(404, "not_found", f"no API key {key_id}")
    return found.model_dump()


@router.delete("/keys/{key_id}", status_code=204)
async def revoke_key(key_id: str, caller: CurrentUser, pool: StoreDep) -> Response:
    if not await users.revoke_key(pool, user_id=caller.id, key_id=key_id):
        raise Problem(404, "not_found", f"no API key {key_id}")
    return Response(status_code=204)
