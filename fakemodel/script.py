"""Scripted steps for the fake model and the thread-safe registry that serves them."""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from fakemodel.messages import last_user_text


class _StepBase(BaseModel):
    """Common config: unknown keys are typos in a test, so reject them."""

    model_config = ConfigDict(extra="forbid")


class ReplyStep(_StepBase):
    """Stream `content` as word-ish tokens, then finish."""

    kind: Literal["reply"] = "reply"
    content: str
    delay_ms: float | None = None
    finish_reason: str = "stop"


class ToolCallSpec(_StepBase):
    """One function call the model asks for; dict arguments are sent as compact JSON."""

    id: str | None = None
    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class ToolCallsStep(_StepBase):
    """Optionally stream `content`, then emit tool calls split over several chunks."""

    kind: Literal["tool_calls"] = "tool_calls"
    tool_calls: list[ToolCallSpec] = Field(min_length=1)
    content: str | None = None
    delay_ms: float | None = None


class ErrorStep(_StepBase):
    """Answer with an HTTP error (OpenAI error body) before any streaming starts."""

    kind: Literal["error"] = "error"
    status: int = Field(ge=400, le=599)
    message: str = "Simulated error from the fake model."
    type: str | None = None
    code: str | None = None
    retry_after: float | None = None


class BreakStep(_StepBase):
    """Stream the first `after_chunks` tokens of `content`, then abort the connection.

    The chunked body ends without [DONE] or a finish chunk, so the openai client raises
    `openai.APIConnectionError` whose `__cause__` is `httpx2.RemoteProtocolError`
    ("incomplete chunked read"); a non-streaming request fails the same way.
    """

    kind: Literal["break"] = "break"
    content: str = "This answer will be cut off in the middle of a sentence because"
    after_chunks: int = Field(default=3, ge=0)
    delay_ms: float | None = None


Step = Annotated[ReplyStep | ToolCallsStep | ErrorStep | BreakStep, Field(discriminator="kind")]
_STEPS = TypeAdapter(list[Step])


def parse_steps(steps: Iterable[Step | Mapping[str, Any]]) -> list[Step]:
    """Validate a mix of step models and plain dicts into step models."""
    raw = [s.model_dump() if isinstance(s, BaseModel) else dict(s) for s in steps]
    return _STEPS.validate_python(raw)


class RecordedRequest(BaseModel):
    """A chat-completions request as the fake model received it."""

    received_at: float
    script_id: str | None
    body: dict[str, Any]


class _Script:
    """A match string plus a cursor over its steps (the last step repeats)."""

    def __init__(self, script_id: str, match: str, steps: list[Step]) -> None:
        self.id = script_id
        self.match = match
        self.steps = steps
        self.used = 0

    def next_step(self) -> Step:
        step = self.steps[min(self.used, len(self.steps) - 1)]
        self.used += 1
        return step


class ScriptBook:
    """Registry of scripts and recorded requests, shared by the server and test threads."""

    def __init__(self, max_recorded: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._scripts: list[_Script] = []
        # Bounded so a long benchmark run cannot grow memory without limit.
        self._recorded: deque[RecordedRequest] = deque(maxlen=max_recorded)

    def add(self, match: str, steps: Sequence[Step | Mapping[str, Any]]) -> str:
        """Register a script; returns its id. Older scripts win when several match."""
        parsed = parse_steps(steps)
        if not parsed:
            raise ValueError("a script needs at least one step")
        script_id = f"script_{uuid.uuid4().hex[:12]}"
        with self._lock:
            self._scripts.append(_Script(script_id, match, parsed))
        return script_id

    def clear(self) -> None:
        """Forget all scripts (recorded requests are kept)."""
        with self._lock:
            self._scripts.clear()

    def clear_requests(self) -> None:
        """Forget all recorded requests."""
        with self._lock:
            self._recorded.clear()

    def reset(self) -> None:
        """Forget scripts and recorded requests."""
        with self._lock:
            self._scripts.clear()
            self._recorded.clear()

    def take(self, body: dict[str, Any]) -> tuple[str | None, Step | None]:
        """Record a request and consume the next step of the first matching script."""
        text = last_user_text(body.get("messages"))
        with self._lock:
            found = next((s for s in self._scripts if text is not None and s.match in text), None)
            step = found.next_step() if found else None
            script_id = found.id if found else None
            self._recorded.append(RecordedRequest(received_at=time.time(), script_id=script_id, body=body))
        return script_id, step

    def requests(self, match: str | None = None) -> list[RecordedRequest]:
        """Recorded requests, oldest first; `match` filters on the last user message."""
        with self._lock:
            recorded = list(self._recorded)
        if match is None:
            return recorded
        return [
            r
            for r in recorded
            if (text := last_user_text(r.body.get("messages"))) is not None and match in text
        ]
