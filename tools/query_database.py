"""`query_database`: one read-only SQL statement against QUERY_DATABASE_URL.

What keeps it read-only is PostgreSQL, never a keyword list:

- Each call is its own `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`, ended by
  ROLLBACK whatever happens: a read needs no commit, and a rollback undoes any SET the
  statement made. Its first query (`set_config` of the timeouts, LOCAL to it) takes the
  transaction's snapshot, after which PostgreSQL refuses to make it read-write again, by
  `SET TRANSACTION`, `BEGIN READ WRITE` or `set_config` in a function alike. A statement
  that ends the transaction (COMMIT, PREPARE TRANSACTION) is an error, and what the role
  managed to PREPARE is rolled back, so no prepared transaction outlives the call.
- The statement is prepared (extended protocol), and PostgreSQL refuses to prepare more
  than one command; parameters are bound by the server, never spliced into the text.
- Rows are read through a portal, a few at a time (as many as fit FETCH_BYTES, judged by
  the rows before), and converted as they come: memory follows the result's byte cap, not
  the rows read. One value is still read whole (up to PostgreSQL's 1 GB).
- A read-only transaction does not stop a superuser from running `COPY … TO PROGRAM` or
  `pg_read_file`, so a login role that is a superuser, or may become one of the roles that
  run programs, read or write server files or signal other sessions, is refused outright.
- The connection defaults to read-only transactions and to the same timeouts, and the pool
  DISCARDs ALL on release (settings, advisory locks, LISTEN, PREPAREd statements).
- A client-side deadline a little past QUERY_TIMEOUT backs up `statement_timeout`; a
  connection it interrupts is terminated, never handed to the next call mid-query.

The operator's role setup (docs/TOOLS.md) is one more layer, not the only one.
"""

import asyncio
import contextlib
from typing import Any

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy
from asyncpg.types import Attribute

from core.config import Settings
from core.errors import ConfigurationError
from tools.base import InvalidArguments, ToolContext, ToolFailed, ToolSpec, ToolTemporarilyFailed
from tools.sql_params import ParameterError, coerce_parameters
from tools.sql_values import (
    is_pg_char,
    json_size,
    pg_char_text,
    register_codecs,
    to_json,
    value_cap,
    wire_size,
)

log = structlog.get_logger(__name__)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
CONNECT_TIMEOUT = 10.0
# How long past statement_timeout the client waits for PostgreSQL's own cancellation.
CLIENT_GRACE = 2.0
LOCK_TIMEOUT_MAX = 2.0
# About how much row data one fetch brings into memory (a single larger row is read alone).
FETCH_BYTES = 4 * 1024 * 1024
# The activity cuts a tool result at 100,000 characters; a result stays below that whatever
# QUERY_MAX_BYTES says (JSON characters never outnumber its UTF-8 bytes).
MAX_RESULT_BYTES = 90_000
# Roles whose members can reach outside the database even in a read-only transaction.
_UNSAFE_ROLES_QUERY = """
SELECT coalesce(string_agg(r.rolname, ', ' ORDER BY r.rolname), '')
FROM pg_roles r
WHERE (r.rolsuper OR r.rolname IN ('pg_execute_server_program', 'pg_read_server_files',
                                   'pg_write_server_files', 'pg_signal_backend'))
  AND pg_has_role(session_user, r.oid, 'MEMBER')
"""
# Shutdown, restart, too many connections, serialization and recovery conflicts, deadlock.
_TRANSIENT_STATES = {"57P01", "57P02", "57P03", "53300", "40001", "40P01"}
_SET_TIMEOUTS = "SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true)"

QUERY_DATABASE_DESCRIPTION = (
    "Run one read-only SQL statement (PostgreSQL) and get its rows. Only reads are allowed: writes, "
    "DDL, transaction control and several statements in one call are refused. Put values in "
    "`parameters` and refer to them as $1, $2, … instead of writing them into the SQL. Explore the "
    "schema with information_schema or pg_catalog. The result is {columns, rows, row_count, "
    "truncated}; truncated means more rows exist, so filter, aggregate or add ORDER BY/LIMIT. "
    "numeric and integers beyond 2^53 come back as strings, timestamps as ISO 8601 (timestamptz in "
    "UTC, with Z), bytea as \\x hex, json as JSON; values longer than 4000 characters are cut "
    "with a marker."
)
QUERY_DATABASE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["query"],
    "properties": {
        "query": {
            "type": "string",
            "minLength": 1,
            "description": "One read-only SQL statement; $1, $2, … for parameters.",
        },
        "parameters": {
            "type": "array",
            "description": (
                "Values for $1, $2, … in order: strings, numbers, booleans, null, lists for arrays, "
                "objects for json. Dates, timestamps, uuids and decimals as strings (ISO 8601 for "
                "times). For other types pass a string and cast it: $1::text::inet."
            ),
        },
        "limit": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_LIMIT,
            "default": DEFAULT_LIMIT,
            "description": "Most rows to return (default 100).",
        },
    },
}


