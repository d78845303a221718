"""A small database for query_database, read through the role docs/TOOLS.md tells operators
to create (the SQL is taken from the docs, so the docs and the tests cannot drift)."""

import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
READER_PASSWORD = "shop-reader-pw"

SHOP_SQL = """
CREATE TABLE orders (id int PRIMARY KEY, customer text NOT NULL, total numeric(10, 2) NOT NULL,
                     placed_at timestamptz NOT NULL);
INSERT INTO orders VALUES
  (1, 'Ada', 120.50, '2026-11-01 09:00:00+00'),
  (2, 'Grace', 75.00, '2026-11-02 10:30:00+00'),
  (3, 'Ada', 9.99, '2026-11-03 11:45:00+00');
"""


def dsn_for(base: str, *, user: str, password: str | None = None, database: str) -> str:
    """`base` (a server's DSN) logging in as `user` to `database`."""
    parts = urlsplit(base)
    login = f"{user}:{password}" if password else user
    return urlunsplit(parts._replace(netloc=f"{login}@{parts.hostname}:{parts.port}", path=f"/{database}"))


def docs_role_sql(*, database: str, owner: str, reader: str, password: str) -> str:
    """The role setup of docs/TOOLS.md, with its example names replaced."""
    docs = (ROOT / "docs" / "TOOLS.md").read_text()
    section = docs.split("## query_database", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sql\n(.*?)```", section, re.S)
    assert match, "docs/TOOLS.md has no SQL block in its query_database section"
    sql = match.group(1).replace("a-long-random-password", password)
    for example, name in (("shop_owner", owner), ("shop", database), ("assistant_reader", reader)):
        sql = re.sub(rf"\b{example}\b", name, sql)
    return sql


@dataclass(frozen=True)
class ShopDatabase:
    name: str
    reader_dsn: str

    @classmethod
    @contextlib.asynccontextmanager
    async def created(cls, server_dsn: str) -> AsyncIterator["ShopDatabase"]:
        """A fresh database with `orders`, owned by its own role; dropped at the end."""
        suffix = uuid.uuid4().hex[:8]
        database, owner, reader = f"shop_{suffix}", f"shop_owner_{suffix}", f"shop_reader_{suffix}"
        server = await asyncpg.connect(server_dsn)
        try:
            await server.execute(f"CREATE ROLE {owner} LOGIN")
            await server.execute(f"CREATE DATABASE {database} OWNER {owner}")
            admin = await asyncpg.connect(dsn_for(server_dsn, user="postgres", database=database))
            try:
                await admin.execute(f"SET ROLE {owner}")
                await admin.execute(SHOP_SQL)
                await admin.execute("RESET ROLE")
                await admin.execute(
                    docs_role_sql(database=database, owner=owner, reader=reader, password=READER_PASSWORD)
                )
            finally:
                await admin.close()
            yield cls(
                database,
                dsn_for(server_dsn, user=reader, password=READER_PASSWORD, database=database),
            )
        finally:
            await server.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            await server.execute(f"DROP ROLE IF EXISTS {reader}")
            await server.execute(f"DROP ROLE IF EXISTS {owner}")
            await server.close()
