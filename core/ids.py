"""Opaque, prefixed, time-ordered ids (`conv_…`, `turn_…`, `msg_…`).

The body is 26 characters of Crockford base32: 48 bits of milliseconds then 80 random
bits, so ids sort by creation time, which keeps cursor pagination and indexes cheap.
"""

import hashlib
import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """A new id with the given type prefix."""
    millis = time.time_ns() // 1_000_000
    body = (millis << 80) | secrets.randbits(80)
    return f"{prefix}_{_encode(body, 26)}"


def assistant_message_id(turn_id: str, step: int) -> str:
    """The deterministic id of a turn's assistant message for a model step.

    A retried model activity writes under the same id, so it overwrites, never duplicates.
    """
    return f"msg_{turn_id.removeprefix('turn_')}s{step}"


def tool_message_id(turn_id: str, step_message_id: str, tool_call_id: str) -> str:
    """The deterministic id of the tool message answering a tool call (retries overwrite).

    Call ids are unique within one model reply only, hence the reply's message id too.
    """
    digest = hashlib.sha256(f"{step_message_id}\n{tool_call_id}".encode()).hexdigest()[:16]
    return f"msg_{turn_id.removeprefix('turn_')}t{digest}"
