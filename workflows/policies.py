"""Named timeouts and retry policies for every activity call, spread at the call site.

Values are constants, not settings: a workflow must make the same decisions on replay.
"""

from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityCancellationType

# Errors that no retry can fix; the `type` of the ApplicationError raised by activities.
MODEL_NON_RETRYABLE = [
    "model_auth_failed",
    "model_not_found",
    "model_bad_request",
    "context_length_exceeded",
]

# The streaming model call. The heartbeat timeout is what notices a dead worker: the call
# is retried elsewhere within it. Waiting for cancellation to complete keeps a cancelled
# call from writing tokens after the turn's terminal event.
MODEL_CALL: dict[str, Any] = {
    "start_to_close_timeout": timedelta(minutes=5),
    "heartbeat_timeout": timedelta(seconds=5),
    "cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=20),
        maximum_attempts=4,
        non_retryable_error_types=MODEL_NON_RETRYABLE,
    ),
}

# Short database writes (status changes, terminal events): retried until the database is back.
TURN_BOOKKEEPING: dict[str, Any] = {
    "start_to_close_timeout": timedelta(seconds=30),
    "retry_policy": RetryPolicy(
        initial_interval=timedelta(milliseconds=200),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=10),
        maximum_attempts=0,
    ),
}

# Tools, by the policy name of their spec (tools/base.py). A read-only tool may be retried
# freely; send_email retries only failures before the server took the message (the outbox
# makes that safe) and gives up on answers that no retry can change.
TOOL_CALL: dict[str, dict[str, Any]] = {
    "default": {
        "start_to_close_timeout": timedelta(minutes=2),
        "heartbeat_timeout": timedelta(seconds=10),
        "cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(seconds=1),
            backoff_coefficient=2.0,
            maximum_interval=timedelta(seconds=10),
            maximum_attempts=3,
        ),
    },
    # Tools of tool servers: the server enforces its own per-call timeout (MCP_CONFIG
    # `timeout`, at most 10 minutes) well inside this; retried only when the call surely
    # never reached the server, since a remote tool call may not be safe to repeat.
    "remote": {
        "start_to_close_timeout": timedelta(minutes=11),
        "heartbeat_timeout": timedelta(seconds=10),
        "cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(seconds=1),
            backoff_coefficient=2.0,
            maximum_interval=timedelta(seconds=10),
            maximum_attempts=3,
        ),
    },
    # A mail server that is down is waited for (the turn shows `tool_retry` events) for up
    # to an hour, then the model is told it is unavailable.
    "email": {
        "start_to_close_timeout": timedelta(minutes=2),
        "schedule_to_close_timeout": timedelta(hours=1),
        "heartbeat_timeout": timedelta(seconds=10),
        "cancellation_type": ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        "retry_policy": RetryPolicy(
            initial_interval=timedelta(seconds=1),
            backoff_coefficient=2.0,
            maximum_interval=timedelta(seconds=60),
            maximum_attempts=0,
        ),
    },
}
