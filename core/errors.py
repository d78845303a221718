"""The project's exception hierarchy, in one place.

Two families, as in pydantic-ai: `UsageError` (a caller or operator did something wrong;
mapped to a 4xx by the API) and `RuntimeFailure` (something failed while running; a turn's
`error` event). Each class carries a stable `code` used by the API and as Temporal's
`ApplicationError.type`, so nothing is ever detected by matching message text.
"""

from typing import Any


class AssistantError(Exception):
    """Base of every error raised on purpose by this project."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context


class UsageError(AssistantError):
    """A misuse by a client or operator: bad input, unknown object, wrong state."""

    status = 400


class ConfigurationError(UsageError):
    """The configuration is invalid or unsafe."""

    code = "configuration_error"


class NotFound(UsageError):
    """The object does not exist or belongs to someone else (never told apart)."""

    code = "not_found"
    status = 404


class Conflict(UsageError):
    """The request conflicts with the object's current state."""

    code = "conflict"
    status = 409


class TurnInProgress(Conflict):
    """The conversation already runs a turn."""

    code = "turn_in_progress"


class InvalidCursor(UsageError):
    """`after`/`before` names no object of this list."""

    code = "invalid_cursor"
    status = 422


class RuntimeFailure(AssistantError):
    """Something failed at run time (model, tool, infrastructure)."""


class TurnClosed(RuntimeFailure):
    """The turn has ended; nothing more may be appended to its log."""

    code = "turn_closed"


class StaleAttempt(RuntimeFailure):
    """A newer model attempt owns the turn's stream; this attempt must stop writing."""

    code = "stale_attempt"


# Codes of the `error` event (API.md). `retryable` says whether sending the same message
# again later may succeed.
MODEL_ERROR_CODES: dict[str, bool] = {
    "model_auth_failed": False,
    "model_not_found": False,
    "model_bad_request": False,
    "context_length_exceeded": False,
    "model_unavailable": True,
    "max_steps_exceeded": False,
    "internal_error": True,
}


def is_retryable_code(code: str) -> bool:
    """Whether a turn that failed with `code` may succeed when the message is sent again."""
    return MODEL_ERROR_CODES.get(code, False)
