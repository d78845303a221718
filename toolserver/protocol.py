"""The simple HTTP tool protocol's messages (API.md, "Tool servers"): `GET /mcp/discover` and
`POST /mcp/execute`. The server validates requests with these models; the client
(tools/http_tools.py) reads answers with them, ignoring members it does not know, so that
other implementations of the protocol may add their own."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# A batch runs its calls side by side; past this many it is refused (422), not queued.
MAX_BATCH = 20


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ServerInfo(_Message):
    name: str
    version: str = ""


class ToolDescription(_Message):
    """One tool in a discovery answer."""

    slug: str = Field(min_length=1)
    name: str = ""
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    requires_confirmation: bool = False


class Discovery(_Message):
    """`GET /mcp/discover`."""

    server: ServerInfo
    tools: list[ToolDescription]


class ToolCall(_Message):
    tool_slug: str = Field(min_length=1, max_length=200)
    arguments: dict[str, Any] = Field(default_factory=dict)


class ExecuteRequest(_Message):
    """`POST /mcp/execute`: calls run side by side, each with its own result."""

    request_id: str = Field(min_length=1, max_length=200)
    tools: list[ToolCall] = Field(min_length=1, max_length=MAX_BATCH)


class CallError(_Message):
    code: str = "tool_error"
    message: str = "the tool failed"


class CallResult(_Message):
    """One call's outcome, at the call's position in the batch."""

    tool_slug: str
    successful: bool
    data: Any = None
    error: CallError | None = None


class ExecuteData(_Message):
    results: list[CallResult]


class ExecuteResponse(_Message):
    """`successful` is true only when every call succeeded; otherwise `error` says how many failed."""

    request_id: str | None = None
    successful: bool
    data: ExecuteData
    error: str | None = None
