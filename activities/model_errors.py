"""Classification of model-endpoint failures into Temporal errors (DESIGN.md, "Errors and retries").

Retryable failures raise `ApplicationError(type="model_unavailable")`, honouring
`Retry-After` through `next_retry_delay`; the rest are non-retryable with the stable code
that ends the turn's `error` event.
"""

from datetime import timedelta

import openai
from temporalio.exceptions import ApplicationError

_RETRYABLE_STATUSES = {408, 409, 429}
_MAX_RETRY_AFTER = 60.0


def _retry_after(response_headers: object) -> timedelta | None:
    value = getattr(response_headers, "get", lambda _k: None)("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare from model endpoints; fall back to backoff
    if seconds is None or seconds < 0:
        return None
    return timedelta(seconds=min(seconds, _MAX_RETRY_AFTER))


def _error_code(err: openai.APIStatusError) -> str | None:
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("code"), str):
            return str(inner["code"])
    code = getattr(err, "code", None)
    return code if isinstance(code, str) else None


def classify(err: Exception) -> ApplicationError:
    """The ApplicationError to raise for a failed model call."""
    if isinstance(err, openai.APIStatusError):
        status = err.status_code
        summary = f"model endpoint answered {status}: {err.message}"
        if status in _RETRYABLE_STATUSES or status >= 500:
            return ApplicationError(
                summary,
                type="model_unavailable",
                next_retry_delay=_retry_after(err.response.headers),
            )
        if status in (401, 403):
            kind = "model_auth_failed"
        elif status == 404:
            kind = "model_not_found"
        elif _error_code(err) == "context_length_exceeded":
            kind = "context_length_exceeded"
        else:
            kind = "model_bad_request"
        return ApplicationError(summary, type=kind, non_retryable=True)
    # Timeouts, refused connections, streams cut mid-way: all worth another attempt.
    return ApplicationError(f"model call failed: {type(err).__name__}: {err}", type="model_unavailable")
