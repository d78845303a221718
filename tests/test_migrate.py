"""`assistant migrate`: idempotent, recorded, and safe when two processes run it at once."""

import asyncio
import sys
import uuid

import asyncpg

from store.migrate import migration_files
from tests.conftest import ROOT, subprocess_env


async def _migrate(env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "migrate", env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode().strip()


async def test_two_concurrent_migrations_apply_each_file_once(settings, pool):
    name = f"mig_{uuid.uuid4().hex[:8]}"
    await pool.execute(f'CREATE DATABASE "{name}"')
    url = settings.database_url.rsplit("/", 1)[0] + f"/{name}"
    env = subprocess_env(settings, DATABASE_URL=url)
    results = await asyncio.gather(_migrate(env), _migrate(env))
    assert [code for code, _ in results] == [0, 0]
    expected = len(migration_files())
    # One process applied everything, the other (waiting on the lock) found nothing to do.
    summaries = sorted(out.split(":")[0] for _, out in results)
    assert summaries == ["applied 0 migration(s)", f"applied {expected} migration(s)"]
    conn = await asyncpg.connect(url)
    try:
        recorded = [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations ORDER BY name")]
        assert recorded == [n for n, _ in migration_files()]
        assert (
            await conn.fetchval("SELECT count(*) FROM information_schema.tables WHERE table_name = 'turns'")
            == 1
        )
    finally:
        await conn.close()
    assert await _migrate(env) == (0, "applied 0 migration(s)")
    await pool.execute(f'DROP DATABASE "{name}"')
