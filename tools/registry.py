"""The tools a worker can run: built-in ones from the configuration, and those of tool servers."""

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import structlog
from jsonschema.exceptions import SchemaError

from core.config import Settings
from store.db import Executor
from tools.base import InvalidArguments, SchemaCheck, Tool, ToolContext, ToolFailed, ToolSpec
from tools.remote import RemoteTools
from tools.remote_base import ChangeListener

log = structlog.get_logger(__name__)


class ToolRegistry:
    """Name → tool, with argument validation against each tool's schema.

    Built-in tools are fixed for the worker's life; tools of tool servers (`remote`) come and
    go with their servers, so lookups ask `remote` each time."""

    def __init__(self, tools: list[Tool], remote: RemoteTools | None = None) -> None:
        self._tools = {tool.spec.name: tool for tool in tools}
        self._remote = remote
        # By name and schema: a server may change a tool's schema while the worker runs.
        self._checks: dict[tuple[str, str], SchemaCheck] = {}
        for tool in tools:
            self._check_for(tool.spec)

    async def start(self) -> None:
        """Connect to the tool servers (the built-in tools need nothing)."""
        if self._remote is not None:
            await self._remote.start()

    def on_change(self, listener: ChangeListener) -> None:
        """Call `listener` whenever the remote tools or their health change."""
        if self._remote is not None:
            self._remote.on_change(listener)

    async def sync(self, db: Executor) -> None:
        """Record the remote tools' definitions against their pins (see tools/remote.py)."""
        if self._remote is not None:
            await self._remote.sync_pins(db)

    def specs(self) -> list[ToolSpec]:
        """The tools that can be used now: every built-in one, and remote ones that are usable."""
        usable = [e.spec for e in self._remote.entries() if e.usable] if self._remote else []
        return [tool.spec for tool in self._tools.values()] + usable

    def catalog(self) -> list[tuple[ToolSpec, str | None]]:
        """Every tool with why it cannot be used now (None when it can), for the catalog."""
        entries: list[tuple[ToolSpec, str | None]] = [(t.spec, None) for t in self._tools.values()]
        if self._remote is not None:
            entries += [(e.spec, e.problem) for e in self._remote.entries() if e.spec.name not in self._tools]
        return entries

    def get(self, name: str) -> Tool | None:
        """The tool of that name, usable now or not (running it says why not)."""
        tool = self._tools.get(name)
        if tool is None and self._remote is not None:
            return self._remote.get(name)
        return tool

    def for_conversation(self, names: list[str] | None) -> list[ToolSpec]:
        """The tools a conversation may use now: all when `names` is None, else those named."""
        usable = self.specs()
        if names is None:
            return usable
        wanted = set(names)
        return [spec for spec in usable if spec.name in wanted]

    async def aclose(self) -> None:
        """Close every tool's kept connections; one failing does not keep the others open."""
        for tool in self._tools.values():
            try:
                await tool.aclose()
            except Exception:
                log.exception("closing a tool failed", tool=tool.spec.name)
        if self._remote is not None:
            await self._remote.aclose()

    def validate(self, name: str, arguments: dict[str, Any]) -> None:
        """Raise InvalidArguments unless the arguments fit the tool's schema and checks."""
        tool = self.get(name)
        if tool is None:
            raise InvalidArguments(f"there is no tool named {name!r}")
        try:
            check = self._check_for(tool.spec)
        except SchemaError as err:  # a tool server's schema; ours are checked at start
            raise ToolFailed("tool_disabled", f"{name} cannot be used: its input schema is invalid") from err
        errors = check.errors(arguments)
        if errors:
            raise InvalidArguments(f"invalid arguments for {name}: {'; '.join(errors)}", errors)
        tool.check(arguments)

    def _check_for(self, spec: ToolSpec) -> SchemaCheck:
        key = (spec.name, json.dumps(spec.input_schema, sort_keys=True, default=str))
        check = self._checks.get(key)
        if check is None:
            check = self._checks[key] = SchemaCheck(spec.input_schema)
        return check


def build_registry(settings: Settings, pool: Any, *, tool_servers: bool = False) -> ToolRegistry:
    """Every built-in tool whose configuration is present (fetch_page needs none), and with
    `tool_servers` the servers of MCP_CONFIG (connected by `ToolRegistry.start`)."""
    from tools.email import SmtpConfig
    from tools.fetch_page import FetchPageTool
    from tools.query_database import QueryDatabaseTool
    from tools.search_emails import SearchEmailsTool
    from tools.web_search import WebSearchTool

    tools: list[Tool] = []
    smtp = SmtpConfig.from_settings(settings)
    if smtp is not None:
        from tools.send_email import SendEmailTool

        tools.append(SendEmailTool(smtp, pool))
    for configured in (
        SearchEmailsTool.from_settings(settings),
        QueryDatabaseTool.from_settings(settings),
        WebSearchTool.from_settings(settings),
        FetchPageTool.from_settings(settings),
    ):
        if configured is not None:
            tools.append(configured)
    remote = None
    if tool_servers and settings.mcp_config is not None:
        from tools.mcp_config import load_mcp_config
        from tools.servers import connect_tool_servers

        config = load_mcp_config(settings.mcp_config)
        tools = [_with_approval_rule(tool, config.needs_approval) for tool in tools]
        remote = connect_tool_servers(config)
    log.info("tools available", tools=[t.spec.name for t in tools])
    return ToolRegistry(tools, remote)


def _with_approval_rule(tool: Tool, needs_approval: Callable[[str, bool], bool]) -> Tool:
    """`tool` with MCP_CONFIG's approval rule for it; turning approval off is always logged."""
    declared = tool.spec.requires_confirmation
    wanted = needs_approval(tool.spec.name, declared)
    if wanted == declared:
        return tool
    if declared:
        log.warning(
            "approval turned off by MCP_CONFIG: this tool runs without a person's approval",
            tool=tool.spec.name,
        )
    return _ApprovalOverride(tool, replace(tool.spec, requires_confirmation=wanted))


class _ApprovalOverride:
    """A built-in tool whose need for approval the operator changed; everything else is its own."""

    def __init__(self, tool: Tool, spec: ToolSpec) -> None:
        self._tool = tool
        self._spec = spec

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    def check(self, arguments: dict[str, Any]) -> None:
        self._tool.check(arguments)

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        return await self._tool.run(arguments, context)

    async def aclose(self) -> None:
        await self._tool.aclose()
