"""query_database against a real PostgreSQL: a seeded database of its own, the read-only role
created exactly as docs/TOOLS.md tells operators, a writer role to show the tool's read-only
transaction holds by itself, and the superuser to show the tool refuses it."""

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from pydantic import SecretStr

from core.config import Settings
from core.errors import ConfigurationError
from devstack import EmbeddedPostgres, free_port
from tests.conftest import Stack
from tests.shopdb import docs_role_sql, dsn_for
from tools.base import SchemaCheck, ToolContext, ToolFailed, ToolTemporarilyFailed
from tools.query_database import QueryDatabaseTool

ROOT = Path(__file__).resolve().parent.parent
CONTEXT = ToolContext(turn_id="t", tool_call_id="c", user_id="u", idempotency_key="t:c")
READER_PASSWORD = "reader-secret-pw"
WRITER_PASSWORD = "writer-secret-pw"
KIB = 1024

SCHEMA_SQL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE pair AS (label text, at timestamptz, amount numeric);
CREATE TABLE odd (
    id int PRIMARY KEY, exact numeric(30, 10), big bigint, ratio float8, tiny real,
    at timestamptz, day date, span interval, ident uuid, doc json, docb jsonb, blob bytea,
    tags text[], grid int[][], addr inet, feeling mood, both_ pair, period tstzrange,
    clock time, clock_tz timetz, price money
);
INSERT INTO odd VALUES
 (1, 12345678901234567890.0123456789, 9007199254740993, 'NaN', 1.1,
  '2024-01-02 03:04:05.123456+02', '2024-02-29', '1 year 2 mons 3 days 04:05:06.5',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"b": [1, 2.50, null], "a": "x"}',
  '{"z": 1, "a": {"n": null}}', '\\x00ff10', '{"a",NULL,"c d"}', '{{1,2},{3,NULL}}',
  '10.1.2.3/8', 'happy', ROW('lunch', '2024-01-01 12:00:00+00', 12.50),
  '[2024-01-01 00:00:00+00,2024-02-01 00:00:00+00)', '03:04:05', '03:04:05+05:30', 12.34),
 (2, 'NaN', -9007199254740991, 'Infinity', '-Infinity', 'infinity', '-infinity',
  '-1 year -2 mons +3 days -04:05:06', NULL, '[]', '"text"', '\\x', '{}', NULL,
  '::1', 'sad', ROW(NULL, NULL, NULL), 'empty', '24:00:00', '00:00:00-03:30', NULL),
 (3, 0.0000001, 9223372036854775807, '-Infinity', 3.4028235e38,
  '0044-03-15 12:00:00+00 BC', '12345-01-01', '0 seconds', NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, '(,2024-01-01 00:00:00+00]', NULL, NULL, NULL),
 (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL);
CREATE TABLE people (id int PRIMARY KEY, name text NOT NULL, joined timestamptz, score numeric,
                     ident uuid, prefs jsonb, tags text[], born date);
INSERT INTO people VALUES
 (1, 'Ada', '2024-03-01 09:00:00+00', 12.5, '11111111-2222-3333-4444-555555555555',
  '{"theme": "dark"}', '{red,blue}', '1815-12-10'),
 (2, 'Grace', '2024-03-02 10:30:00+00', 99.125, '66666666-7777-8888-9999-000000000000',
  '{"theme": "light"}', '{green}', '1906-12-09');
CREATE TABLE big (id int PRIMARY KEY, label text NOT NULL);
INSERT INTO big SELECT g, 'row ' || g FROM generate_series(1, 100000) g;
CREATE SEQUENCE counter;
SELECT nextval('counter');
"""

# Made by the superuser, so the definer variants run with every privilege there is.
FUNCTIONS_SQL = """
CREATE FUNCTION write_invoker() RETURNS int LANGUAGE plpgsql SECURITY INVOKER
  AS $$ BEGIN INSERT INTO people (id, name) VALUES (900, 'invoker'); RETURN 1; END $$;
CREATE FUNCTION write_definer() RETURNS int LANGUAGE plpgsql SECURITY DEFINER
  AS $$ BEGIN INSERT INTO people (id, name) VALUES (901, 'definer'); RETURN 1; END $$;
CREATE FUNCTION write_definer_read_write() RETURNS int LANGUAGE plpgsql SECURITY DEFINER AS $$
  BEGIN
    PERFORM set_config('transaction_read_only', 'off', true);
    INSERT INTO people (id, name) VALUES (902, 'definer rw');
    RETURN 1;
  END $$;
CREATE PROCEDURE commit_then_write() LANGUAGE plpgsql
  AS $$ BEGIN COMMIT; INSERT INTO people (id, name) VALUES (903, 'procedure'); END $$;
