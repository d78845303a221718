"""The built-in tools as the tool server serves them: the configured ones, run without a database.

A tool that needs a person's approval (send_email) is listed, marked as such, but never run
here. Approval lives in the assistant's own API: a turn stops at the call until someone
approves it (`POST /api/v1/approvals/{id}`), and the outbox that makes a send happen once needs
the database. A remote caller of this server has neither, and a token scheme would only move
the approval into whatever program holds the token; so such a call is an `approval_required`
tool error. The registry is built with no database pool for the same reason: only those tools
would use it.
"""

import asyncio
from typing import Any

import structlog

from core.config import Settings
from tools.base import ToolContext, ToolFailed, ToolSpec, ToolTemporarilyFailed
from tools.registry import ToolRegistry, build_registry

log = structlog.get_logger(__name__)

# Calls running at once across every client and batch; the rest wait their turn.
MAX_CONCURRENT_CALLS = 8

_APPROVAL_REQUIRED = (
    "{name} needs a person's approval, which this tool server cannot ask for: it lists the tool "
    "but never runs it. Ask the assistant through its own API instead (send a message in a "
    "conversation; the call waits until someone approves it with POST /api/v1/approvals/{{id}})."
)


class ServedTools:
    """The tools to list and the one way to run them, shared by MCP and the simple protocol."""

    def __init__(self, registry: ToolRegistry) -> None:
        self._registry = registry
        self._held = {spec.name for spec in registry.specs() if spec.requires_confirmation}
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_CALLS)

    @classmethod
    def from_settings(cls, settings: Settings) -> "ServedTools":
        return cls(build_registry(settings, pool=None))

    def specs(self) -> list[ToolSpec]:
        return self._registry.specs()

    def needs_approval(self, name: str) -> bool:
        return name in self._held

    async def call(self, name: str, arguments: dict[str, Any], call_id: str) -> Any:
        """The tool's result.

        Raises ToolFailed for what the caller should read (unknown tool, invalid arguments,
        approval required, the tool's own error) and ToolTemporarilyFailed for a failure that
        may pass if the call is tried again later."""
        tool = self._registry.get(name)
        if tool is None:
            raise ToolFailed("unknown_tool", f"there is no tool named {name!r} on this server")
        if name in self._held:
            raise ToolFailed("approval_required", _APPROVAL_REQUIRED.format(name=name))
        self._registry.validate(name, arguments)
        context = ToolContext(
            turn_id="tool-server",
            tool_call_id=call_id,
            user_id="tool-server",
            idempotency_key=f"tool-server:{call_id}",
        )
        async with self._slots:
            try:
                return await tool.run(arguments, context)
            except (ToolFailed, ToolTemporarilyFailed):
                raise
            except Exception as err:  # a tool's bug is the caller's news, not the server's end
                log.exception("tool raised", tool=name, call_id=call_id)
                raise ToolFailed("tool_failed", f"{name} failed unexpectedly") from err

    async def aclose(self) -> None:
        await self._registry.aclose()
