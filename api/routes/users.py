"""User management for admins: users, their role, disabling them, and their API keys.

Every route needs an admin's key; other keys get 403 `admin_required` (not 404: these
routes exist for everyone, and refusing them reveals nothing about any user).
"""

from typing import Any

import structlog
from fastapi import APIRouter, Response

from api.deps import AdminUser, PageDep, StoreDep
from api.problems import Problem
from api.schemas import (
    KeyCreate,
    KeyCreated,
    KeyPublic,
    UserCreate,
    UserCreated,
    UserPublic,
    UserUpdate,
    list_of,
)
from store import users

router = APIRouter(prefix="/users", tags=["users"])
log = structlog.get_logger(__name__)


def _no_user(user_id: str) -> Problem:
    return Problem(404, "not_found", f"no user {user_id}")


async def _user(pool: Any, user_id: str) -> users.User:
    found = await users.get_user(pool, user_id=user_id)
    if found is None:
        raise _no_user(user_id)
    return found


@router.get("")
async def list_users(admin: AdminUser, pool: StoreDep, page: PageDep) -> Any:
    items, result = await users.list_users(pool, page=page)
    return list_of([UserPublic(**u.model_dump()) for u in items], has_more=result.has_more)


@router.post("", status_code=201, response_model=UserCreated)
async def create_user(body: UserCreate, admin: AdminUser, pool: StoreDep, response: Response) -> Any:
    user = await users.create_user(pool, name=body.name, role=body.role)
    key = await users.create_key(pool, user_id=user.id, name="first key")
    log.info("user created", user_id=user.id, role=user.role, by=admin.id)
    response.headers["Location"] = f"/api/v1/users/{user.id}"
    return {**user.model_dump(), "api_key": key.secret, "key_id": key.id}


@router.get("/{user_id}", response_model=UserPublic)
async def get_user(user_id: str, admin: AdminUser, pool: StoreDep) -> Any:
    return (await _user(pool, user_id)).model_dump()


@router.patch("/{user_id}", response_model=UserPublic)
async def update_user(user_id: str, body: UserUpdate, admin: AdminUser, pool: StoreDep) -> Any:
    changes = body.model_dump(exclude_unset=True)
    updated = await users.update_user(pool, user_id=user_id, **changes)
    if updated is None:
        raise _no_user(user_id)
    log.info("user updated", user_id=user_id, changes=sorted(changes), by=admin.id)
    return updated.model_dump()


@router.get("/{user_id}/keys")
async def list_keys(user_id: str, admin: AdminUser, pool: StoreDep) -> Any:
    await _user(pool, user_id)
    keys = await users.list_keys(pool, user_id=user_id)
    return list_of([KeyPublic(**k.model_dump()) for k in keys], has_more=False)


@router.post("/{user_id}/keys", status_code=201, response_model=KeyCreated)
async def create_key(
    user_id: str, admin: AdminUser, pool: StoreDep, response: Response, body: KeyCreate | None = None
) -> Any:
    await _user(pool, user_id)
    created = await users.create_key(pool, user_id=user_id, name=body.name if body else None)
    log.info("api key created", user_id=user_id, key_id=created.id, by=admin.id)
    response.headers["Location"] = f"/api/v1/users/{user_id}/keys/{created.id}"
    return created.model_dump()


@router.get("/{user_id}/keys/{key_id}", response_model=KeyPublic)
async def get_key(user_id: str, key_id: str, admin: AdminUser, pool: StoreDep) -> Any:
    found = await users.get_key(pool, user_id=user_id, key_id=key_id)
    if found is None:
        raise Problem(404, "not_found", f"no API key {key_id} of user {user_id}")
    return found.model_dump()


@router.delete("/{user_id}/keys/{key_id}", status_code=204)
async def revoke_key(user_id: str, key_id: str, admin: AdminUser, pool: StoreDep) -> Response:
    if not await users.revoke_key(pool, user_id=user_id, key_id=key_id):
        raise Problem(404, "not_found", f"no API key {key_id} of user {user_id}")
    log.info("api key revoked", user_id=user_id, key_id=key_id, by=admin.id)
    return Response(status_code=204)