"""
# Made after the role, by a role whose new tables are not granted to it.
HIDDEN_SQL = "CREATE TABLE hidden (secret text); INSERT INTO hidden VALUES ('not for the reader')"


@dataclass
class Target:
    database: str
    admin_dsn: str
    reader: str
    reader_dsn: str
    writer_dsn: str
    passwords_enforced: bool


async def _enforce_passwords(
    admin: asyncpg.Connection, line: str, check: Callable[[], Awaitable[None]]
) -> str | None:
    """Put `line` first in pg_hba.conf (trust is the embedded server's default) and wait until it
    holds; the original text to restore, or None where the file cannot be changed."""
    hba = Path(await admin.fetchval("SHOW hba_file"))
    try:
        original = await asyncio.to_thread(hba.read_text)
        await asyncio.to_thread(hba.write_text, line + "\n" + original)
    except OSError:
        return None
    await admin.execute("SELECT pg_reload_conf()")
    for _ in range(100):
        try:
            await check()
        except asyncpg.InvalidPasswordError:
            return original
        await asyncio.sleep(0.05)
    await asyncio.to_thread(hba.write_text, original)
    await admin.execute("SELECT pg_reload_conf()")
    return None


@pytest.fixture(scope="module")
async def target(stack: Stack) -> AsyncIterator[Target]:
    suffix = uuid.uuid4().hex[:8]
    database, reader, writer = f"querytarget_{suffix}", f"qd_reader_{suffix}", f"qd_writer_{suffix}"
    admin_dsn = dsn_for(stack.database_url, user="postgres", database=database)
    server = await asyncpg.connect(stack.database_url)
    await server.execute(f"CREATE ROLE {writer} LOGIN PASSWORD '{WRITER_PASSWORD}'")
    await server.execute(f"CREATE DATABASE {database} OWNER {writer}")
    admin = await asyncpg.connect(admin_dsn)
    original_hba: str | None = None
    try:
        await admin.execute(f"SET ROLE {writer}")
        await admin.execute(SCHEMA_SQL)
        await admin.execute("RESET ROLE")
        await admin.execute(FUNCTIONS_SQL)
        await admin.execute(
            docs_role_sql(database=database, owner=writer, reader=reader, password=READER_PASSWORD)
        )
        await admin.execute(HIDDEN_SQL)

        async def wrong_password() -> None:
            conn = await asyncpg.connect(
                dsn_for(stack.database_url, user=reader, password="wrong", database=database)
            )
            await conn.close()

        original_hba = await _enforce_passwords(
            admin, f"host {database} {reader} 127.0.0.1/32 scram-sha-256", wrong_password
        )
        yield Target(
            database=database,
            admin_dsn=admin_dsn,
            reader=reader,
            reader_dsn=dsn_for(stack.database_url, user=reader, password=READER_PASSWORD, database=database),
            writer_dsn=dsn_for(stack.database_url, user=writer, password=WRITER_PASSWORD, database=database),
            passwords_enforced=original_hba is not None,
        )
    finally:
        if original_hba is not None:
            hba = Path(await admin.fetchval("SHOW hba_file"))
            await asyncio.to_thread(hba.write_text, original_hba)
            await admin.execute("SELECT pg_reload_conf()")
        await admin.close()
        await server.execute(f"DROP DATABASE {database} WITH (FORCE)")
        await server.execute(f"DROP ROLE IF EXISTS {reader}")
        await server.execute(f"DROP ROLE {writer}")
        await server.close()


@pytest.fixture(scope="module")
async def admin(target: Target) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(target.admin_dsn)
    yield conn
    await conn.close()


@contextlib.asynccontextmanager
async def query_tool(
    dsn: str, *, query_timeout: float = 2.0, max_bytes: int = 64 * KIB
) -> AsyncIterator[QueryDatabaseTool]:
    # One connection, so every call of a test runs on the same PostgreSQL session.
    tool = QueryDatabaseTool(dsn, timeout=query_timeout, max_bytes=max_bytes, pool_size=1)
    try:
        yield tool
    finally:
        await tool.aclose()


@pytest.fixture(scope="module")
async def reader(target: Target) -> AsyncIterator[QueryDatabaseTool]:
    async with query_tool(target.reader_dsn) as tool:
        yield tool


async def run(
    tool: QueryDatabaseTool, query: str, *parameters: Any, limit: int | None = None
) -> dict[str, Any]:
    """A call as the worker makes it: arguments checked against the schema first."""
    arguments: dict[str, Any] = {"query": query}
    if parameters:
        arguments["parameters"] = list(parameters)
    if limit is not None:
        arguments["limit"] = limit
    assert SchemaCheck(tool.spec.input_schema).errors(arguments) == []
    tool.check(arguments)
    result: dict[str, Any] = await tool.run(arguments, CONTEXT)
    return result


async def failure(tool: QueryDatabaseTool, query: str, *parameters: Any) -> ToolFailed:
    with pytest.raises(ToolFailed) as caught:
        await run(tool, query, *parameters)
    return caught.value


# ---- escapes ------------------------------------------------------------------------------

HARMLESS = "harmless"  # PostgreSQL lets it run, and it changes nothing that outlives the call
MARKER = Path(f"/tmp/qd-escape-{uuid.uuid4().hex[:8]}")


@dataclass(frozen=True)
class Escape:
    id: str
    sql: str
    reader: str  # the error code the read-only role gets, or HARMLESS
    writer: str  # the same for a role that owns every table and may write


ESCAPES = [
    Escape(
        "insert",
        "INSERT INTO people (id, name) VALUES (100, 'mallory')",
        "query_not_read_only",
        "query_not_read_only",
    ),
    Escape("update", "UPDATE people SET name = 'mallory'", "query_not_read_only", "query_not_read_only"),
    Escape("delete", "DELETE FROM people", "query_not_read_only", "query_not_read_only"),
    Escape("truncate", "TRUNCATE people", "query_not_read_only", "query_not_read_only"),
    Escape("drop_table", "DROP TABLE people", "query_not_read_only", "query_not_read_only"),
    Escape("create_table", "CREATE TABLE planted (a int)", "query_not_read_only", "query_not_read_only"),
    Escape(
        "create_temp_table", "CREATE TEMP TABLE scratch (a int)", "query_not_read_only", "query_not_read_only"
    ),
    Escape("grant", "GRANT ALL ON people TO PUBLIC", "query_not_read_only", "query_not_read_only"),
    Escape(
        "alter_role",
        "ALTER ROLE CURRENT_USER SET default_transaction_read_only = off",
        "query_not_read_only",
        "query_not_read_only",
    ),
    Escape("stacked_drop", "SELECT 1; DROP TABLE people", "query_invalid", "query_invalid"),
    Escape(
        "stacked_commit_insert",
        "COMMIT; INSERT INTO people (id, name) VALUES (101, 'x')",
        "query_invalid",
        "query_invalid",
    ),
    Escape("begin_read_write", "BEGIN READ WRITE", "query_not_read_only", "query_not_read_only"),
    Escape(
        "set_transaction_read_write",
        "SET TRANSACTION READ WRITE",
        "query_not_read_only",
        "query_not_read_only",
    ),
    Escape("commit", "COMMIT", "query_not_read_only", "query_not_read_only"),
    Escape("rollback", "ROLLBACK", "query_not_read_only", "query_not_read_only"),
    Escape("set_default_off", "SET default_transaction_read_only = off", HARMLESS, HARMLESS),
    Escape(
        "session_characteristics", "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", HARMLESS, HARMLESS
    ),
    Escape(
        "set_config", "SELECT set_config('default_transaction_read_only', 'off', false)", HARMLESS, HARMLESS
    ),
    Escape("reset_all", "RESET ALL", HARMLESS, HARMLESS),
    Escape("discard_all", "DISCARD ALL", "query_not_read_only", "query_not_read_only"),
    Escape(
        "writable_cte",
        "WITH d AS (DELETE FROM people RETURNING *) SELECT * FROM d",
        "query_not_read_only",
        "query_not_read_only",
    ),
    Escape(
        "explain_analyze_delete",
        "EXPLAIN ANALYZE DELETE FROM people",
        "query_not_read_only",
        "query_not_read_only",
    ),
    Escape(
        "select_for_update", "SELECT * FROM people FOR UPDATE", "query_not_read_only", "query_not_read_only"
    ),
    Escape("nextval", "SELECT nextval('counter')", "query_not_permitted", "query_not_read_only"),
    Escape("setval", "SELECT setval('counter', 1000)", "query_not_permitted", "query_not_read_only"),
    Escape("lock_table", "LOCK TABLE people IN ACCESS EXCLUSIVE MODE", "query_not_permitted", HARMLESS),
    Escape("vacuum", "VACUUM people", "query_not_read_only", "query_not_read_only"),
    Escape(
        "do_block",
        "DO $$ BEGIN INSERT INTO people (id, name) VALUES (102, 'x'); END $$",
        "query_not_read_only",
        "query_not_read_only",
    ),
    Escape(
        "prepare", "PREPARE sneaky AS INSERT INTO people (id, name) VALUES (103, 'x')", HARMLESS, HARMLESS
    ),
    Escape("execute_prepared", "EXECUTE sneaky", "query_failed", "query_failed"),
    Escape("listen", "LISTEN qd_channel", HARMLESS, HARMLESS),
    Escape("notify", "NOTIFY qd_channel, 'hello'", HARMLESS, HARMLESS),
    Escape("advisory_lock", "SELECT pg_advisory_lock(4242)", HARMLESS, HARMLESS),
    Escape("copy_from_stdin", "COPY people FROM STDIN", "query_not_permitted", "query_not_read_only"),
    Escape("copy_to_stdout", "COPY people TO STDOUT", HARMLESS, HARMLESS),
    Escape(
        "copy_to_program",
        f"COPY people TO PROGRAM 'touch {MARKER}'",
        "query_not_permitted",
        "query_not_permitted",
    ),
    Escape(
        "pg_read_file", "SELECT pg_read_file('/etc/passwd')", "query_not_permitted", "query_not_permitted"
    ),
    Escape("lo_import", "SELECT lo_import('/etc/passwd')", "query_not_permitted", "query_not_permitted"),
    Escape("write_invoker", "SELECT write_invoker()", "query_not_read_only", "query_not_read_only"),
    Escape("write_definer", "SELECT write_definer()", "query_not_read_only", "query_not_read_only"),
    Escape(
        "write_definer_read_write",
        "SELECT write_definer_read_write()",
        "query_not_read_only",
        "query_not_read_only",
    ),
    Escape("procedure_commit", "CALL commit_then_write()", "query_not_read_only", "query_not_read_only"),
    Escape("set_role", "SET ROLE postgres", "query_not_permitted", "query_not_permitted"),
    Escape(
        "session_authorization",
        "SET SESSION AUTHORIZATION postgres",
        "query_not_permitted",
        "query_not_permitted",
    ),
    Escape(
        "terminate_other",
        "SELECT pg_terminate_backend({admin_pid})",
        "query_not_permitted",
        "query_not_permitted",
    ),
    Escape("reload_conf", "SELECT pg_reload_conf()", "query_not_permitted", "query_not_permitted"),
    Escape("checkpoint", "CHECKPOINT", "query_not_permitted", "query_not_permitted"),
    Escape("prepare_transaction", "PREPARE TRANSACTION 'qd'", "query_failed", "query_failed"),
    Escape("sleep", "SELECT pg_sleep(60)", "query_timeout", "query_timeout"),
]


async def fingerprint(admin: asyncpg.Connection) -> dict[str, Any]:
    """Everything an escape could change: each table's rows, the relations, the sequence, large
    objects, role settings and prepared transactions."""
    relations = await admin.fetch(
        "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' ORDER BY 1"
    )
    state: dict[str, Any] = {"relations": [tuple(r) for r in relations]}
    for name, kind in state["relations"]:
        if kind == "r":
            state[name] = await admin.fetchval(
                f"SELECT ROW(count(*), coalesce(sum(hashtext(t::text)), 0))::text FROM public.{name} t"
            )
    state["counter"] = await admin.fetchval("SELECT ROW(last_value, is_called)::text FROM counter")
    state["large_objects"] = await admin.fetchval("SELECT count(*) FROM pg_largeobject_metadata")
    state["role_settings"] = await admin.fetchval(
        "SELECT array_agg(setconfig::text ORDER BY setrole) FROM pg_db_role_setting"
    )
    state["prepared_transactions"] = await admin.fetchval("SELECT count(*) FROM pg_prepared_xacts")
    return state


@pytest.fixture(scope="module")
async def writer(target: Target) -> AsyncIterator[QueryDatabaseTool]:
    async with query_tool(target.writer_dsn) as tool:
        yield tool


@pytest.fixture(scope="module")
async def baseline(admin: asyncpg.Connection) -> dict[str, Any]:
    return await fingerprint(admin)


@pytest.fixture(scope="module")
async def superuser(target: Target) -> AsyncIterator[QueryDatabaseTool]:
    async with query_tool(target.admin_dsn) as tool:
        yield tool


@pytest.mark.parametrize("role", ["reader", "writer", "superuser"])
@pytest.mark.parametrize("escape", ESCAPES, ids=[e.id for e in ESCAPES])
async def test_escape_is_refused_or_harmless(
    escape: Escape,
    role: str,
    reader: QueryDatabaseTool,
    writer: QueryDatabaseTool,
    superuser: QueryDatabaseTool,
    admin: asyncpg.Connection,
    baseline: dict[str, Any],
) -> None:
    sql = escape.sql.format(admin_pid=await admin.fetchval("SELECT pg_backend_pid()"))
    if role == "superuser":  # refused before its statement reaches the server
        assert (await failure(superuser, sql)).code == "query_database_unavailable"
        assert not await asyncio.to_thread(MARKER.exists), "COPY … TO PROGRAM ran a program on the server"
        assert await fingerprint(admin) == baseline
        return
    tool = reader if role == "reader" else writer
    pid_before = (await run(tool, "SELECT pg_backend_pid()"))["rows"][0][0]
    expected = getattr(escape, role)
    started = time.monotonic()
    if expected == HARMLESS:
        result = await run(tool, sql)
        assert set(result) == {"columns", "rows", "row_count", "truncated"}
    else:
        error = await failure(tool, sql)
        assert error.code == expected, error.message
        assert error.message
        if expected == "query_timeout":
            assert "QUERY_TIMEOUT" in error.message
            assert time.monotonic() - started < 5, "pg_sleep(60) must end at QUERY_TIMEOUT (2 s here)"

    assert not await asyncio.to_thread(MARKER.exists), "COPY … TO PROGRAM ran a program on the server"
    assert await fingerprint(admin) == baseline
    # The same session goes on, still read-only, with nothing left over from the escape.
    after = await run(
        tool,
        "SELECT pg_backend_pid(), current_setting('transaction_read_only'),"
        " current_setting('default_transaction_read_only'), current_user = session_user,"
        " (SELECT count(*) FROM pg_prepared_statements WHERE from_sql),"
        " (SELECT count(*) FROM pg_listening_channels()),"
        " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),"
        " (SELECT count(*) FROM people)",
    )
    assert after["rows"] == [[pid_before, "on", "on", True, 0, 0, 0, 2]]
    assert (
        await failure(tool, "INSERT INTO people (id, name) VALUES (104, 'x')")
    ).code == "query_not_read_only"


async def test_dblink_kept_out_of_reach_as_documented_cannot_write(
    admin: asyncpg.Connection, target: Target, reader: QueryDatabaseTool, writer: QueryDatabaseTool
) -> None:
    """dblink_exec writes through a connection of its own, outside the read-only transaction;
    docs/TOOLS.md has operators put it in a schema the role cannot use."""
    available = await admin.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'dblink'")
    if not available:
        pytest.skip(
            "the dblink extension is not part of this PostgreSQL build (pgserver ships only plpgsql "
            "and vector), so there is nothing to escape through here"
        )
    await admin.execute("CREATE SCHEMA IF NOT EXISTS ext; CREATE EXTENSION IF NOT EXISTS dblink SCHEMA ext")
    before = await fingerprint(admin)
    write = "SELECT ext.dblink_exec($1, 'INSERT INTO people (id, name) VALUES (905, ''dblink'')')"
    for tool in (reader, writer):
        assert (await failure(tool, write, target.writer_dsn)).code == "query_not_permitted"
    assert await fingerprint(admin) == before


async def test_prepare_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    """Where two-phase commit is enabled, PREPARE TRANSACTION would park the call's transaction
    (holding back vacuum) beyond the session; the tool rolls back what its role prepared."""
    server = EmbeddedPostgres(tmp_path)
    dsn = await asyncio.to_thread(server.start)
    try:
        admin = await asyncpg.connect(dsn)
        await admin.execute("ALTER SYSTEM SET max_prepared_transactions = 4")
        await admin.close()
        await asyncio.to_thread(server.stop)
        dsn = await asyncio.to_thread(server.start)
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute("CREATE ROLE parker LOGIN")
            async with admin.transaction(readonly=True):  # the control: it works for a read-only one
                await admin.execute("PREPARE TRANSACTION 'control'")
            assert await admin.fetchval("SELECT count(*) FROM pg_prepared_xacts") == 1
            await admin.execute("ROLLBACK PREPARED 'control'")

            async with query_tool(dsn_for(dsn, user="parker", database="postgres")) as tool:
                error = await failure(tool, "PREPARE TRANSACTION 'parked'")
                assert error.code == "query_not_read_only" and "PREPARE TRANSACTION" in error.message
                assert (await run(tool, "SELECT 1"))["rows"] == [[1]]
            assert await admin.fetchval("SELECT count(*) FROM pg_prepared_xacts") == 0
        finally:
            await admin.close()
    finally:
        await asyncio.to_thread(server.stop)


async def test_notifications_of_a_call_are_never_delivered(reader: QueryDatabaseTool, target: Target) -> None:
    listener = await asyncpg.connect(target.admin_dsn)
    received: list[str] = []
    await listener.add_listener("qd_channel", lambda *args: received.append(args[3]))
    try:
        await run(reader, "NOTIFY qd_channel, 'from notify'")
        await run(reader, "SELECT pg_notify('qd_channel', 'from pg_notify')")
        await asyncio.sleep(0.5)
        assert received == []  # sent only on commit, and every call rolls back
        await listener.execute("NOTIFY qd_channel, 'control'")
        for _ in range(50):
            if received:
                break
            await asyncio.sleep(0.02)
        assert received == ["control"]
    finally:
        await listener.close()


async def test_superuser_is_refused_with_a_reason(superuser: QueryDatabaseTool) -> None:
    error = await failure(superuser, "SELECT 1")
    assert error.code == "query_database_unavailable"
    assert "superuser" in error.message and "docs/TOOLS.md" in error.message


async def test_a_read_only_transaction_alone_does_not_stop_a_superuser(target: Target) -> None:
    """Why the tool refuses superusers: PostgreSQL lets them run programs inside READ ONLY."""
    marker = Path(f"/tmp/qd-superuser-{uuid.uuid4().hex[:8]}")
    conn = await asyncpg.connect(target.admin_dsn)
    try:
        async with conn.transaction(readonly=True):
            await conn.execute(f"COPY (SELECT 1) TO PROGRAM 'touch {marker}'")
        assert await asyncio.to_thread(marker.exists)
    finally:
        await conn.close()
        await asyncio.to_thread(marker.unlink, missing_ok=True)


async def test_a_role_that_may_become_a_superuser_is_refused(target: Target, stack: Stack) -> None:
    name = f"qd_climber_{uuid.uuid4().hex[:8]}"
    server = await asyncpg.connect(stack.database_url)
    try:
        await server.execute(
            f"CREATE ROLE {name} LOGIN PASSWORD 'pw'; GRANT pg_execute_server_program TO {name}"
        )
        dsn = dsn_for(stack.database_url, user=name, password="pw", database=target.database)
        async with query_tool(dsn) as tool:
            error = await failure(tool, "SELECT 1")
        assert error.code == "query_database_unavailable"
        assert "pg_execute_server_program" in error.message
    finally:
        await server.execute(f"DROP ROLE {name}")
        await server.close()


# ---- results ------------------------------------------------------------------------------


async def test_odd_types_serialise_as_documented(
    reader: QueryDatabaseTool, admin: asyncpg.Connection
) -> None:
    price = await admin.fetchval("SELECT 12.34::money::text")
    result = await run(reader, "SELECT * FROM odd ORDER BY id")
    assert result["columns"] == [
        "id", "exact", "big", "ratio", "tiny", "at", "day", "span", "ident", "doc", "docb", "blob",
        "tags", "grid", "addr", "feeling", "both_", "period", "clock", "clock_tz", "price",
    ]  # fmt: skip
    assert result["rows"] == [
        [
            1, "12345678901234567890.0123456789", "9007199254740993", "NaN", 1.1,
            "2024-01-02T01:04:05.123456Z", "2024-02-29", "P1Y2M3DT4H5M6.5S",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", {"b": [1, 2.5, None], "a": "x"},
            {"a": {"n": None}, "z": 1}, "\\x00ff10", ["a", None, "c d"], [[1, 2], [3, None]],
            "10.1.2.3/8", "happy", {"label": "lunch", "at": "2024-01-01T12:00:00Z", "amount": "12.50"},
            "[2024-01-01T00:00:00Z,2024-02-01T00:00:00Z)", "03:04:05", "03:04:05+05:30", price,
        ],
        [
            2, "NaN", -9007199254740991, "Infinity", "-Infinity", "infinity", "-infinity",
            "P-1Y-2M3DT-4H-5M-6S", None, [], "text", "\\x", [], None, "::1", "sad",
            {"label": None, "at": None, "amount": None}, "empty", "24:00:00", "00:00:00-03:30", None,
        ],
        [
            3, "0.0000001000", "9223372036854775807", "-Infinity", 3.4028235e38,
            "-0043-03-15T12:00:00Z", "+12345-01-01", "PT0S", None, None, None, None, None, None,
            None, None, None, "(,2024-01-01T00:00:00Z]", None, None, None,
        ],
        [4] + [None] * 20,
    ]  # fmt: skip
    assert result["row_count"] == 4 and result["truncated"] is False
    json.dumps(result, allow_nan=False)  # storable as jsonb: no NaN or Infinity numbers


async def test_other_types(reader: QueryDatabaseTool) -> None:
    result = await run(
        reader,
        "SELECT point(1, 2) AS p, box '((1,2),(3,4))' AS b, B'101' AS bits,"
        " '08:00:2b:01:02:03'::macaddr AS mac, '10.0.0.0/8'::cidr AS net, 'a fat cat'::tsvector AS tsv,"
        " '(,5]'::int4range AS r,"
        " '{[1,3),[5,7)}'::int4multirange AS mr, ROW(1, 'a', NULL) AS rec, 'x'::char(3) AS c,"
        " 'odd'::regclass AS rel, '\"quoted\"'::jsonb AS js,"
        " ARRAY['2024-01-01 00:00+00'::timestamptz, NULL] AS times, ARRAY[1.50, 'NaN']::numeric[] AS nums,"
        ' \'{"big": 12345678901234567890, "huge": 1e400}\'::json AS nums_in_json,'
        " '1.5'::float4 AS f4, 0.1::float8 AS f8, true AS yes",
    )
    assert result["rows"] == [
        [
            [1.0, 2.0], [[3.0, 4.0], [1.0, 2.0]], "101", "08:00:2b:01:02:03", "10.0.0.0/8",
            "'a' 'cat' 'fat'", "(,6)", ["[1,3)", "[5,7)"], [1, "a", None], "x  ", "odd",
            "quoted", ["2024-01-01T00:00:00Z", None], ["1.50", "NaN"],
            {"big": 12345678901234567890, "huge": "1e400"}, 1.5, 0.1, True,
        ]
    ]  # fmt: skip


async def test_dates_times_and_intervals_match_postgresql(
    reader: QueryDatabaseTool, admin: asyncpg.Connection
) -> None:
    """PostgreSQL's own ISO output is the oracle, over years from 4713 BC to 294276 AD."""
    values = (
        "SELECT ts, (ts AT TIME ZONE 'UTC')::date AS d, (ts AT TIME ZONE 'UTC')::time AS t,"
        " make_interval(y, m, 0, d, h, mi, s) AS i FROM ("
        " SELECT timestamptz '4713-01-01 00:00:00+00 BC'"
        "        + g * interval '1234567 hours 59 minutes 59.999999 seconds' AS ts,"
        "        (g % 7) - 3 AS y, (g % 13) - 6 AS m, (g % 40) - 20 AS d, (g % 50) - 25 AS h,"
        "        (g % 120) - 60 AS mi, ((g % 1000) - 500) / 7.0 AS s"
        " FROM generate_series(0, 2000) g) v ORDER BY ts"
    )
    expected = await _postgres_iso(admin, values)
    got: list[Any] = []
    for offset in range(0, len(expected), 400):  # pages that fit QUERY_MAX_BYTES
        page = await run(reader, f"{values} OFFSET {offset} LIMIT 400", limit=400)
        assert page["truncated"] is False
        got.extend(page["rows"])
    assert got == expected
    assert any(row[0].startswith("-") for row in expected) and any(row[0].startswith("+") for row in expected)


async def _postgres_iso(admin: asyncpg.Connection, query: str) -> list[list[str]]:
    """Rows of (timestamptz, date, time, interval) as text from PostgreSQL, turned into ISO 8601."""
    async with admin.transaction():
        await admin.execute(
            "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'; SET LOCAL IntervalStyle = 'iso_8601'"
        )
        rows = await admin.fetch(f"SELECT ts::text, d::text, t::text, i::text FROM ({query}) q")
    return [[_iso_moment(ts), _iso_date(d), t, i] for ts, d, t, i in rows]


def _iso_date(text: str) -> str:
    year, rest = text.split("-", 1)
    if rest.endswith(" BC"):
        return f"-{int(year) - 1:04d}-{rest[:-3]}" if int(year) > 1 else f"0000-{rest[:-3]}"
    return f"+{year}-{rest}" if len(year) > 4 else f"{year}-{rest}"


def _iso_moment(text: str) -> str:
    bc = text.endswith(" BC")
    body = text[:-3] if bc else text
    day, clock = body.split(" ")
    assert clock.endswith("+00")
    return f"{_iso_date(day + (' BC' if bc else ''))}T{clock[:-3]}Z"


async def test_limit_default_and_truncated(reader: QueryDatabaseTool) -> None:
    result = await run(reader, "SELECT id, label FROM big ORDER BY id")
    assert result["columns"] == ["id", "label"]
    assert result["row_count"] == 100 and len(result["rows"]) == 100 and result["truncated"] is True
    assert result["rows"][0] == [1, "row 1"] and result["rows"][-1] == [100, "row 100"]

    thousand = await run(reader, "SELECT id FROM big ORDER BY id", limit=1000)
    assert thousand["row_count"] == 1000 and thousand["truncated"] is True
    assert [r[0] for r in thousand["rows"]] == list(range(1, 1001))

    exact = await run(reader, "SELECT id FROM big ORDER BY id LIMIT 5", limit=5)
    assert exact["row_count"] == 5 and exact["truncated"] is False
    empty = await run(reader, "SELECT id FROM big WHERE false")
    assert empty == {"columns": ["id"], "rows": [], "row_count": 0, "truncated": False}


async def test_only_limit_plus_one_rows_are_read(
    reader: QueryDatabaseTool, admin: asyncpg.Connection
) -> None:
    """PostgreSQL's own count of rows its sequential scans returned (pg_stat_user_tables)."""
    assert await _rows_scanned(admin, run(reader, "SELECT count(label) FROM big")) == 100_000  # the measure
    assert await _rows_scanned(admin, run(reader, "SELECT id, label FROM big", limit=100)) == 101


async def _rows_scanned(admin: asyncpg.Connection, work: Awaitable[Any]) -> int:
    """How far `big`'s seq_tup_read moves because of `work`. Backends report their counts
    once idle, up to a second late, so the count must first hold still, then move and settle."""
    before = await _settled_seq_tup_read(admin, None)
    await work
    return await _settled_seq_tup_read(admin, before) - before


async def _settled_seq_tup_read(admin: asyncpg.Connection, unlike: int | None) -> int:
    last, steady_since = None, time.monotonic()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        await admin.execute("SELECT pg_stat_clear_snapshot()")
        value: int = await admin.fetchval(
            "SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'big'"
        )
        if value != last:
            last, steady_since = value, time.monotonic()
        elif value != unlike and time.monotonic() - steady_since > 1.5:
            return value
        await asyncio.sleep(0.1)
    pytest.fail("pg_stat_user_tables never settled")


async def test_byte_cap_truncates_rows(target: Target) -> None:
    async with query_tool(target.reader_dsn, max_bytes=2 * KIB) as tool:
        result = await run(tool, "SELECT id, label FROM big ORDER BY id", limit=1000)
    assert result["truncated"] is True
    assert 10 < result["row_count"] < 1000 and result["row_count"] == len(result["rows"])
    assert [r[0] for r in result["rows"]] == list(range(1, result["row_count"] + 1))
    assert len(json.dumps(result, ensure_ascii=False).encode()) <= 2 * KIB


async def test_huge_values_are_cut_with_a_marker(reader: QueryDatabaseTool) -> None:
    result = await run(
        reader,
        "SELECT repeat('é', 10000000) AS text, decode(repeat('00ff', 500000), 'hex') AS blob,"
        " (SELECT array_agg(g) FROM generate_series(1, 100000) g) AS ints,"
        " (SELECT jsonb_agg(g) FROM generate_series(1, 100000) g) AS doc",
    )
    text, blob, ints, doc = result["rows"][0]
    assert text == "é" * 4000 + "…[9996000 more characters]"
    assert blob == "\\x" + "00ff" * 999 + "00…[998001 more bytes]"  # 1999 bytes shown
    assert ints.startswith("[1, 2, 3, ") and ints.endswith(" more characters]") and len(ints) < 4100
    assert doc.startswith("[1, 2, 3, ") and doc.endswith(" more characters]") and len(doc) < 4100
    assert result["truncated"] is False
    assert len(json.dumps(result, ensure_ascii=False).encode()) <= 64 * KIB


async def test_hostile_values_keep_the_result_whole(reader: QueryDatabaseTool) -> None:
    """Values PostgreSQL accepts but Python could not carry on stay text, cut like any other."""
    result = await run(
        reader,
        "SELECT repeat('[', 1500)::text || repeat(']', 1500) AS deep_text,"
        " (repeat('[', 1500) || repeat(']', 1500))::json AS deep,"
        " (repeat('[', 100) || repeat(']', 100))::jsonb AS nested,"
        " '\"\\ud800\"'::json AS lone_surrogate, 10::numeric ^ 5000 AS huge,"
        " E'nul\\\\u0000'::text AS backslashes",
    )
    deep_text, deep, nested, surrogate, huge, backslashes = result["rows"][0]
    assert deep == deep_text == "[" * 1500 + "]" * 1500
    assert nested == "[" * 100 + "]" * 100
    assert surrogate == '"\\ud800"'
    assert huge.startswith("1" + "0" * 3999) and huge.endswith("…[1001 more characters]")
    assert backslashes == "nul\\u0000"
    json.dumps(result, ensure_ascii=False, allow_nan=False).encode()


def _peak_rss_kib() -> int:
    """The process's peak resident memory since the last `_reset_peak_rss` (Linux VmHWM)."""
    return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0])


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


