"""The tool servers of MCP_CONFIG, each behind the connection its protocol needs."""

from tools.http_tools import HttpToolsConnection
from tools.mcp_config import McpConfig
from tools.mcp_session import McpConnection
from tools.remote import RemoteTools
from tools.remote_base import ToolServerConnection


def connect_tool_servers(config: McpConfig) -> RemoteTools:
    """A manager for every enabled server of the configuration."""
    connections: list[ToolServerConnection] = []
    sources: dict[str, str] = {}
    for server in config.servers:
        if server.kind == "http-tools":
            connections.append(HttpToolsConnection.from_config(server))
            sources[server.name] = f"http:{server.name}"
        else:
            connections.append(McpConnection(server))
            sources[server.name] = f"mcp:{server.name}"
    return RemoteTools(connections, needs_approval=config.needs_approval, sources=sources)
