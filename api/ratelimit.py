"""Rate limits per API key, and the open-stream limit per key (docs/API.md, "Limits").

Two windows are counted with the `limits` library: requests to every authenticated
/api/v1 route (`RATE_LIMIT_REQUESTS`, hit in `get_caller`) and turns started
(`RATE_LIMIT_TURNS`, hit by `POST …/messages` inside the transaction that starts the
turn, so a replayed or refused request costs nothing).

The strategy is the fixed window, on purpose, though it lets a client fit up to twice a
limit around a window's end: its state is one counter per key, which PostgreSQL
increments in one statement shared by every API process, and a refused client is told
exactly when it may go on (`Retry-After` is when the window ends; a moving window frees
one slot at a time, so that answer would be "in a moment, once"). These limits protect
capacity, not money: what must be exact (turns running at once per user, tokens per day)
is decided in PostgreSQL when the turn starts (store/turns.py).

Streams are counted per API process: an open SSE connection lives in one process, and a
process that dies takes its streams (and their count) with it, so no shared counter can
be left holding slots for connections that no longer exist.
"""

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import Problem
from core.config import Settings
from store.db import Executor, Pool
from store.ratelimit_storage import PostgresStorage

# Where a request's windows are kept for `RateLimitHeaders` (request.state, i.e. scope["state"]).
_STATE_KEY = "rate_limit_windows"
# Retry-After of the concurrency limits: nobody knows when a turn or a stream will end.
CONCURRENCY_RETRY_AFTER = 5


@dataclass(frozen=True)
class Window:
    """A limit as it stands for one key after a hit."""

    limit: int
    remaining: int
    reset_at: float  # epoch seconds

    def reset_in(self) -> int:
        """Whole seconds until the window ends (at least 1: a client waiting 0 would be refused)."""
        return max(1, math.ceil(self.reset_at - time.time()))

    def headers(self) -> dict[str, str]:
        """The IETF draft's `RateLimit-*` fields (RateLimit-Reset in seconds from now)."""
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_in()),
        }


class StreamSlots:
    """Open event streams per API key, in this process."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self._open: Counter[str] = Counter()

    def open_count(self, key_id: str) -> int:
        return self._open[key_id]

    def acquire(self, key_id: str) -> Callable[[], None]:
        """Take a slot for `key_id` (429 `too_many_streams` if none is free); returns its release."""
        if self.per_key and self._open[key_id] >= self.per_key:
            raise Problem(
                429,
                "too_many_streams",
                f"this API key already has {self.per_key} open event streams, the most allowed;"
                " close one (or poll with Accept: application/json)",
                headers={"Retry-After": str(CONCURRENCY_RETRY_AFTER)},
                max_streams=self.per_key,
            )
        self._open[key_id] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._open[key_id] -= 1
                if self._open[key_id] <= 0:
                    del self._open[key_id]

        return release


class _HoldingSlot(Response):
    """Sends `inner` and releases a stream slot when it ends, however it ends (the client
    went away, the turn ended, the server is stopping)."""

    def __init__(self, inner: Response, release: Callable[[], None]) -> None:
        # No Response.__init__: status and headers are the inner response's own.
        self.inner = inner
        self.release = release
        self.status_code = inner.status_code
        self.raw_headers = inner.raw_headers
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.background is not None and self.inner.background is None:
            self.inner.background = self.background
        try:
            await self.inner(scope, receive, send)
        finally:
            self.release()


def holding_slot(response: Response, release: Callable[[], None]) -> Response:
    """`response`, which releases the stream slot when it has been sent."""
    return _HoldingSlot(response, release)


class RateLimits:
    """The API's limiters; one per app, built in its lifespan."""

    def __init__(self, settings: Settings, pool: Pool) -> None:
        self.storage: Storage = (
            PostgresStorage(pool) if settings.rate_limit_storage == "postgres" else MemoryStorage()
        )
        self._limiter = FixedWindowRateLimiter(self.storage)
        self.requests: RateLimitItem | None = _item(settings.rate_limit_requests)
        self.turns: RateLimitItem | None = _item(settings.rate_limit_turns)
        self.streams = StreamSlots(settings.max_streams_per_key)

    async def start(self) -> None:
        if isinstance(self.storage, PostgresStorage):
            self.storage.start()

    async def stop(self) -> None:
        if isinstance(self.storage, PostgresStorage):
            await self.storage.stop()

    async def hit_request(self, request: Request, key_id: str) -> None:
        """Count one request of `key_id`; 429 `rate_limited` past `RATE_LIMIT_REQUESTS`."""
        if self.requests is not None:
            await self._hit(request, self.requests, "requests", key_id)

    async def hit_turn(self, request: Request, key_id: str, *, conn: Executor) -> None:
        """Count one turn started with `key_id`, in `conn`'s transaction (the one starting the
        turn; see store/ratelimit_storage.py); 429 `rate_limited` past `RATE_LIMIT_TURNS`."""
        if self.turns is None:
            return
        if isinstance(self.storage, PostgresStorage):
            with self.storage.within(conn):
                await self._hit(request, self.turns, "turns", key_id)
        else:
            await self._hit(request, self.turns, "turns", key_id)

    async def _hit(self, request: Request, item: RateLimitItem, what: str, key_id: str) -> None:
        allowed = await self._limiter.hit(item, what, key_id)
        stats = await self._limiter.get_window_stats(item, what, key_id)
        window = Window(limit=item.amount, remaining=max(0, stats.remaining), reset_at=stats.reset_time)
        windows: list[Window] = getattr(request.state, _STATE_KEY, [])
        windows.append(window)
        setattr(request.state, _STATE_KEY, windows)
        if not allowed:
            seconds = window.reset_in()
            raise Problem(
                429,
                "rate_limited",
                f"too many {what} with this API key: at most {item.amount} per"
                f" {_per(item)}; retry in {seconds} s",
                headers={"Retry-After": str(seconds), **window.headers()},
            )


def _item(text: str) -> RateLimitItem | None:
    return parse(text) if text else None


def _per(item: RateLimitItem) -> str:
    unit = item.GRANULARITY.name
    return unit if item.multiples == 1 else f"{item.multiples} {unit}s"


def limits_of(request: Request) -> RateLimits | None:
    """The app's limiters (None in an app built without its lifespan)."""
    return getattr(request.app.state, "rate_limits", None)


def _tightest(windows: list[Window]) -> Window:
    """The window that will refuse first: fewest remaining, then the latest reset."""
    return min(windows, key=lambda w: (w.remaining, -w.reset_at))


class RateLimitHeaders:
    """Adds `RateLimit-*` headers to responses of routes that counted a rate limit.

    A route may count two (requests and turns): the one closest to refusing is reported.
    A problem response that carries its own (a 429) is left as it is.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            windows = scope.get("state", {}).get(_STATE_KEY)
            if message["type"] == "http.response.start" and windows:
                present = {k.lower() for k, _ in message.get("headers", [])}
                if b"ratelimit-limit" not in present:
                    extra = [
                        (k.lower().encode(), v.encode()) for k, v in _tightest(windows).headers().items()
                    ]
                    message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