async def test_memory_is_bounded_by_the_result_not_by_the_rows_read(reader: QueryDatabaseTool) -> None:
    """400 rows of 1 MB each: only about the 64 KiB the result may take is kept, so the rows
    are read a few at a time, never all at once."""
    await run(reader, "SELECT 1")  # the pool's connection exists before the measure
    _reset_peak_rss()
    before = _peak_rss_kib()
    result = await run(reader, "SELECT repeat('x', 1000000) AS big FROM generate_series(1, 400)", limit=1000)
    grown_mib = (_peak_rss_kib() - before) / 1024
    assert result["truncated"] is True and 0 < result["row_count"] < 400
    assert result["rows"][0] == ["x" * 4000 + "…[996000 more characters]"]
    assert grown_mib < 100, f"reading the result took {grown_mib:.0f} MiB"


async def test_catalog_tables_read_as_postgresql_shows_them(reader: QueryDatabaseTool) -> None:
    """`"char"` columns (relkind, contype, …) as their letter, `anyarray` columns (pg_attribute,
    pg_stats) as PostgreSQL's text, and a `"char"` parameter bound like any other string."""
    kind = await run(reader, "SELECT relkind, relpersistence FROM pg_class WHERE relname = 'people'")
    assert kind["rows"] == [["r", "p"]]
    assert (await run(reader, "SELECT ''::\"char\", '\\351'::\"char\""))["rows"] == [["", "\\351"]]
    tables = await run(reader, "SELECT relname FROM pg_class WHERE relkind = $1 AND relname = 'people'", "r")
    assert tables["rows"] == [["people"]]
    columns = await run(
        reader,
        "SELECT attname, attalign, attmissingval FROM pg_attribute"
        " WHERE attrelid = 'people'::regclass AND attnum = 1",
    )
    assert columns["rows"] == [["id", "i", None]]
    everything = await run(reader, "SELECT * FROM pg_attribute WHERE attrelid = 'people'::regclass", limit=50)
    assert everything["row_count"] > 8 and "attmissingval" in everything["columns"]
    stats = await run(reader, "SELECT * FROM pg_stats")
    assert "most_common_vals" in stats["columns"]


