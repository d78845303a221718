"""The ids every log line carries, wherever it is written.

- In the API, `EdgeMiddleware` binds `request_id` and hands the request's ASGI scope to
  `request_scope`; `add_request_context` then reads the caller's `user_id` (set on
  `request.state` by authentication) and the `conversation_id`/`turn_id`/`approval_id` of
  the route's path from that scope at the time of each line, so no route has to bind them.
- In the worker, `LogContextInterceptor` binds `workflow_id`, `turn_id`, `conversation_id`,
  `activity` and `attempt` around every activity; `flatten_temporal_extra` turns the
  `temporal_workflow`/`temporal_activity` dicts Temporal's own loggers attach to their
  records into the same flat fields.
"""

from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog
from temporalio import activity
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from core.contracts import WORKFLOW_NAME

# The ASGI scope of the request being served (a dict Starlette keeps updating in place).
request_scope: ContextVar[Mapping[str, Any] | None] = ContextVar("request_scope", default=None)

_PATH_IDS = ("conversation_id", "turn_id", "approval_id")


def request_ids(scope: Mapping[str, Any]) -> dict[str, Any]:
    """The ids a request's scope knows by now: the caller, and the ids in the route's path.

    A path's `user_id` (an admin route's target) is not the caller, so it is not taken.
    """
    ids: dict[str, Any] = {}
    state = scope.get("state")
    if isinstance(state, Mapping) and state.get("user_id"):
        ids["user_id"] = state["user_id"]
    params = scope.get("path_params")
    if isinstance(params, Mapping):
        for name in _PATH_IDS:
            value = params.get(name)
            if isinstance(value, str) and value:
                ids[name] = value
    return ids


def add_request_context(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the request's ids; fields the line sets itself win."""
    scope = request_scope.get()
    if scope is not None:
        for key, value in request_ids(scope).items():
            event_dict.setdefault(key, value)
    return event_dict


def _turn_of(workflow_type: Any, workflow_id: Any) -> str | None:
    # A turn's workflow id is the turn id (workflows.client.start_turn).
    return workflow_id if workflow_type == WORKFLOW_NAME and isinstance(workflow_id, str) else None


def _add_missing(event_dict: MutableMapping[str, Any], fields: Mapping[str, Any]) -> None:
    """Set each known field the line does not set itself."""
    for key, value in fields.items():
        if value is not None:
            event_dict.setdefault(key, value)


def flatten_temporal_extra(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: Temporal's `temporal_workflow`/`temporal_activity` record extras
    (added by `workflow.logger` and `activity.logger`) as flat `workflow_id`, `turn_id`,
    `activity`, `attempt`… fields."""
    details = event_dict.pop("temporal_workflow", None)
    if isinstance(details, Mapping):
        flat = {
            "workflow_id": details.get("workflow_id"),
            "run_id": details.get("run_id"),
            "workflow_type": details.get("workflow_type"),
            "turn_id": _turn_of(details.get("workflow_type"), details.get("workflow_id")),
            "update": details.get("update_name"),
        }
        _add_missing(event_dict, flat)
    details = event_dict.pop("temporal_activity", None)
    if isinstance(details, Mapping):
        flat = {
            "workflow_id": details.get("workflow_id"),
            "run_id": details.get("workflow_run_id"),
            "workflow_type": details.get("workflow_type"),
            "turn_id": _turn_of(details.get("workflow_type"), details.get("workflow_id")),
            "activity": details.get("activity_type"),
            "activity_id": details.get("activity_id"),
            "attempt": details.get("attempt"),
        }
        _add_missing(event_dict, flat)
    event_dict.pop("color_message", None)  # uvicorn's colored copy of the message
    for key in [key for key in event_dict if key.startswith("__")]:
        del event_dict[key]  # Temporal's private markers (`__temporal_error_identifier`)
    return event_dict


def activity_ids(info: activity.Info, args: tuple[Any, ...] = ()) -> dict[str, Any]:
    """The ids of an activity's lines: its workflow's, its own, and the turn's from its input."""
    ids: dict[str, Any] = {
        "workflow_id": info.workflow_id,
        "activity": info.activity_type,
        "attempt": info.attempt,
    }
    turn_id = _turn_of(info.workflow_type, info.workflow_id)
    if turn_id is not None:
        ids["turn_id"] = turn_id
    if args:
        for name in ("turn_id", "conversation_id"):
            value = getattr(args[0], name, None)
            if isinstance(value, str) and value:
                ids[name] = value
    return ids


class _BindActivityIds(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        ids = activity_ids(activity.info(), tuple(input.args))
        # Each activity runs in a task of its own: bindings end with it.
        with structlog.contextvars.bound_contextvars(**ids):
            return await self.next.execute_activity(input)


class LogContextInterceptor(Interceptor):
    """Worker interceptor: every line an activity writes carries its turn's and its own ids."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _BindActivityIds(next)
