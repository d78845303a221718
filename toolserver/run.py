"""`assistant tool-server`: MCP over stdio, or one HTTP server for MCP and the simple protocol."""

import asyncio
import contextlib
import sys

from core.config import Settings
from toolserver.auth import server_key
from toolserver.catalog import ServedTools


def run_tool_server(settings: Settings, *, host: str, port: int, stdio: bool) -> int:
    """Serve until stopped (Ctrl-C, or stdin closed with `stdio`); ConfigurationError if unsafe."""
    if stdio:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_stdio(ServedTools.from_settings(settings)))
        return 0

    import uvicorn

    from toolserver.app import create_app

    configured = settings.tool_server_key.get_secret_value() if settings.tool_server_key else None
    key, generated = server_key(configured, host)
    app = create_app(
        ServedTools.from_settings(settings), key=key, host=host, max_body_bytes=settings.max_request_bytes
    )
    # Operator notes go to stderr, as everything but the protocol does with --stdio.
    if generated:
        print(f"tool server key (shown once; set TOOL_SERVER_KEY to choose it): {key}", file=sys.stderr)
    where = f"[{host}]" if ":" in host else host
    print(
        f"tool server on http://{where}:{port}: MCP at /mcp, simple protocol at /mcp/discover, /mcp/execute",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=5)
    return 0


async def _serve_stdio(tools: ServedTools) -> None:
    from toolserver.mcp_server import serve_stdio

    try:
        await serve_stdio(tools)
    finally:
        await tools.aclose()