async def test_a_value_the_driver_cannot_read_is_a_clear_error(reader: QueryDatabaseTool) -> None:
    """A whole pg_class row holds an aclitem[], which has no binary form: the model is told
    to cast, and the call is not retried as if the connection had been lost."""
    error = await failure(reader, "SELECT c FROM pg_class c WHERE relname = 'people'")
    assert error.code == "query_invalid"
    assert "::text" in error.message
    assert (await run(reader, "SELECT c::text FROM pg_class c WHERE relname = 'people'"))["row_count"] == 1


async def test_no_value_becomes_a_character_jsonb_cannot_store(reader: QueryDatabaseTool) -> None:
    """`json` (unlike jsonb) keeps a `\\u0000` escape; as a parsed value it would be a NUL."""
    result = await run(reader, 'SELECT \'{"k\\u0000": "v\\u0000"}\'::json AS doc, \'"\\u0000"\'::json AS s')
    assert result["rows"] == [['{"k\\u0000": "v\\u0000"}', '"\\u0000"']]
    assert "\x00" not in json.dumps(result, ensure_ascii=False)


async def test_a_large_query_max_bytes_still_fits_a_tool_result(target: Target) -> None:
    """The activity cuts results at 100,000 characters; the tool never returns more."""
    tool = QueryDatabaseTool.from_settings(
        Settings(
            assistant_env="development",
            query_database_url=SecretStr(target.reader_dsn),
            query_max_bytes=10 * 1024 * 1024,
        )
    )
    assert tool is not None
    try:
        result = await run(tool, "SELECT repeat('é', 3000) FROM generate_series(1, 1000)", limit=1000)
    finally:
        await tool.aclose()
    assert result["truncated"] is True and result["row_count"] > 10
    assert len(json.dumps(result, ensure_ascii=False)) < 100_000


