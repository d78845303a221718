"""Turn one scripted step (or the demo answer) into an HTTP response, streaming or not."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi.responses import JSONResponse, Response, StreamingResponse

from fakemodel.chunks import (
    SSE_DONE,
    CompletionFactory,
    arguments_json,
    error_body,
    new_call_id,
    split_arguments,
    sse,
    tokenize,
)
from fakemodel.script import BreakStep, ErrorStep, ReplyStep, Step, ToolCallsStep


class StreamBroken(Exception):
    """Raised on purpose inside a response body so the server drops the connection mid-body."""


class _IgnoreStreamBroken(logging.Filter):
    """Drops uvicorn's traceback for deliberate breaks; real app errors still get logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not _contains_break(exc)


def _contains_break(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    if isinstance(exc, StreamBroken):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_contains_break(e) for e in exc.exceptions)
    return _contains_break(exc.__cause__ or exc.__context__)


_FILTER = _IgnoreStreamBroken()


def install_log_filter() -> None:
    """Attach the break filter to uvicorn's error logger (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


async def pause(seconds: float, closing: threading.Event) -> None:
    """Sleep like a generating model, but give up promptly once the server is shutting down."""
    deadline = time.monotonic() + seconds
    while True:
        # Ending in-flight streams ourselves keeps shutdown fast, even with huge delay_ms.
        if closing.is_set():
            raise StreamBroken("fake model shutting down")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        await asyncio.sleep(min(remaining, 0.05))
    if seconds <= 0:
        await asyncio.sleep(0)  # still yield, so zero-delay streams do not hog the loop


@dataclass
class _Call:
    id: str
    name: str
    arguments: str


@dataclass
class Plan:
    """Everything needed to emit one completion."""

    tokens: list[str]
    finish_reason: str = "stop"
    delay: float = 0.0
    calls: list[_Call] = field(default_factory=list)
    break_after: int | None = None

    @property
    def completion_tokens(self) -> int:
        """Content tokens plus one per tool call and one per argument piece."""
        pieces = sum(1 + len(split_arguments(c.arguments)) for c in self.calls)
        return len(self.tokens) + pieces


def plan_for(step: Step | None, demo_text: str, token_delay: float) -> Plan:
    """Build the plan of a non-error step; None means the demo answer."""

    def delay(delay_ms: float | None) -> float:
        return token_delay if delay_ms is None else delay_ms / 1000

    if step is None:
        return Plan(tokens=tokenize(demo_text), delay=token_delay)
    if isinstance(step, ReplyStep):
        return Plan(tokenize(step.content), step.finish_reason, delay(step.delay_ms))
    if isinstance(step, ToolCallsStep):
        calls = [_Call(c.id or new_call_id(), c.name, arguments_json(c.arguments)) for c in step.tool_calls]
        return Plan(tokenize(step.content or ""), "tool_calls", delay(step.delay_ms), calls)
    if isinstance(step, BreakStep):
        return Plan(tokenize(step.content), delay=delay(step.delay_ms), break_after=step.after_chunks)
    raise TypeError(f"no plan for step kind {step.kind!r}")


def error_response(step: ErrorStep) -> Response:
    """An HTTP error with an OpenAI error body and an optional Retry-After header."""
    headers = {}
    if step.retry_after is not None:
        value = step.retry_after
        headers["Retry-After"] = str(int(value)) if value == int(value) else str(value)
    body = error_body(step.status, step.message, type=step.type, code=step.code)
    return JSONResponse(body, status_code=step.status, headers=headers)


async def _stream(
    plan: Plan, factory: CompletionFactory, prompt_tokens: int, closing: threading.Event
) -> AsyncIterator[bytes]:
    yield sse(factory.chunk({"role": "assistant", "content": "", "refusal": None}))
    for i, token in enumerate(plan.tokens):
        if plan.break_after is not None and i >= plan.break_after:
            raise StreamBroken(f"break after {i} content chunks")
        await pause(plan.delay, closing)
        yield sse(factory.chunk({"content": token}))
    if plan.break_after is not None:
        raise StreamBroken(f"break after {len(plan.tokens)} content chunks")
    for index, call in enumerate(plan.calls):
        await pause(plan.delay, closing)
        head = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        yield sse(factory.chunk({"tool_calls": [head]}))
        for piece in split_arguments(call.arguments):
            await pause(plan.delay, closing)
            delta = {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
            yield sse(factory.chunk(delta))
    yield sse(factory.chunk({}, plan.finish_reason))
    if factory.include_usage:
        yield sse(factory.usage_chunk(prompt_tokens, plan.completion_tokens))
    yield SSE_DONE


async def _broken_json(body: bytes, delay: float, closing: threading.Event) -> AsyncIterator[bytes]:
    await pause(delay, closing)
    yield body[: len(body) // 2]
    raise StreamBroken("break in a non-streaming response")


async def completion_response(
    plan: Plan,
    *,
    model: str,
    stream: bool,
    include_usage: bool,
    prompt_tokens: int,
    closing: threading.Event,
) -> Response:
    """The streaming (SSE) or non-streaming response for a plan."""
    factory = CompletionFactory(model, include_usage=include_usage and stream)
    if stream:
        return StreamingResponse(
            _stream(plan, factory, prompt_tokens, closing),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    content = "".join(plan.tokens)
    tool_calls = [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in plan.calls
    ]
    obj = factory.completion(
        content=content if content or not tool_calls else None,
        tool_calls=tool_calls or None,
        finish_reason=plan.finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=plan.completion_tokens,
    )
    if plan.break_after is not None:
        body = json.dumps(obj).encode()
        return StreamingResponse(_broken_json(body, plan.delay, closing), media_type="application/json")
    # A real model only answers once the whole completion is generated.
    await pause(plan.delay * plan.completion_tokens, closing)
    return JSONResponse(obj)
