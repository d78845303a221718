"""The tools every test MCP server offers, one for each behaviour a client must handle:
annotations, slow and hanging calls, huge and failing results, images, a tool list that
changes while connected, a process that dies mid-call, and the environment it was given."""

import asyncio
import base64
import os
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations

# A 1x1 transparent PNG.
PIXEL_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)
BIG_RESULT_CHARS = 5_000_000


def build_server(variant: str = "v1") -> MCPServer:
    """The test server; `variant` "v2" describes `add` differently (a changed definition)."""
    server = MCPServer("test-tools", version="1.0")
    stats: dict[str, int] = {"cancelled": 0}

    add_description = "Adds two integers." if variant == "v1" else "Adds two integers, now with more care."

    @server.tool(description=add_description, annotations=ToolAnnotations(read_only_hint=True))
    def add(a: int, b: int) -> int:
        return a + b

    @server.tool(
        description="Deletes a record for good.",
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True),
    )
    def delete_record(record_id: str) -> str:
        return f"deleted {record_id}"

    @server.tool(description="Answers after `seconds` seconds.")
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool(description="Never answers; counts the calls the client cancelled.")
    async def hang() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stats["cancelled"] += 1
            raise
        return "unreachable"

    @server.tool(description="How many hanging calls were cancelled by the client.")
    def cancelled_calls() -> int:
        return stats["cancelled"]

    @server.tool(description="Returns 5 MB of text.")
    def big() -> str:
        line = "0123456789abcdef" * 4 + "\n"
        return (line * (BIG_RESULT_CHARS // len(line) + 1))[:BIG_RESULT_CHARS]

    @server.tool(description="Always fails.")
    def fail() -> str:
        raise ToolError("the record is locked by another user")

    @server.tool(description="Returns a picture and a caption.")
    def image() -> CallToolResult:
        return CallToolResult(
            content=[
                TextContent(text="a single pixel"),
                ImageContent(data=base64.b64encode(PIXEL_PNG).decode(), mime_type="image/png"),
            ]
        )

    @server.tool(description="Adds a tool named `name` and tells the client its tool list changed.")
    async def grow(name: str, ctx: Context) -> str:
        def echo(text: str) -> str:
            return text

        server.add_tool(echo, name=name, description=f"Echoes its text ({name}).")
        await ctx.session.send_tool_list_changed()
        return f"added {name}"

    @server.tool(description="The Authorization header the call came with (HTTP only).")
    def authorization(ctx: Context) -> str:
        return (ctx.headers or {}).get("authorization", "")

    @server.tool(description="The names of the environment variables the server process has.")
    def environment() -> dict[str, Any]:
        return {"names": sorted(os.environ)}

    @server.tool(description="Ends the server process at once, without an answer.")
    def crash() -> str:
        os._exit(3)

    return server