# Seconds; leaves room for the client backstop inside the activity's 2-minute limit.
MAX_QUERY_TIMEOUT = 100.0


class UnsafeRole(Exception):
    """The configured login role can act outside the database even in a read-only transaction."""


class TransactionEnded(Exception):
    """The statement ended the call's transaction (COMMIT, ROLLBACK, PREPARE TRANSACTION)."""


class ResultTooLarge(Exception):
    """Not even the first row fits in QUERY_MAX_BYTES."""


class QueryDatabaseTool:
    """Read-only SQL against the configured database, through a small lazily created pool."""

    spec = ToolSpec(
        name="query_database",
        description=QUERY_DATABASE_DESCRIPTION,
        input_schema=QUERY_DATABASE_SCHEMA,
    )

    def __init__(self, dsn: str, *, timeout: float, max_bytes: int, pool_size: int = 4) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._max_bytes = min(max_bytes, MAX_RESULT_BYTES)
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> "QueryDatabaseTool | None":
        """The tool, None while QUERY_DATABASE_URL is unset."""
        if settings.query_database_url is None:
            return None
        dsn = settings.query_database_url.get_secret_value()
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise ConfigurationError("QUERY_DATABASE_URL must be a postgresql:// URL")
        timeout = settings.query_timeout.total_seconds()
        if not 0 < timeout <= MAX_QUERY_TIMEOUT:
            # The tool's activity runs at most 2 minutes; a longer statement would be cut
            # off there, as a vague `tool_unavailable` instead of `query_timeout`.
            raise ConfigurationError(
                f"QUERY_TIMEOUT must be more than 0 and at most {MAX_QUERY_TIMEOUT:.0f}s"
            )
        return cls(
            dsn,
            timeout=timeout,
            max_bytes=int(settings.query_max_bytes),
        )

    def check(self, arguments: dict[str, Any]) -> None:
        if not arguments["query"].strip():
            raise InvalidArguments("query: the statement is empty")

    async def aclose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        pool = await self._get_pool()
        try:
            conn = await pool.acquire(timeout=CONNECT_TIMEOUT)
        except Exception as err:
            raise _connect_failure(err) from err
        try:
            return await self._run_on(
                conn,
                arguments["query"],
                arguments.get("parameters") or [],
                arguments.get("limit", DEFAULT_LIMIT),
            )
        finally:
            # A connection that cannot be reset is terminated by the pool; the call's outcome stands.
            with contextlib.suppress(Exception):
                await pool.release(conn)

    async def _get_pool(self) -> asyncpg.Pool:
        async with self._pool_lock:
            if self._pool is None:
                pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=0,
                    max_size=self._pool_size,
                    max_inactive_connection_lifetime=60,
                    timeout=CONNECT_TIMEOUT,
                    # Unnamed statements only: a `DEALLOCATE ALL` cannot break later calls.
                    statement_cache_size=0,
                    init=_init_connection,
                    reset=_reset_connection,
                    server_settings=self._server_settings(),
                )
                assert pool is not None
                self._pool = pool
            return self._pool

    def _server_settings(self) -> dict[str, str]:
        statement_ms, lock_ms = self._timeouts_ms()
        return {
            "application_name": "assistant-query_database",
            "default_transaction_read_only": "on",
            "statement_timeout": statement_ms,
            "lock_timeout": lock_ms,
            "idle_in_transaction_session_timeout": str(max(30_000, 2 * int(statement_ms))),
        }

    def _timeouts_ms(self) -> tuple[str, str]:
        statement_ms = max(1, round(self._timeout * 1000))
        return str(statement_ms), str(min(statement_ms, round(LOCK_TIMEOUT_MAX * 1000)))

    async def _run_on(
        self, conn: PoolConnectionProxy, query: str, parameters: list[Any], limit: int
    ) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self._timeout + CLIENT_GRACE):
                return await self._read(conn, query, parameters, limit)
        except TimeoutError:
            conn.terminate()  # it may still be mid-query; it must not serve another call
            raise self._timed_out() from None
        except ParameterError as err:
            raise InvalidArguments(str(err)) from err
        except TransactionEnded:
            raise ToolFailed(
                "query_not_read_only",
                "ending the transaction (COMMIT, ROLLBACK, PREPARE TRANSACTION) is not allowed: each "
                "call is its own read-only transaction",
            ) from None
        except asyncpg.DataError as err:
            if getattr(err, "severity", None) is None:  # asyncpg's own: a parameter it cannot encode
                raise InvalidArguments(
                    f"{err}; pass a string and cast it in SQL if needed, e.g. $1::text::inet"
                ) from err
            raise self._query_failure(err) from err
        except asyncpg.PostgresError as err:
            raise self._query_failure(err) from err
        except ResultTooLarge:
            raise ToolFailed(
                "query_result_too_large",
                f"not even one row fits in the {self._max_bytes} bytes a result may take "
                "(QUERY_MAX_BYTES); select fewer columns or shorter values, e.g. left(column, 200)",
            ) from None
        except (asyncpg.UnsupportedClientFeatureError, asyncpg.InternalClientError) as err:
            # asyncpg cannot read a column's type (a row type holding a text-only type such as
            # aclitem): the statement must change, the connection is fine.
            raise ToolFailed(
                "query_invalid",
                f"a column's type cannot be read here ({err}); cast that column to text: column::text",
            ) from err
        except (OSError, asyncpg.InterfaceError) as err:
            raise ToolTemporarilyFailed(f"the connection to the query database was lost: {err}") from err

    async def _read(
        self, conn: PoolConnectionProxy, query: str, parameters: list[Any], limit: int
    ) -> dict[str, Any]:
        """The statement's result, at most `limit + 1` rows read, inside a read-only transaction."""
        transaction = conn.transaction(isolation="repeatable_read", readonly=True)
        await transaction.start()
        try:
            await conn.fetchval(_SET_TIMEOUTS, *self._timeouts_ms())
            statement = await conn.prepare(query)
            arguments = coerce_parameters(statement.get_parameters(), parameters)
            result = _Result(statement.get_attributes(), limit=limit, max_bytes=self._max_bytes)
            if not result.columns:  # SET, LOCK, …: nothing to fetch
                await statement.fetch(*arguments)
                if not conn.is_in_transaction():  # the server says the statement ended it
                    await _roll_back_prepared_transactions(conn)
                    raise TransactionEnded
                return result.as_dict()
            # A portal fetched by count: PostgreSQL produces limit + 1 rows, not the whole result.
            await _fetch_into(result, await statement.cursor(*arguments), wanted=limit + 1)
            return result.as_dict()
        finally:
            if not conn.is_closed():
                with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    await transaction.rollback()

    def _timed_out(self) -> ToolFailed:
        return ToolFailed(
            "query_timeout",
            f"the statement ran longer than QUERY_TIMEOUT ({self._timeout:g} s) and was cancelled; "
            "narrow it (WHERE, LIMIT, indexed columns) or aggregate",
        )

    def _query_failure(self, err: asyncpg.PostgresError) -> Exception:
        state = err.sqlstate or ""
        said = _postgres_message(err)
        if state == "57014":
            return self._timed_out()
        if state == "55P03":
            return ToolFailed(
                "query_locked",
                f"a table it reads is locked by another session (e.g. a schema change): {said}",
            )
        if state.startswith("25") or state == "2D000":  # includes ending the transaction early
            return ToolFailed(
                "query_not_read_only",
                f"only reading is allowed: {said}. Each call runs in its own read-only transaction; "
                "writes, DDL, transaction control and maintenance commands are refused",
            )
        if state == "42501":
            return ToolFailed("query_not_permitted", f"the database role may not do this: {said}")
        if state == "42601":
            return ToolFailed(
                "query_invalid", f"{said}. Send exactly one SQL statement, with $1, $2, … for values"
            )
        if state.startswith("42"):
            return ToolFailed("query_invalid", said)
        if state.startswith("08") or state in _TRANSIENT_STATES:
            return ToolTemporarilyFailed(f"the query database is unavailable: {said}")
        return ToolFailed("query_failed", said)


