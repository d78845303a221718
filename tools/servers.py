"""The tool servers of MCP_CONFIG, each behind the connection its protocol needs."""

from pathlib import Path

from tools.http_tools import HttpToolsConnection
from tools.mcp_config import load_mcp_config
from tools.mcp_session import McpConnection
from tools.remote import RemoteTools
from tools.remote_base import ToolServerConnection


def connect_tool_servers(path: Path) -> RemoteTools:
    """A manager for every enabled server of the file (ConfigurationError if it is wrong)."""
    config = load_mcp_config(path)
    connections: list[ToolServerConnection] = []
    sources: dict[str, str] = {}
    for server in config.servers:
        if server.kind == "http-tools":
            connections.append(HttpToolsConnection.from_config(server))
            sources[server.name] = f"http:{server.name}"
        else:
            connections.append(McpConnection(server))
            sources[server.name] = f"mcp:{server.name}"
    return RemoteTools(connections, requires_confirmation=config.requires_confirmation, sources=sources)