async def test_a_row_larger_than_the_cap_is_a_clear_error(target: Target) -> None:
    async with query_tool(target.reader_dsn, max_bytes=1 * KIB) as tool:
        error = await failure(tool, "SELECT " + ", ".join(f"repeat('x', 200) AS c{n}" for n in range(10)))
    assert error.code == "query_result_too_large" and "QUERY_MAX_BYTES" in error.message


# ---- parameters ---------------------------------------------------------------------------


async def test_parameters_are_bound_by_the_server(reader: QueryDatabaseTool) -> None:
    hostile = "x' OR 1=1 --"
    assert (await run(reader, "SELECT id FROM people WHERE name = $1", hostile))["rows"] == []
    assert (await run(reader, "SELECT $1::text", hostile))["rows"] == [[hostile]]
    assert (await run(reader, "SELECT id FROM people WHERE name = $1", "Ada"))["rows"] == [[1]]
    assert (await run(reader, "SELECT $1 || ''", "'); DROP TABLE people; --"))["rows"] == [
        ["'); DROP TABLE people; --"]
    ]


async def test_typed_parameters(reader: QueryDatabaseTool) -> None:
    result = await run(
        reader,
        "SELECT id FROM people WHERE ident = $1 AND joined = $2 AND score = $3 AND prefs = $4"
        " AND tags = $5 AND born = $6 AND id = ANY($7) AND $8 AND score > $9 AND id::bigint < $10",
        "11111111-2222-3333-4444-555555555555",
        "2024-03-01T10:00:00+01:00",
        "12.500",
        {"theme": "dark"},
        ["red", "blue"],
        "1815-12-10",
        [1, 3],
        True,
        2.5,
        "9007199254740993",
    )
    assert result["rows"] == [[1]]
    echoed = await run(
        reader,
        "SELECT $1::numeric, $2::interval, $3::bytea, $4::jsonb, $5::json, $6::timestamp, $7::time,"
        " $8::date[], $9::int8",
        0.1,
        "P1Y2M3DT4H5M6.5S",
        "\\x00ff",
        "[1, 2]",
        "plain words",
        "infinity",
        "23:59:59.5",
        ["2024-02-29", None],
        "9007199254740993",
    )
    assert echoed["rows"] == [
        ["0.1", "P1Y2M3DT4H5M6.5S", "\\x00ff", [1, 2], "plain words", "infinity", "23:59:59.5",
         ["2024-02-29", None], "9007199254740993"]
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("query", "parameters", "says"),
    [
        ("SELECT $1::int", [], "1 placeholder(s) ($1) but 0 parameter(s)"),
        ("SELECT 1", [5], "0 placeholder(s) (none) but 1 parameter(s)"),
        ("SELECT $1::int", ["abc"], "parameter $1 (int4): expected an integer"),
        ("SELECT $1::bool", ["yes"], "invalid input for query argument $1"),
        ("SELECT $2::date, $1::int", [1, 20240101], "parameter $2 (date): expected an ISO 8601 string"),
        ("SELECT $1::timestamptz", ["next tuesday"], "invalid input for query argument $1"),
        ("SELECT $1::inet", ["not an address"], "$1::text::inet"),
        ("SELECT $1::int[]", [5], "parameter $1 (int4[]): expected a list"),
        ("SELECT $1::bytea", ["\\xzz"], "pairs of hex digits"),
    ],
)
async def test_parameter_errors_name_the_parameter(
    reader: QueryDatabaseTool, query: str, parameters: list[Any], says: str
) -> None:
    error = await failure(reader, query, *parameters)
    assert error.code == "invalid_arguments"
    assert says in error.message