async def _roll_back_prepared_transactions(conn: PoolConnectionProxy) -> None:
    """Undo PREPARE TRANSACTION: a prepared transaction outlives the session and holds back
    vacuum until someone ends it, and this role has no business preparing any."""
    rollbacks = await conn.fetch(
        "SELECT format('ROLLBACK PREPARED %L', gid) FROM pg_prepared_xacts"
        " WHERE owner = current_user AND database = current_database()"
    )
    for (rollback,) in rollbacks:
        await conn.execute(rollback)


async def _init_connection(conn: asyncpg.Connection) -> None:
    unsafe = await conn.fetchval(_UNSAFE_ROLES_QUERY)
    if unsafe:
        raise UnsafeRole(unsafe)
    await register_codecs(conn)


async def _reset_connection(conn: asyncpg.Connection) -> None:
    """Back to the login state between calls (asyncpg has rolled back first): settings,
    advisory locks, LISTEN, and statements a call PREPAREd, which no rollback removes."""
    await conn.execute("DISCARD ALL")


def _connect_failure(err: Exception) -> Exception:
    if isinstance(err, UnsafeRole):
        log.error("query_database refuses its login role", roles=str(err))
        return ToolFailed(
            "query_database_unavailable",
            "the query database's login role is, or may become, a superuser or a member of "
            f"{err} (it could run programs or read server files), so query_database refuses to "
            "use it; the operator must set QUERY_DATABASE_URL to a read-only role (docs/TOOLS.md)",
        )
    if isinstance(err, ValueError):  # asyncpg's ClientConfigurationError: a malformed URL
        return ToolFailed("query_database_unavailable", f"QUERY_DATABASE_URL cannot be used: {err}")
    if isinstance(err, asyncpg.PostgresError) and not isinstance(err, asyncpg.PostgresConnectionError):
        state = err.sqlstate or ""
        if state not in _TRANSIENT_STATES:  # a wrong password, role or database: no retry can fix it
            log.error("query_database cannot log in", sqlstate=state, error=str(err))
            return ToolFailed(
                "query_database_unavailable",
                f"cannot log in to the query database ({_postgres_message(err)}); "
                "the operator must fix QUERY_DATABASE_URL",
            )
    if isinstance(err, TimeoutError):
        return ToolTemporarilyFailed(
            f"no connection to the query database within {CONNECT_TIMEOUT:g} s (unreachable, or busy)"
        )
    return ToolTemporarilyFailed(f"the query database is unreachable: {type(err).__name__}: {err}")


