"""Dependencies as `Annotated` aliases; routes take them as parameters."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Query, Request
from pydantic import AfterValidator
from temporalio.client import Client

from api.hub import EventHub
from api.problems import Problem
from api.ratelimit import limits_of
from api.schemas import storable
from core.config import Settings
from store import users
from store.db import Pool
from store.pages import PageRequest


@dataclass
class Caller:
    """The authenticated user and the key they used."""

    user: users.User
    key_id: str

    @property
    def id(self) -> str:
        return self.user.id


def get_pool(request: Request) -> Pool:
    pool: Pool = request.app.state.pool
    return pool


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_hub(request: Request) -> EventHub:
    hub: EventHub = request.app.state.hub
    return hub


async def get_temporal(request: Request) -> Client:
    """The Temporal client, connected on first use so the API starts while Temporal is down."""
    client: Client | None = await request.app.state.temporal.get()
    if client is None:
        raise Problem(503, "unavailable", "the workflow service is unavailable", headers={"Retry-After": "5"})
    return client


StoreDep = Annotated[Pool, Depends(get_pool)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
HubDep = Annotated[EventHub, Depends(get_hub)]
TemporalDep = Annotated[Client, Depends(get_temporal)]


def _unauthenticated(detail: str) -> Problem:
    return Problem(401, "unauthenticated", detail, headers={"WWW-Authenticate": "Bearer"})


async def get_caller(request: Request, pool: StoreDep) -> Caller:
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise _unauthenticated("an API key is required: Authorization: Bearer <key>")
    found = await users.authenticate(pool, secret=secret.strip())
    if found is None:
        raise _unauthenticated("the API key is invalid or revoked")
    user, key_id = found
    request.state.user_id = user.id
    limits = limits_of(request)
    if limits is not None:
        await limits.hit_request(request, key_id)
    return Caller(user=user, key_id=key_id)


CurrentUser = Annotated[Caller, Depends(get_caller)]


def _page_request(default_order: Literal["asc", "desc"]) -> Callable[..., PageRequest]:
    def page_request(
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        after: Annotated[str | None, Query(max_length=100), AfterValidator(storable)] = None,
        before: Annotated[str | None, Query(max_length=100), AfterValidator(storable)] = None,
        order: Literal["asc", "desc"] | None = None,
    ) -> PageRequest:
        if after is not None and before is not None:
            raise Problem(
                422,
                "validation_failed",
                "use either `after` or `before`, not both",
                errors=[
                    {
                        "field": "before",
                        "location": "query",
                        "message": "cannot be combined with after",
                        "type": "conflict",
                    }
                ],
            )
        return PageRequest(limit=limit, after=after, before=before, order=order or default_order)

    return page_request


# Lists are newest first, except transcripts, which read oldest first.
PageDep = Annotated[PageRequest, Depends(_page_request("desc"))]
OldestFirstPageDep = Annotated[PageRequest, Depends(_page_request("asc"))]


async def require_admin(caller: CurrentUser) -> Caller:
    """The caller, if their role is admin. 403, not 404: the route exists for everyone."""
    if caller.user.role != "admin":
        raise Problem(403, "admin_required", "this route needs the key of a user with the admin role")
    return caller


AdminUser = Annotated[Caller, Depends(require_admin)]