# ---- errors -------------------------------------------------------------------------------


async def test_query_errors(reader: QueryDatabaseTool) -> None:
    syntax = await failure(reader, "SELEC id FROM people")
    assert syntax.code == "query_invalid"
    assert (
        "42601" in syntax.message
        and 'at or near "SELEC"' in syntax.message
        and "character 1" in syntax.message
    )
    stacked = await failure(reader, "SELECT 1; SELECT 2")
    assert stacked.code == "query_invalid" and "one SQL statement" in stacked.message
    unknown = await failure(reader, "SELECT * FROM nowhere")
    assert unknown.code == "query_invalid" and 'relation "nowhere" does not exist' in unknown.message
    hint = await failure(reader, "SELECT no_such_function(1)")
    assert hint.code == "query_invalid" and "hint:" in hint.message
    hidden = await failure(reader, "SELECT * FROM hidden")
    assert hidden.code == "query_not_permitted" and "permission denied" in hidden.message
    division = await failure(reader, "SELECT 1 / 0")
    assert division.code == "query_failed" and "22012" in division.message
    with pytest.raises(ToolFailed) as empty:
        reader.check({"query": "   "})
    assert empty.value.code == "invalid_arguments"


async def test_lock_timeout_is_query_locked(target: Target) -> None:
    holder = await asyncpg.connect(target.admin_dsn)
    try:
        async with holder.transaction():
            await holder.execute("LOCK TABLE people IN ACCESS EXCLUSIVE MODE")
            async with query_tool(target.reader_dsn, query_timeout=5) as tool:
                started = time.monotonic()
                error = await failure(tool, "SELECT count(*) FROM people")
                elapsed = time.monotonic() - started
        assert error.code == "query_locked" and "55P03" in error.message
        assert 1.5 < elapsed < 4  # lock_timeout is 2 s, before the 5 s statement timeout
    finally:
        await holder.close()


