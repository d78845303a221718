"""A `limits` storage in PostgreSQL, so every API process counts against one budget.

Only what the fixed-window strategy needs: one row per key and window, incremented by a
single upsert (atomic, no read-modify-write race between processes). Times come from the
database clock, so API processes with skewed clocks still agree on when a window ends.

`within(conn)` runs the storage's statements on a connection in a transaction instead of
the pool: a turn's start counts against its limit in the transaction that starts it, so
a start that fails (or is refused) rolls its count back, and the request holding the
user's row lock never waits for a second connection of a pool that its queue exhausts.
"""

import asyncio
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import asyncpg
import structlog
from limits.aio.storage import Storage

from store.db import Executor, Pool

log = structlog.get_logger(__name__)

_connection: ContextVar[Executor | None] = ContextVar("rate_limit_connection", default=None)

_INCR = """
INSERT INTO rate_limits AS r (key, count, expires_at)
VALUES ($1, $3, clock_timestamp() + make_interval(secs => $2))
ON CONFLICT (key) DO UPDATE SET
    count = CASE WHEN r.expires_at <= clock_timestamp() THEN EXCLUDED.count
                 ELSE r.count + EXCLUDED.count END,
    expires_at = CASE WHEN r.expires_at <= clock_timestamp() THEN EXCLUDED.expires_at
                      ELSE r.expires_at END
RETURNING count
"""


class PostgresStorage(Storage):
    """Fixed-window counters in the UNLOGGED table `rate_limits` (migration 0007)."""

    STORAGE_SCHEME = None  # built with the app's pool, never from a storage URI

    def __init__(self, pool: Pool, *, cleanup_every: float = 60.0) -> None:
        super().__init__()
        self._pool = pool
        self._cleanup_every = cleanup_every
        self._cleaner: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def within(self, conn: Executor) -> Iterator[None]:
        """Run this task's statements on `conn` (e.g. inside its transaction) until exit."""
        token = _connection.set(conn)
        try:
            yield
        finally:
            _connection.reset(token)

    def _db(self) -> Executor:
        conn = _connection.get()
        return self._pool if conn is None else conn

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        count: int = await self._db().fetchval(_INCR, key, float(expiry), amount)
        return count

    async def get(self, key: str) -> int:
        count = await self._db().fetchval(
            "SELECT count FROM rate_limits WHERE key = $1 AND expires_at > clock_timestamp()", key
        )
        return int(count or 0)

    async def get_expiry(self, key: str) -> float:
        """When the key's window ends (epoch seconds); now if it has no live window."""
        expiry: float = await self._db().fetchval(
            "SELECT extract(epoch FROM coalesce("
            " (SELECT expires_at FROM rate_limits WHERE key = $1 AND expires_at > clock_timestamp()),"
            " clock_timestamp()))::float8",
            key,
        )
        return expiry

    async def check(self) -> bool:
        try:
            await self._pool.fetchval("SELECT 1 FROM rate_limits LIMIT 1")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            return False
        return True

    async def reset(self) -> int | None:
        status = await self._pool.execute("DELETE FROM rate_limits")
        return int(status.split()[-1])

    async def clear(self, key: str) -> None:
        await self._db().execute("DELETE FROM rate_limits WHERE key = $1", key)

    async def delete_expired(self) -> int:
        """Delete the rows of windows that have ended; returns how many."""
        status = await self._pool.execute("DELETE FROM rate_limits WHERE expires_at <= clock_timestamp()")
        return int(status.split()[-1])

    def start(self) -> None:
        """Delete expired rows every `cleanup_every` seconds until `stop`."""
        if self._cleaner is None:
            self._cleaner = asyncio.create_task(self._clean_forever())

    async def stop(self) -> None:
        if self._cleaner is not None:
            self._cleaner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cleaner
            self._cleaner = None

    async def _clean_forever(self) -> None:
        while True:
            await asyncio.sleep(self._cleanup_every)
            try:
                await self.delete_expired()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as err:
                log.warning("deleting expired rate-limit rows failed", error=f"{type(err).__name__}: {err}")
