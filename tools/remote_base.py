"""What every tool server connection offers, whatever its protocol (MCP over stdio, MCP over
streamable HTTP, the simple HTTP tool protocol): the tools it has now, whether it is up, and
calls. `tools/remote.py` turns these into the registry's tools (names, pinning, approvals)."""

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

# OpenAI function names: letters, digits, `_` and `-`, at most 64 characters.
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class RemoteTool:
    """A tool as its server describes it."""

    server: str
    name: str  # the server's own name for it (MCP tool name, http-tools slug)
    description: str
    input_schema: dict[str, Any]
    # MCP `destructiveHint: true`, or http-tools `requires_confirmation: true`.
    destructive: bool = False
    annotations: dict[str, Any] = field(default_factory=dict)

    @property
    def qualified_name(self) -> str:
        """`<server>__<tool>`, made a valid function name (other characters become `_`)."""
        return _NOT_IN_NAME.sub("_", f"{self.server}__{self.name}")[:64]


# Called with no arguments whenever a connection's tools or health change.
ChangeListener = Callable[[], None]


class ToolServerConnection(Protocol):
    """One configured tool server, kept connected for the worker's life."""

    name: str

    async def start(self) -> None:
        """Begin connecting (and reconnecting when the server goes away). Returns at once, or
        after the first discovery if that comes quickly; never raises for a server that is down."""

    @property
    def healthy(self) -> bool:
        """Connected now, with a tool list read on this connection."""

    @property
    def problem(self) -> str | None:
        """Why it is not healthy (for operators: "connection refused", "timed out"), else None."""

    def tools(self) -> list[RemoteTool]:
        """The tools of the last successful discovery (kept while the server is down)."""

    def on_change(self, listener: ChangeListener) -> None:
        """Call `listener` after the tool list or the health changes."""

    async def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        """Call `tool` (the server's own name) and return a compact JSON-able result.

        Raises tools.base.ToolFailed for an error the model should read (the tool's own
        error, `isError`, a timeout after the request was sent: `tool_timeout`), and
        tools.base.ToolTemporarilyFailed only when the request surely never reached the
        server (not connected), since a tool call may not be safe to repeat."""

    async def aclose(self) -> None:
        """Stop reconnecting and close the session (ends a stdio server's process)."""
