"""The tool catalog: what workers can run, published for the API to read."""

from typing import Any

from pydantic import BaseModel

from store.db import Pool


class CatalogTool(BaseModel):
    name: str
    description: str
    input_schema: dict[str, Any]
    requires_confirmation: bool
    source: str
    healthy: bool
    # Why it cannot be used now (server down, definition changed); None when it can.
    problem: str | None = None


async def publish(pool: Pool, *, tools: list[CatalogTool]) -> None:
    """Upsert the tools this worker runs (other workers' tools are left alone)."""
    async with pool.acquire() as conn, conn.transaction():
        for tool in tools:
            await conn.execute(
                "INSERT INTO tool_catalog (name, description, input_schema, requires_confirmation,"
                " source, healthy, problem, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, now())"
                " ON CONFLICT (name) DO UPDATE SET description = EXCLUDED.description,"
                " input_schema = EXCLUDED.input_schema,"
                " requires_confirmation = EXCLUDED.requires_confirmation, source = EXCLUDED.source,"
                " healthy = EXCLUDED.healthy, problem = EXCLUDED.problem, updated_at = now()",
                tool.name,
                tool.description,
                tool.input_schema,
                tool.requires_confirmation,
                tool.source,
                tool.healthy,
                tool.problem,
            )


# Workers republish their tools every few seconds; an entry none has refreshed for this
# long belongs to no running worker, so it is shown unhealthy.
FRESH_FOR = "60 seconds"


async def list_tools(pool: Pool) -> list[CatalogTool]:
    rows = await pool.fetch(
        "SELECT name, description, input_schema, requires_confirmation, source,"
        f" healthy AND updated_at > now() - interval '{FRESH_FOR}' AS healthy,"
        f" CASE WHEN updated_at > now() - interval '{FRESH_FOR}' THEN problem"
        "  ELSE 'no running worker offers it' END AS problem"
        " FROM tool_catalog ORDER BY name"
    )
    return [CatalogTool(**dict(r)) for r in rows]


async def get_tool(pool: Pool, *, name: str) -> CatalogTool | None:
    row = await pool.fetchrow(
        "SELECT name, description, input_schema, requires_confirmation, source, healthy, problem"
        " FROM tool_catalog WHERE name = $1",
        name,
    )
    return CatalogTool(**dict(row)) if row else None


async def unknown_names(pool: Pool, *, names: list[str]) -> list[str]:
    """The names that no worker has published, in the order given."""
    known = {r["name"] for r in await pool.fetch("SELECT name FROM tool_catalog WHERE name = ANY($1)", names)}
    return [n for n in names if n not in known]
