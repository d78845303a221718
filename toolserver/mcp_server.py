"""The served tools as an MCP server (the SDK's low-level `Server`), for stdio and streamable HTTP.

Annotations tell clients what a tool does: a tool that needs approval (send_email) is
`destructiveHint: true`; every other built-in tool only reads (`readOnlyHint: true`). A tool's
own failure is a result with `isError: true` and `{code, message}` as structured content, so a
model can read it; an unknown tool name is a protocol error, as the MCP specification asks.
"""

import json
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from mcp import types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from core.ids import new_id
from tools.base import ToolFailed, ToolSpec, ToolTemporarilyFailed
from toolserver.catalog import ServedTools

SERVER_NAME = "durable-assistant"


def _version() -> str:
    try:
        return version("durable-assistant")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0+source"


SERVER_VERSION = _version()


def build_mcp_server(tools: ServedTools) -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(
            tools=[_mcp_tool(spec, tools.needs_approval(spec.name)) for spec in tools.specs()]
        )

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        try:
            result = await tools.call(params.name, params.arguments or {}, new_id("call"))
        except ToolFailed as err:
            if err.code == "unknown_tool":
                raise MCPError(types.INVALID_PARAMS, err.message) from err
            return _error(err.as_result())
        except ToolTemporarilyFailed as err:
            return _error(
                {
                    "code": ToolTemporarilyFailed.code,
                    "message": f"{err}; the call may work if tried again later",
                }
            )
        return types.CallToolResult(
            content=[types.TextContent(text=json.dumps(result, ensure_ascii=False))],
            structured_content=result if isinstance(result, dict) else None,
        )

    return Server(SERVER_NAME, version=SERVER_VERSION, on_list_tools=list_tools, on_call_tool=call_tool)


async def serve_stdio(tools: ServedTools) -> None:
    """MCP on stdin/stdout until the client closes stdin (the SDK points fd 1 at stderr meanwhile)."""
    server = build_mcp_server(tools)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def _mcp_tool(spec: ToolSpec, needs_approval: bool) -> types.Tool:
    annotations = (
        types.ToolAnnotations(read_only_hint=False, destructive_hint=True)
        if needs_approval
        else types.ToolAnnotations(read_only_hint=True)
    )
    return types.Tool(
        name=spec.name, description=spec.description, input_schema=spec.input_schema, annotations=annotations
    )


def _error(failure: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(text=json.dumps(failure, ensure_ascii=False))],
        structured_content=failure,
        is_error=True,
    )
