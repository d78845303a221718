"""A low-level SDK server over stdio whose tool list comes in pages (`--tools N`, 100 a page):
`python -m tests.mcpservers.paged_server --tools 250`."""

import argparse

import anyio
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.types import (
    CallToolRequestParams,
    CallToolResult,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
    Tool,
)

PAGE_SIZE = 100


def build_server(count: int) -> Server:
    tools = [
        Tool(name=f"tool_{i:03d}", description=f"Tool number {i}.", input_schema={"type": "object"})
        for i in range(count)
    ]

    async def list_tools(ctx: object, params: PaginatedRequestParams | None) -> ListToolsResult:
        start = int(params.cursor) if params is not None and params.cursor else 0
        end = start + PAGE_SIZE
        return ListToolsResult(tools=tools[start:end], next_cursor=str(end) if end < len(tools) else None)

    async def call_tool(ctx: object, params: CallToolRequestParams) -> CallToolResult:
        return CallToolResult(content=[TextContent(text=f"{params.name} ran")])

    return Server("paged", on_list_tools=list_tools, on_call_tool=call_tool)


async def serve(count: int) -> None:
    server = build_server(count)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tools", type=int, default=250)
    anyio.run(serve, parser.parse_args().tools)


if __name__ == "__main__":
    main()
