"""Public request and response models, separated by role (Create / Update / Public)."""

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tools.email_preview import EmailPreview

# Request JSON is an annotation or a call's arguments, not a document; the limit also keeps
# it well inside what the response serializer accepts (it fails at ~255 levels).
MAX_JSON_DEPTH = 32


def storable(value: Any) -> Any:
    """`value` unchanged, or ValueError if PostgreSQL could not store it or it nests too deep.

    text and jsonb cannot hold U+0000, and jsonb has no NaN or ±Infinity (Python's JSON
    parser accepts all three).
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:  # a loop, not recursion: the nesting is the client's to choose
        item, depth = stack.pop()
        if isinstance(item, str) and "\x00" in item:
            raise ValueError("must not contain the NUL character (U+0000)")
        if isinstance(item, str) and not _encodable(item):
            raise ValueError("must be valid Unicode (no lone surrogates such as \\ud800)")
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
        if isinstance(item, dict | list) and depth >= MAX_JSON_DEPTH:
            raise ValueError(f"must not be nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((key, depth) for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return value


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Strict(BaseModel):
    """Request bodies refuse unknown fields, so a typo is an error, not silently ignored,
    and values the database cannot store, so they are a 422 naming the field, not a 500."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        return storable(value)


class ConversationCreate(Strict):
    title: str | None = Field(default=None, max_length=500)
    system_prompt: str | None = Field(default=None, max_length=100_000)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    tools: list[str] | None = Field(default=None, max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict)


class ConversationUpdate(Strict):
    title: str | None = Field(default=None, max_length=500)
    system_prompt: str | None = Field(default=None, max_length=100_000)
    model: str | None = Field(default=None, min_length=1, max_length=200)
    tools: list[str] | None = Field(default=None, max_length=200)
    metadata: dict[str, Any] | None = None


class ConversationPublic(BaseModel):
    id: str
    title: str | None
    system_prompt: str | None
    model: str | None
    tools: list[str] | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    active_turn_id: str | None


class MessageCreate(Strict):
    content: str = Field(min_length=1)


class MessagePublic(BaseModel):
    id: str
    conversation_id: str
    turn_id: str | None
    role: str
    content: str | None
    tool_calls: list[dict[str, Any]] | None
    tool_call_id: str | None
    created_at: datetime


class TurnError(BaseModel):
    code: str
    message: str
    retryable: bool


class UsagePublic(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TurnPublic(BaseModel):
    id: str
    conversation_id: str
    status: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: TurnError | None = None
    usage: UsagePublic
    pending_approvals: list[dict[str, Any]]
    last_seq: int
    output: MessagePublic | None = None


class MessageTurnStarted(BaseModel):
    message: MessagePublic
    turn: TurnPublic


class KeyCreate(Strict):
    name: str | None = Field(default=None, max_length=200)


class KeyPublic(BaseModel):
    id: str
    name: str | None
    prefix: str
    created_at: datetime
    last_used_at: datetime | None


class KeyCreated(KeyPublic):
    secret: str


class CallerPublic(BaseModel):
    """`GET /auth/me`: the calling user."""

    id: str
    name: str
    role: Literal["user", "admin"]
    created_at: datetime


class UserPublic(CallerPublic):
    """A user as admins see it (`/users`)."""

    disabled_at: datetime | None


class UserCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    role: Literal["user", "admin"] = "user"


class UserCreated(UserPublic):
    """A new user, with the first API key's secret (shown this once) and its id."""

    api_key: str
    key_id: str


class UserUpdate(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    role: Literal["user", "admin"] | None = None
    disabled: bool | None = None

    @field_validator("name", "role", "disabled")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Omit a field to leave it unchanged; null would be ambiguous.
        if value is None:
            raise ValueError("must not be null (omit the field to keep it)")
        return value


def list_of(items: list[Any], *, has_more: bool) -> dict[str, Any]:
    """The list envelope of API.md."""
    return {
        "object": "list",
        "data": items,
        "first_id": items[0].id if items else None,
        "last_id": items[-1].id if items else None,
        "has_more": has_more,
    }


class ApprovalDecision(Strict):
    decision: Literal["approve", "reject"]
    arguments: dict[str, Any] | None = None
    reason: str | None = Field(default=None, max_length=2000)


class ApprovalPublic(BaseModel):
    id: str
    turn_id: str
    conversation_id: str
    tool: str
    tool_call_id: str
    arguments: dict[str, Any]
    requested_arguments: dict[str, Any]
    status: str
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    reason: str | None
    # For send_email: the message as approving it would send it (None if the arguments are invalid).
    preview: EmailPreview | None = None


class ToolPublic(BaseModel):
    name: str
    description: str
    input_schema: dict[str, Any]
    requires_confirmation: bool
    source: str
    healthy: bool
    # Why it is not healthy, for operators: "the tool server is unavailable: …", a changed definition.
    problem: str | None = None
