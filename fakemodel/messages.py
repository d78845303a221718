"""Reading the `messages` of a chat-completions request (string or content-part contents)."""

from __future__ import annotations

from typing import Any


def content_text(content: Any) -> str:
    """Text of a message content, which may be a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        ]
        return "\n".join(texts)
    return ""


def last_user_text(messages: Any) -> str | None:
    """Text of the last `user` message, or None when there is none."""
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return None


def prompt_token_count(messages: Any) -> int:
    """Deterministic stand-in for prompt tokens: whitespace-separated words of all messages."""
    if not isinstance(messages, list):
        return 0
    words = 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        words += len(content_text(message.get("content")).split())
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                words += 1 + len(str(function.get("arguments", "")).split())
    return words
