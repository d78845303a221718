"""MCP_CONFIG: the tool servers a worker connects to, in the `mcpServers` shape MCP clients use.

Every mistake is a ConfigurationError naming the file, the server and the field, so an
operator finds it at start rather than when a tool is first called. Values are never quoted in
messages: headers and environment variables hold tokens. `${VAR}` and `${VAR:-default}` are
taken from the environment in commands, arguments, environment values, working directories,
URLs and header values; a relative `cwd` is relative to the file's directory.

`type` may be left out (`command` means stdio, `url` streamable HTTP) or spelled as other MCP
clients write it (`stdio`, `http`, `streamable-http`, `streamableHttp`, and ours, `http-tools`);
the SSE transport, deprecated by MCP, is refused with a message saying so. `"enabled": false`
(or `"disabled": true`) turns a server off: its shape is still checked, its variables are not
expanded. `timeout` is the seconds one call may take (default 60).
"""

import fnmatch
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from core.errors import ConfigurationError

ServerKind = Literal["stdio", "http", "http-tools"]

DEFAULT_TIMEOUT = 60.0
# The `remote` activity policy (workflows/policies.py) allows 11 minutes per attempt.
MAX_TIMEOUT = 600.0
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
# `${VAR}` or `${VAR:-default}`; any other `${` is a mistake worth reporting.
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# The spellings of `type` other MCP clients write, by the transport they mean.
_TYPES: dict[str, ServerKind] = {
    "stdio": "stdio",
    "http": "http",
    "streamable-http": "http",
    "streamableHttp": "http",
    "http-tools": "http-tools",
}
_COMMON_KEYS = {"type", "timeout", "enabled", "disabled"}
_KEYS: dict[ServerKind, set[str]] = {
    "stdio": _COMMON_KEYS | {"command", "args", "env", "cwd"},
    "http": _COMMON_KEYS | {"url", "headers"},
    "http-tools": _COMMON_KEYS | {"url", "headers"},
}


@dataclass(frozen=True)
class ServerConfig:
    """One tool server of the file, with every `${VAR}` already expanded."""

    name: str
    kind: ServerKind
    command: str | None = None
    args: list[str] = field(default_factory=list)
    # Secrets live here and in `headers`: kept out of repr, so out of logs and tracebacks.
    env: dict[str, str] = field(default_factory=dict, repr=False)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    timeout: float = DEFAULT_TIMEOUT  # seconds a call may take


@dataclass(frozen=True)
class McpConfig:
    """The enabled servers and the tools that need approval whatever they declare."""

    servers: list[ServerConfig]
    require_confirmation: list[str] = field(default_factory=list)
    # Per tool (built-in or `<server>__<tool>`): whether it needs approval, whatever it declares.
    confirmation: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> "McpConfig":
        return cls(servers=[], require_confirmation=[])

    def requires_confirmation(self, qualified_name: str) -> bool:
        """Whether `<server>__<tool>` matches a `requireConfirmation` pattern (case-sensitive)."""
        return any(fnmatch.fnmatchcase(qualified_name, pattern) for pattern in self.require_confirmation)

    def needs_approval(self, name: str, declared: bool) -> bool:
        """A tool's rule: its `confirmation` entry, else a matching pattern, else what it declares."""
        if name in self.confirmation:
            return self.confirmation[name]
        return declared or self.requires_confirmation(name)


