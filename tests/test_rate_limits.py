"""Rate limits per API key: requests and turn starts over their window get 429 `rate_limited`
with a `Retry-After` that is right (waiting it is enough), `RateLimit-*` headers on every
limited response, and, with PostgreSQL storage, one budget shared by two API processes.

Each test runs an API of its own with low limits (the session's API has none)."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from api.app import create_app
from core.config import Settings
from devstack import free_port
from store import users
from store.db import Pool
from store.ratelimit_storage import PostgresStorage
from tests.conftest import _serve
from tests.helpers import create_conversation

NO_LIMITS: dict[str, Any] = {
    "rate_limit_requests": "",
    "rate_limit_turns": "",
    "max_active_turns_per_user": 0,
    "max_streams_per_key": 0,
    "daily_token_budget": 0,
}


@dataclass
class Caller:
    user_id: str
    client: httpx.AsyncClient


@dataclass
class Api:
    """An API process of a test's own, and the clients made for it."""

    url: str
    pool: Pool
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self, secret: str) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {secret}"}, timeout=60
        )
        self.clients.append(client)
        return client

    async def user(self, name: str = "limited") -> Caller:
        user = await users.create_user(self.pool, name=name)
        key = await users.create_key(self.pool, user_id=user.id, name="test")
        return Caller(user.id, self.client(key.secret))

    async def another_key(self, caller: Caller) -> Caller:
        key = await users.create_key(self.pool, user_id=caller.user_id, name="second")
        return Caller(caller.user_id, self.client(key.secret))


Serve = Callable[..., Awaitable[Api]]


@pytest.fixture
async def serve(settings: Settings, pool: Pool, worker: None) -> AsyncIterator[Serve]:
    """Start API processes (apps on ports of their own) with the given settings."""
    running: list[tuple[Any, asyncio.Task[None], Api]] = []

    async def start(**updates: Any) -> Api:
        app = create_app(settings.model_copy(update={**NO_LIMITS, **updates}))
        port = free_port()
        server, task = await _serve(app, port)
        api = Api(f"http://127.0.0.1:{port}", pool)
        running.append((server, task, api))
        return api

    yield start
    for server, task, api in running:
        for client in api.clients:
            await client.aclose()
        server.should_exit = True
        await task


def retry_after(response: httpx.Response) -> int:
    value = response.headers["Retry-After"]
    assert value.isdigit(), value
    return int(value)


def assert_rate_limited(response: httpx.Response, *, window_seconds: int) -> int:
    """The 429 problem of a refused request; returns its Retry-After."""
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "rate_limited" and problem["status"] == 429
    seconds = retry_after(response)
    assert 1 <= seconds <= window_seconds
    assert response.headers["RateLimit-Remaining"] == "0"
    assert response.headers["RateLimit-Reset"] == str(seconds)
    return seconds


async def test_a_burst_of_requests_is_refused_until_the_window_ends(serve: Serve):
    api = await serve(rate_limit_requests="5 per 4 seconds")
    alice = await api.user()
    remaining = []
    for _ in range(5):
        response = await alice.client.get("/api/v1/auth/me")
        assert response.status_code == 200, response.text
        assert response.headers["RateLimit-Limit"] == "5"
        assert 1 <= int(response.headers["RateLimit-Reset"]) <= 4
        remaining.append(response.headers["RateLimit-Remaining"])
    assert remaining == ["4", "3", "2", "1", "0"]

    refused = await alice.client.get("/api/v1/conversations")
    seconds = assert_rate_limited(refused, window_seconds=4)
    assert "5 per 4 seconds" in refused.json()["detail"]
    # Every authenticated route counts, POSTs too; and nothing was created by a refused one.
    assert_rate_limited(await alice.client.post("/api/v1/conversations", json={}), window_seconds=4)

    # The limit is per key: another key of the same user has its own budget.
    second = await api.another_key(alice)
    assert (await second.client.get("/api/v1/auth/me")).status_code == 200

    await asyncio.sleep(seconds)
    again = await alice.client.get("/api/v1/conversations")
    assert again.status_code == 200, again.text
    assert again.json()["data"] == []
    assert again.headers["RateLimit-Remaining"] == "4"


async def test_routes_without_a_key_are_not_counted(serve: Serve):
    api = await serve(rate_limit_requests="2 per 60 seconds")
    anonymous = httpx.AsyncClient(base_url=api.url)
    api.clients.append(anonymous)
    for _ in range(5):
        assert (await anonymous.get("/healthz")).status_code == 200
        unauthenticated = await anonymous.get("/api/v1/auth/me")
        assert unauthenticated.status_code == 401
        assert "RateLimit-Limit" not in unauthenticated.headers


