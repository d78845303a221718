"""What a tool is: a spec the model and the API see, and an implementation the worker runs.

Tool failures are values, not crashes: `ToolFailed` goes back to the model as an error
result and the turn goes on; `ToolTemporarilyFailed` asks Temporal to retry the activity.
"""

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from jsonschema import Draft202012Validator


@dataclass(frozen=True)
class ToolSpec:
    """A tool as the model, the catalog and the API see it."""

    name: str
    description: str
    input_schema: dict[str, Any]
    requires_confirmation: bool = False
    source: str = "builtin"
    # The retry policy the workflow uses for it (workflows/policies.py, TOOL_CALL).
    policy: str = "default"

    def openai_function(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.input_schema},
        }


@dataclass(frozen=True)
class ToolContext:
    """What an execution knows beside its arguments."""

    turn_id: str
    tool_call_id: str
    user_id: str
    # Derived from turn id + tool call id: the same for every retry of this call.
    idempotency_key: str


class ToolFailed(Exception):
    """The call failed for good; the model gets `{"code", "message"}` as the result."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    def as_result(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class InvalidArguments(ToolFailed):
    """The arguments do not fit the tool's schema."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__("invalid_arguments", message, errors=errors or [message])


class ToolTemporarilyFailed(Exception):
    """A failure worth another attempt later (server down, timeout before any effect)."""

    code = "tool_unavailable"


class Tool(Protocol):
    @property
    def spec(self) -> ToolSpec:
        """What the model and the catalog see (a remote tool's may change while it runs)."""

    def check(self, arguments: dict[str, Any]) -> None:
        """Raise InvalidArguments for arguments the schema admits but the tool refuses."""

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any: ...

    async def aclose(self) -> None:
        """Release connections the tool keeps between calls (worker shutdown)."""


@dataclass
class SchemaCheck:
    """Validation of arguments against a tool's JSON Schema, with readable errors."""

    schema: dict[str, Any]
    _validator: Draft202012Validator = field(init=False)

    def __post_init__(self) -> None:
        Draft202012Validator.check_schema(self.schema)
        self._validator = Draft202012Validator(
            self.schema, format_checker=Draft202012Validator.FORMAT_CHECKER
        )

    def errors(self, arguments: Any) -> list[str]:
        found = []
        for error in sorted(self._validator.iter_errors(arguments), key=lambda e: list(e.path)):
            where = ".".join(str(p) for p in error.path) or "(arguments)"
            found.append(f"{where}: {error.message}")
        return found


def parse_arguments(raw: str | dict[str, Any]) -> dict[str, Any]:
    """The model's argument string as an object, or InvalidArguments."""
    if isinstance(raw, dict):
        return raw
    try:
        parsed = json.loads(raw or "{}")
    except ValueError as err:
        raise InvalidArguments(f"arguments are not valid JSON: {err}") from err
    if not isinstance(parsed, dict):
        raise InvalidArguments("arguments must be a JSON object")
    _check_storable(parsed)
    return parsed


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str) -> str:
    """`text` as jsonb can hold it: NUL dropped, a lone surrogate made U+FFFD."""
    if not _UNSTORABLE.search(text):
        return text
    return _UNSTORABLE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", text)


def _check_storable(value: Any) -> None:
    """PostgreSQL's jsonb holds no NUL character, lone surrogate or NaN/Infinity; refuse them here, as
    the model's mistake, rather than fail every write of the turn after."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and "\x00" in item:
            raise InvalidArguments("arguments must not contain the NUL character (U+0000)")
        if isinstance(item, str) and _LONE_SURROGATE.search(item):
            raise InvalidArguments(
                "arguments must be valid Unicode: a lone surrogate (\\ud800-\\udfff) is not"
            )
        if isinstance(item, float) and not math.isfinite(item):
            raise InvalidArguments("arguments must not contain NaN or Infinity")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
