"""Wire objects of the OpenAI chat-completions API: chunks, completions, errors, SSE framing."""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from typing import Any

SYSTEM_FINGERPRINT = "fp_fakemodel"
SSE_DONE = b"data: [DONE]\n\n"

# Leading whitespace sticks to the following word, and trailing whitespace is its own token,
# so "".join(tokenize(text)) == text for every text.
_TOKEN_RE = re.compile(r"\s*\S+|\s+\Z")
# Real models stream tool arguments a few characters at a time.
_ARGUMENT_PIECE = 8

_DEFAULT_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    422: "invalid_request_error",
    429: "requests",
}


def tokenize(text: str) -> list[str]:
    """Split text into word-ish tokens whose concatenation is exactly the text."""
    return _TOKEN_RE.findall(text)


def split_arguments(arguments: str) -> list[str]:
    """Split a tool-call argument string into small pieces, like OpenAI streams them."""
    return [arguments[i : i + _ARGUMENT_PIECE] for i in range(0, len(arguments), _ARGUMENT_PIECE)]


def arguments_json(arguments: dict[str, Any] | str) -> str:
    """Argument string sent on the wire: strings verbatim, dicts as compact JSON."""
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments, separators=(",", ":"), ensure_ascii=False)


def new_call_id() -> str:
    """A tool-call id shaped like OpenAI's."""
    return "call_" + secrets.token_urlsafe(18).replace("-", "x").replace("_", "y")[:24]


def sse(obj: dict[str, Any]) -> bytes:
    """Frame one JSON object as a server-sent event."""
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """A usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def error_body(
    status: int, message: str, *, type: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI-style error body; the type defaults by status like the real API."""
    default_type = _DEFAULT_ERROR_TYPES.get(status, "server_error" if status >= 500 else "error")
    return {"error": {"message": message, "type": type or default_type, "param": None, "code": code}}


class CompletionFactory:
    """Builds the objects of one completion, sharing id, created and model like OpenAI."""

    def __init__(self, model: str, *, include_usage: bool = False) -> None:
        self.id = "chatcmpl-" + uuid.uuid4().hex[:29]
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def _base(self, object_type: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": object_type,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        """A `chat.completion.chunk` with one choice."""
        obj = self._base("chat.completion.chunk")
        obj["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        # With include_usage, OpenAI sends `usage: null` on every chunk but the last.
        if self.include_usage:
            obj["usage"] = None
        return obj

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        """The trailing chunk sent when `stream_options.include_usage` is set."""
        obj = self._base("chat.completion.chunk")
        obj["choices"] = []
        obj["usage"] = usage(prompt_tokens, completion_tokens)
        return obj

    def completion(
        self,
        *,
        content: str | None,
        tool_calls: list[dict[str, Any]] | None,
        finish_reason: str,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> dict[str, Any]:
        """A non-streaming `chat.completion`."""
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        obj = self._base("chat.completion")
        obj["choices"] = [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}]
        obj["usage"] = usage(prompt_tokens, completion_tokens)
        return obj
