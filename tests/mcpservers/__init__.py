"""MCP servers for tests, built with the SDK's server side and run as child processes."""