def load_mcp_config(path: Path, environ: Mapping[str, str] = os.environ) -> McpConfig:
    """The file at `path`, checked; ConfigurationError for anything wrong in it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigurationError(f"MCP_CONFIG {path} cannot be read: {err}") from err
    try:
        document = json.loads(text)
    except ValueError as err:
        raise ConfigurationError(f"MCP_CONFIG {path} is not valid JSON: {err}") from err
    return _Parser(path, environ).config(document)


@dataclass
class _Parser:
    path: Path
    environ: Mapping[str, str]

    def fail(self, where: str, problem: str) -> ConfigurationError:
        return ConfigurationError(f"MCP_CONFIG {self.path}: {where}: {problem}", path=str(self.path))

    def config(self, document: Any) -> McpConfig:
        if not isinstance(document, dict):
            raise self.fail("(top level)", "must be a JSON object")
        unknown = sorted(set(document) - {"mcpServers", "requireConfirmation", "confirmation"})
        if unknown:
            expected = "mcpServers, requireConfirmation, confirmation"
            raise self.fail(unknown[0], f"unknown key (expected {expected})")
        servers = document.get("mcpServers")
        if not isinstance(servers, dict):
            raise self.fail("mcpServers", "must be an object of servers by name")
        parsed = [self.server(name, entry) for name, entry in servers.items()]
        return McpConfig(
            servers=[server for server in parsed if server is not None],
            require_confirmation=self.patterns(document.get("requireConfirmation", [])),
            confirmation=self.overrides(document.get("confirmation", {})),
        )

    def overrides(self, value: Any) -> dict[str, bool]:
        if not isinstance(value, dict) or not all(isinstance(v, bool) for v in value.values()):
            raise self.fail("confirmation", "must be an object of tool names to true or false")
        return dict(value)

    def patterns(self, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
            raise self.fail("requireConfirmation", "must be a list of non-empty glob patterns")
        return list(value)

    def server(self, name: str, entry: Any) -> ServerConfig | None:
        where = f"mcpServers.{name}"
        if not _NAME.match(name) or "__" in name:
            raise self.fail(
                where,
                "server names are 1-40 letters, digits, '_' or '-', without '__' (it separates tool names)",
            )
        if not isinstance(entry, dict):
            raise self.fail(where, "must be an object")
        kind = self.kind(where, entry)
        unknown = sorted(set(entry) - _KEYS[kind])
        if unknown:
            allowed = ", ".join(sorted(_KEYS[kind]))
            raise self.fail(f"{where}.{unknown[0]}", f"unknown key for a {kind} server (expected {allowed})")
        enabled = self.boolean(f"{where}.enabled", entry.get("enabled", True))
        disabled = self.boolean(f"{where}.disabled", entry.get("disabled", False))
        if disabled or not enabled:
            return None  # its variables need not be set: often why it is turned off
        timeout = self.timeout(f"{where}.timeout", entry.get("timeout", DEFAULT_TIMEOUT))
        if kind == "stdio":
            server = ServerConfig(
                name=name,
                kind=kind,
                command=self.command(f"{where}.command", entry.get("command")),
                args=[
                    self.expand(f"{where}.args[{i}]", a)
                    for i, a in enumerate(self.strings(where, entry, "args"))
                ],
                env={
                    k: self.expand(f"{where}.env.{k}", v) for k, v in self.table(where, entry, "env").items()
                },
                cwd=self.cwd(f"{where}.cwd", entry.get("cwd")),
                timeout=timeout,
            )
        else:
            server = ServerConfig(
                name=name,
                kind=kind,
                url=self.url(f"{where}.url", entry.get("url")),
                headers={
                    k: self.expand(f"{where}.headers.{k}", v)
                    for k, v in self.table(where, entry, "headers").items()
                },
                timeout=timeout,
            )
        return server

    def kind(self, where: str, entry: dict[str, Any]) -> ServerKind:
        declared = entry.get("type")
        if declared is None:
            if "command" in entry and "url" in entry:
                raise self.fail(where, "has both command (stdio) and url (HTTP); keep one")
            if "command" in entry:
                return "stdio"
            if "url" in entry:
                return "http"
            raise self.fail(where, "needs a command (stdio server) or a url (HTTP server)")
        if declared == "sse":
            raise self.fail(
                f"{where}.type",
                "the SSE transport (deprecated by MCP) is not supported; "
                "use the server's streamable HTTP endpoint",
            )
        if not isinstance(declared, str) or declared not in _TYPES:
            raise self.fail(f"{where}.type", f"unknown type (expected one of {', '.join(_TYPES)}, or none)")
        return _TYPES[declared]

    def expand(self, where: str, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail(where, "must be a string")

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = self.environ.get(name)
            if found is None or (found == "" and default is not None):
                if default is None:
                    raise self.fail(where, f"the environment variable {name} is not set")
                return default
            return found

        expanded = _VARIABLE.sub(substitute, value)
        if "${" in _VARIABLE.sub("", value):
            raise self.fail(where, "malformed variable reference (write ${NAME} or ${NAME:-default})")
        return expanded

    def command(self, where: str, value: Any) -> str:
        if value is None:
            raise self.fail(where, "is required for a stdio server")
        command = self.expand(where, value)
        if not command.strip():
            raise self.fail(where, "must not be empty")
        return command

    def strings(self, where: str, entry: dict[str, Any], key: str) -> list[Any]:
        value = entry.get(key, [])
        if not isinstance(value, list):
            raise self.fail(f"{where}.{key}", "must be a list of strings")
        return value

    def table(self, where: str, entry: dict[str, Any], key: str) -> dict[str, Any]:
        value = entry.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(f"{where}.{key}", "must be an object of strings")
        for name in value:
            if not name or "\x00" in name or (key == "env" and "=" in name):
                raise self.fail(f"{where}.{key}", f"{name!r} is not a valid name")
        return value

    def cwd(self, where: str, value: Any) -> str | None:
        if value is None:
            return None
        directory = Path(self.expand(where, value)).expanduser()
        if not directory.is_absolute():
            directory = self.path.resolve().parent / directory
        if not directory.is_dir():
            raise self.fail(where, f"{directory} is not a directory")
        return str(directory)

    def url(self, where: str, value: Any) -> str:
        if value is None:
            raise self.fail(where, "is required for an HTTP server")
        url = self.expand(where, value)
        try:
            parts = urlsplit(url)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            valid = False
        if not valid:
            raise self.fail(where, "must be an http:// or https:// URL with a host")
        return url

    def timeout(self, where: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_TIMEOUT:
            raise self.fail(where, f"must be a number of seconds, above 0 and at most {MAX_TIMEOUT:g}")
        return float(value)

    def boolean(self, where: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, "must be true or false")
        return value
