"""`assistant tool-server`: the built-in tools served to other programs, over MCP (stdio or
streamable HTTP) and over the simple HTTP tool protocol (API.md, "Tool servers")."""
