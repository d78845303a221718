"""Tools from tool servers (MCP_CONFIG) as the registry's tools: qualified names, approval
rules, pinned definitions, and health.

A tool is usable when its server is connected and its definition (name, description, input
schema and whether it declares itself destructive) hashes to the pinned one. A definition
seen for the first time is pinned to (trust on first use); one that changes later disables
the tool until an operator runs `assistant tools trust SERVER`, so a server cannot silently
change what an approved tool does, or stop asking for approval.
"""

import asyncio
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from store import pins
from store.db import Executor
from tools.base import ToolContext, ToolFailed, ToolSpec, ToolTemporarilyFailed
from tools.remote_base import ChangeListener, RemoteTool, ToolServerConnection

log = structlog.get_logger(__name__)

# What the model reads of a server's description; the rest is cut.
MAX_DESCRIPTION_CHARS = 2_000


def definition_hash(tool: RemoteTool) -> str:
    """The hash a pin holds: what the model reads and what decides approval."""
    definition = _definition(tool)
    canonical = json.dumps(definition, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _definition(tool: RemoteTool) -> dict[str, Any]:
    return {
        "name": tool.name,
        "description": tool.description,
        "input_schema": tool.input_schema,
        "destructive": tool.destructive,
    }


@dataclass(frozen=True)
class RemoteEntry:
    """One remote tool as the catalog shows it."""

    spec: ToolSpec
    usable: bool
    problem: str | None


class RemoteToolAdapter:
    """The registry's handle on one remote tool; every call goes through the manager, which
    knows the tool's current definition, pin and server health."""

    def __init__(self, manager: "RemoteTools", name: str) -> None:
        self._manager = manager
        self._name = name

    @property
    def spec(self) -> ToolSpec:
        return self._manager.spec_of(self._name)

    def check(self, arguments: dict[str, Any]) -> None:
        """The server checks its own arguments beyond the schema."""

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        return await self._manager.call(self._name, arguments)

    async def aclose(self) -> None:
        """Connections belong to the manager, which closes them."""


@dataclass
class _Known:
    tool: RemoteTool
    connection: ToolServerConnection
    spec: ToolSpec
    schema_problem: str | None
    # Computed once per discovery: the catalog and every model step compare it with the pin.
    definition_hash: str


class RemoteTools:
    """Every configured tool server's connection and tools, for one worker."""

    def __init__(
        self,
        connections: list[ToolServerConnection],
        *,
        needs_approval: Callable[[str, bool], bool] = lambda name, declared: declared,
        sources: dict[str, str] | None = None,
    ) -> None:
        self._connections = connections
        self._needs_approval = needs_approval
        self._sources = sources or {}
        self._known: dict[str, _Known] = {}
        # Pin state by qualified name: the definition hash that is trusted (None: not synced yet).
        self._pinned: dict[str, str] = {}
        self._listeners: list[ChangeListener] = []
        for connection in connections:
            connection.on_change(self._changed)
        self._refresh()

    @property
    def servers(self) -> list[str]:
        return [c.name for c in self._connections]

    async def start(self) -> None:
        """Connect to every server at once; a server that is down only makes its tools unusable."""
        await asyncio.gather(*(connection.start() for connection in self._connections))
        self._refresh()

    def on_change(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        self._refresh()
        for listener in self._listeners:
            listener()

    def _refresh(self) -> None:
        known: dict[str, _Known] = {}
        for connection in self._connections:
            for tool in connection.tools():
                name = tool.qualified_name
                if name in known:
                    log.warning("two remote tools share a name; the second is ignored", tool=name)
                    continue
                known[name] = _Known(
                    tool, connection, self._spec(tool), _schema_problem(tool), definition_hash(tool)
                )
        self._known = known

    def _spec(self, tool: RemoteTool) -> ToolSpec:
        name = tool.qualified_name
        return ToolSpec(
            name=name,
            description=tool.description[:MAX_DESCRIPTION_CHARS],
            input_schema=tool.input_schema,
            requires_confirmation=self._needs_approval(name, tool.destructive),
            source=self._sources.get(tool.server, f"mcp:{tool.server}"),
            policy="remote",
        )

    async def sync_pins(self, db: Executor) -> None:
        """Record what each server offers now and learn which definitions are trusted."""
        pinned: dict[str, str] = {}
        known_now = dict(self._known)
        recorded = await pins.of_names(db, names=list(known_now))
        for name, known in known_now.items():
            pin = recorded.get(name)
            if pin is None or pin.seen_hash != known.definition_hash:  # write only what is new
                pin = await pins.observe(
                    db,
                    name=name,
                    server=known.tool.server,
                    definition_hash=known.definition_hash,
                    definition=_definition(known.tool),
                )
            pinned[name] = pin.pinned_hash
            if pin.changed and self._pinned.get(name) != pin.pinned_hash:
                log.warning(
                    "a tool server changed a pinned tool; it is disabled until trusted",
                    tool=name,
                    server=known.tool.server,
                )
        self._pinned = pinned

    def _problem(self, known: _Known) -> str | None:
        if known.schema_problem is not None:
            return known.schema_problem
        pinned = self._pinned.get(known.spec.name)
        if pinned is None:
            return "its definition has not been checked against its pin yet"
        if pinned != known.definition_hash:
            return (
                f"the server {known.tool.server!r} changed this tool's definition since it was "
                f"pinned; an operator must run `assistant tools trust {known.tool.server}`"
            )
        if not known.connection.healthy:
            reason = known.connection.problem or "not connected"
            return f"the tool server {known.tool.server!r} is unavailable: {reason}"
        return None

    def entries(self) -> list[RemoteEntry]:
        found = []
        for known in self._known.values():
            problem = self._problem(known)
            found.append(RemoteEntry(spec=known.spec, usable=problem is None, problem=problem))
        return found

    def get(self, name: str) -> RemoteToolAdapter | None:
        return RemoteToolAdapter(self, name) if name in self._known else None

    def spec_of(self, name: str) -> ToolSpec:
        return self._known[name].spec

    async def call(self, name: str, arguments: dict[str, Any]) -> Any:
        known = self._known.get(name)
        if known is None:
            raise ToolTemporarilyFailed(f"no tool server offers {name} now")
        problem = self._problem(known)
        if problem is not None and known.connection.healthy:
            raise ToolFailed("tool_disabled", f"{name} cannot be used: {problem}")
        # A server that is down is the connection's to report: retried, as nothing was sent.
        return await known.connection.call(known.tool.name, arguments)

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._connections), return_exceptions=True)


def _schema_problem(tool: RemoteTool) -> str | None:
    """Why the tool's input schema cannot be used to check arguments, or None."""
    schema = tool.input_schema
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        return "its input schema does not describe an object"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as err:
        return f"its input schema is invalid: {err.message}"
    return None