async def test_turn_starts_are_limited_per_key(serve: Serve):
    api = await serve(rate_limit_turns="2 per 5 seconds")
    alice = await api.user()
    conversations = [await create_conversation(alice.client) for _ in range(3)]

    # A request refused for another reason starts no turn and costs none.
    missing = await alice.client.post(
        "/api/v1/conversations/conv_missing/messages",
        json={"content": "hello"},
        headers={"Accept": "application/json"},
    )
    assert missing.status_code == 404

    async def post(conversation: dict[str, Any], **headers: str) -> httpx.Response:
        return await alice.client.post(
            f"/api/v1/conversations/{conversation['id']}/messages",
            json={"content": "hello"},
            headers={"Accept": "application/json", **headers},
        )

    first, second = await post(conversations[0]), await post(conversations[1])
    assert (first.status_code, second.status_code) == (202, 202), second.text
    # The tighter of the two windows (requests are not limited here: turns) is reported.
    assert (first.headers["RateLimit-Limit"], first.headers["RateLimit-Remaining"]) == ("2", "1")
    assert second.headers["RateLimit-Remaining"] == "0"

    refused = await post(conversations[2], **{"Idempotency-Key": "third-turn"})
    seconds = assert_rate_limited(refused, window_seconds=5)
    assert "turns" in refused.json()["detail"]
    turns = await alice.client.get(f"/api/v1/conversations/{conversations[2]['id']}/turns")
    assert turns.json()["data"] == []
    transcript = await alice.client.get(f"/api/v1/conversations/{conversations[2]['id']}/messages")
    assert transcript.json()["data"] == []
    # Streaming clients are refused the same way, before any stream opens.
    streamed = await alice.client.post(
        f"/api/v1/conversations/{conversations[2]['id']}/messages", json={"content": "hello"}
    )
    assert_rate_limited(streamed, window_seconds=5)

    await asyncio.sleep(seconds)
    # The same Idempotency-Key is free again: a refused request recorded nothing under it.
    third = await post(conversations[2], **{"Idempotency-Key": "third-turn"})
    assert third.status_code == 202, third.text
    assert "Idempotent-Replayed" not in third.headers


@pytest.mark.parametrize("storage", ["postgres", "memory"])
async def test_two_api_processes_share_the_budget_only_in_postgres(serve: Serve, storage: str):
    limits = {"rate_limit_requests": "6 per 30 seconds", "rate_limit_storage": storage}
    first, second = await serve(**limits), await serve(**limits)
    alice = await first.user()
    secret = alice.client.headers["Authorization"].removeprefix("Bearer ")
    clients = [alice.client, second.client(secret)]

    statuses = []
    for i in range(12):
        response = await clients[i % 2].get("/api/v1/auth/me")
        statuses.append(response.status_code)
        if response.status_code == 200:
            assert response.headers["RateLimit-Limit"] == "6"
    if storage == "postgres":
        # One budget: six requests in all, alternating between the processes.
        assert statuses == [200] * 6 + [429] * 6
    else:
        # Each process counts its own (documented): six each.
        assert statuses == [200] * 12


async def test_postgres_storage_counts_windows_and_deletes_expired_rows(pool: Pool):
    storage = PostgresStorage(pool)
    key = f"test/{uuid.uuid4().hex}"
    await pool.execute(
        "INSERT INTO rate_limits (key, count, expires_at) VALUES ($1, 99, now() - interval '1 minute')",
        key + "/old",
    )
    # A window that has ended starts again at the first hit.
    assert await storage.incr(key + "/old", 30) == 1
    assert await storage.incr(key, 30) == 1
    assert await storage.incr(key, 30, amount=2) == 3
    assert await storage.get(key) == 3
    expiry = await storage.get_expiry(key)
    now = await pool.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
    assert 29 < expiry - now <= 30

    await pool.execute(
        "INSERT INTO rate_limits (key, count, expires_at) VALUES ($1, 5, now() - interval '1 second')",
        key + "/expired",
    )
    assert await storage.get(key + "/expired") == 0
    assert await storage.delete_expired() >= 1
    keys = {r["key"] for r in await pool.fetch("SELECT key FROM rate_limits WHERE key LIKE $1", key + "%")}
    assert keys == {key, key + "/old"}
    await storage.clear(key)
    assert await storage.get(key) == 0
    await storage.clear(key + "/old")


def test_limits_are_read_in_the_limits_notation():
    assert Settings(rate_limit_requests="5 per 10 seconds").rate_limit_requests == "5 per 10 seconds"
    assert Settings(rate_limit_turns="off").rate_limit_turns == ""
    assert Settings(rate_limit_turns="0").rate_limit_turns == ""
    with pytest.raises(ValueError, match="not a rate limit"):
        Settings(rate_limit_requests="lots")
    with pytest.raises(ValueError):
        Settings(max_active_turns_per_user=-1)


async def test_a_refused_request_leaves_its_idempotency_key_free_for_the_retry(serve: Serve):
    api = await serve(rate_limit_requests="1 per 3 seconds")
    alice = await api.user()
    headers = {"Idempotency-Key": f"create-{uuid.uuid4().hex}"}
    first = await alice.client.post("/api/v1/conversations", json={"title": "once"}, headers=headers)
    assert first.status_code == 201, first.text
    other = {"Idempotency-Key": f"other-{uuid.uuid4().hex}"}
    refused = await alice.client.post("/api/v1/conversations", json={"title": "later"}, headers=other)
    seconds = assert_rate_limited(refused, window_seconds=3)
    await asyncio.sleep(seconds)
    retried = await alice.client.post("/api/v1/conversations", json={"title": "later"}, headers=other)
    assert retried.status_code == 201, "the 429 was not kept as the key's answer"
    assert "idempotent-replayed" not in retried.headers
    stored = await api.pool.fetch("SELECT title FROM conversations WHERE user_id = $1", alice.user_id)
    assert sorted(row["title"] for row in stored) == ["later", "once"]