async def test_unreachable_database_is_temporary(target: Target) -> None:
    async with query_tool(f"postgresql://nobody:x@127.0.0.1:{free_port()}/nothing") as tool:
        with pytest.raises(ToolTemporarilyFailed, match="unreachable"):
            await run(tool, "SELECT 1")


async def test_wrong_password_is_a_clear_permanent_failure(target: Target) -> None:
    if not target.passwords_enforced:
        pytest.skip("pg_hba.conf of this server cannot be changed here, so passwords are not checked")
    wrong = dsn_for(target.reader_dsn, user=target.reader, password="wrong", database=target.database)
    async with query_tool(wrong) as tool:
        error = await failure(tool, "SELECT 1")
    assert error.code == "query_database_unavailable"
    assert "28P01" in error.message and "QUERY_DATABASE_URL" in error.message and "wrong" not in error.message


async def test_unknown_database_is_a_clear_permanent_failure(target: Target) -> None:
    missing = dsn_for(target.reader_dsn, user=target.reader, password=READER_PASSWORD, database="no_such_db")
    async with query_tool(missing) as tool:
        error = await failure(tool, "SELECT 1")
    assert error.code == "query_database_unavailable" and "3D000" in error.message


class FreezingProxy:
    """A loopback TCP relay to PostgreSQL that can stop passing the server's replies."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.flowing.set()
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relay(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        server_in, server_out = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            await asyncio.gather(
                self._pipe(client_in, server_out, held=False),
                self._pipe(server_in, client_out, held=True),
            )
        finally:
            for writer in (client_out, server_out):
                writer.close()
            self._tasks.discard(task)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, held: bool) -> None:
        while data := await source.read(65536):
            if held:
                await self.flowing.wait()
            sink.write(data)
            await sink.drain()
        sink.close()


async def test_client_deadline_ends_a_call_the_server_never_answers(
    target: Target, admin: asyncpg.Connection
) -> None:
    proxy = FreezingProxy(urlsplit(target.reader_dsn).port or 5432)
    await proxy.start()
    try:
        relayed = urlunsplit(
            urlsplit(target.reader_dsn)._replace(
                netloc=f"{target.reader}:{READER_PASSWORD}@127.0.0.1:{proxy.port}"
            )
        )
        async with query_tool(relayed, query_timeout=1) as tool:
            first_pid = (await run(tool, "SELECT pg_backend_pid()"))["rows"][0][0]
            proxy.flowing.clear()
            started = time.monotonic()
            error = await failure(tool, "SELECT 1")
            elapsed = time.monotonic() - started
            proxy.flowing.set()
            assert error.code == "query_timeout"
            assert 2.5 < elapsed < 5  # QUERY_TIMEOUT (1 s) plus the 2 s grace
            # The interrupted connection was closed, not reused: the next call has a new session.
            assert (await run(tool, "SELECT pg_backend_pid()"))["rows"][0][0] != first_pid
        for _ in range(100):
            if not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", first_pid):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the abandoned session is still open on the server")
    finally:
        await proxy.stop()


async def test_a_call_cancelled_mid_query_leaves_its_connection_clean(
    target: Target, admin: asyncpg.Connection
) -> None:
    """The activity's task cancelled while PostgreSQL runs the statement (and holds a lock it
    took): the session is cancelled and reset before it serves the next call."""
    async with query_tool(target.reader_dsn, query_timeout=10) as tool:
        pid = (await run(tool, "SELECT pg_backend_pid()"))["rows"][0][0]
        call = asyncio.ensure_future(run(tool, "SELECT pg_advisory_lock(4243), pg_sleep(30)"))
        for _ in range(100):
            state = await admin.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid)
            if state == "active":
                break
            await asyncio.sleep(0.02)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        started = time.monotonic()
        after = await run(
            tool,
            "SELECT pg_backend_pid(), current_setting('transaction_read_only'),"
            " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())",
        )
        assert time.monotonic() - started < 2  # not the 30 s sleep
        assert after["rows"] == [[pid, "on", 0]]
        assert await admin.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid) == "idle"


async def test_calls_at_once_share_the_pool(target: Target) -> None:
    tool = QueryDatabaseTool(target.reader_dsn, timeout=5, max_bytes=64 * KIB, pool_size=2)
    try:
        results = await asyncio.gather(
            *(run(tool, "SELECT pg_sleep(0.3), $1::int", n) for n in range(5)), return_exceptions=True
        )
    finally:
        await tool.aclose()
    assert [r["rows"] for r in results if isinstance(r, dict)] == [[[None, n]] for n in range(5)]


# ---- configuration and contract -----------------------------------------------------------


def test_from_settings() -> None:
    assert (
        QueryDatabaseTool.from_settings(Settings(assistant_env="development", query_database_url=None))
        is None
    )
    tool = QueryDatabaseTool.from_settings(
        Settings(
            assistant_env="development",
            query_database_url=SecretStr("postgresql://r:pw@127.0.0.1:5432/shop"),
            query_timeout=timedelta(seconds=3),
            query_max_bytes=1000,
        )
    )
    assert tool is not None and tool.spec.name == "query_database"
    with pytest.raises(ConfigurationError):
        QueryDatabaseTool.from_settings(
            Settings(assistant_env="development", query_database_url=SecretStr("mysql://x@y/z"))
        )
    with pytest.raises(ConfigurationError, match="QUERY_TIMEOUT"):
        QueryDatabaseTool.from_settings(
            Settings(
                query_database_url=SecretStr("postgresql://r:pw@127.0.0.1:5432/shop"),
                query_timeout=timedelta(minutes=5),
            )
        )


def test_schema_bounds_match_the_contract() -> None:
    spec = QueryDatabaseTool("postgresql://x@127.0.0.1/x", timeout=1, max_bytes=1000).spec
    check = SchemaCheck(spec.input_schema)
    assert spec.requires_confirmation is False
    assert check.errors({"query": "SELECT 1"}) == []
    assert (
        check.errors({"query": "SELECT $1", "parameters": [1, "a", None, [1], {"a": 1}], "limit": 1000}) == []
    )
    assert check.errors({"query": "SELECT 1", "limit": 0})
    assert check.errors({"query": "SELECT 1", "limit": 1001})
    assert check.errors({"query": ""})
    assert check.errors({"query": "SELECT 1", "params": []})
    assert spec.input_schema["properties"]["limit"]["default"] == 100
