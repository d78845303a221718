"""Opaque, prefixed, time-ordered ids (`conv_…`, `turn_…`, `msg_…`).

The body is 26 characters of Crockford base32: 48 bits of milliseconds then 80 random
bits, so ids sort by creation time, which keeps cursor pagination and indexes cheap.
"""

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
PREFIXES = ("usr", "key", "conv", "msg", "turn", "apr")


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


def looks_like(value: str, prefix: str) -> bool:
    """Whether `value` has the shape of an id of this type (cheap check before a query)."""
    body = value.removeprefix(f"{prefix}_")
    return body != value and 0 < len(body) <= 64 and all(c.isalnum() for c in body)