def _postgres_message(err: asyncpg.PostgresError) -> str:
    """PostgreSQL's own words: SQLSTATE, message, and its detail, hint and position if any."""
    text = f"{err.sqlstate}: {err.args[0] if err.args else err}"
    position = getattr(err, "position", None)
    if position:
        text += f" (at character {position})"
    for label in ("detail", "hint"):
        extra = getattr(err, label, None)
        if extra:
            text += f"; {label}: {extra}"
    return text


async def _fetch_into(
    result: "_Result", cursor: "asyncpg.cursor.Cursor[asyncpg.Record]", *, wanted: int
) -> None:
    """Up to `wanted` rows into `result`, until it is full. The first fetch takes one row;
    each next one as many as FETCH_BYTES holds, judged by the largest row so far."""
    batch, largest = 1, 1
    while wanted > 0:
        records = await cursor.fetch(min(batch, wanted))
        wanted -= len(records)
        for record in records:
            if not result.add(record):
                return
            largest = max(largest, wire_size(record))
        if len(records) < batch:
            return  # the portal is done
        batch = max(1, FETCH_BYTES // largest)


class _Result:
    """The contract's shape, built row by row; its JSON stays within `max_bytes` (rows beyond
    it, or beyond `limit`, are left out and mark it truncated)."""

    def __init__(self, attributes: tuple[Attribute, ...], *, limit: int, max_bytes: int) -> None:
        self.columns = [attribute.name for attribute in attributes]
        self._pg_chars = [is_pg_char(attribute.type) for attribute in attributes]
        self.rows: list[list[Any]] = []
        self.truncated = False
        self._limit = limit
        self._max_bytes = max_bytes
        self._cap = value_cap(max_bytes)
        # Measured with the longest row_count and `false`, so the final figures never exceed it.
        self._size = json_size(
            {"columns": self.columns, "rows": [], "row_count": MAX_LIMIT, "truncated": False}
        )
        if self._size > max_bytes:
            raise ResultTooLarge

    def add(self, record: asyncpg.Record) -> bool:
        """Take one more row; False when it does not fit, and no further row is wanted."""
        if len(self.rows) == self._limit:
            self.truncated = True
            return False
        row = [
            to_json(pg_char_text(value) if pg_char else value, self._cap)
            for value, pg_char in zip(record.values(), self._pg_chars, strict=True)
        ]
        row_size = json_size(row) + (2 if self.rows else 0)  # ", " between rows
        if self._size + row_size > self._max_bytes:
            if not self.rows:
                raise ResultTooLarge
            self.truncated = True
            return False
        self.rows.append(row)
        self._size += row_size
        return True

    def as_dict(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "rows": self.rows,
            "row_count": len(self.rows),
            "truncated": self.truncated,
        }
