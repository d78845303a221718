"""The tools a worker can run, built once from the configuration, and their validation."""

from typing import Any

import structlog

from core.config import Settings
from tools.base import InvalidArguments, SchemaCheck, Tool, ToolSpec

log = structlog.get_logger(__name__)


class ToolRegistry:
    """Name → tool, with argument validation against each tool's schema."""

    def __init__(self, tools: list[Tool]) -> None:
        self._tools = {tool.spec.name: tool for tool in tools}
        self._checks = {tool.spec.name: SchemaCheck(tool.spec.input_schema) for tool in tools}

    def specs(self) -> list[ToolSpec]:
        return [tool.spec for tool in self._tools.values()]

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def for_conversation(self, names: list[str] | None) -> list[ToolSpec]:
        """The tools a conversation may use now: all when `names` is None, else those named."""
        if names is None:
            return self.specs()
        return [self._tools[n].spec for n in names if n in self._tools]

    async def aclose(self) -> None:
        """Close every tool's kept connections; one failing does not keep the others open."""
        for tool in self._tools.values():
            try:
                await tool.aclose()
            except Exception:
                log.exception("closing a tool failed", tool=tool.spec.name)

    def validate(self, name: str, arguments: dict[str, Any]) -> None:
        """Raise InvalidArguments unless the arguments fit the tool's schema and checks."""
        errors = self._checks[name].errors(arguments)
        if errors:
            raise InvalidArguments(f"invalid arguments for {name}: {'; '.join(errors)}", errors)
        self._tools[name].check(arguments)


def build_registry(settings: Settings, pool: Any) -> ToolRegistry:
    """Every built-in tool whose configuration is present (fetch_page needs none)."""
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
    log.info("tools available", tools=[t.spec.name for t in tools])
    return ToolRegistry(tools)
