"""The OpenAPI document, completed with what FastAPI cannot see from the route signatures:
the problem responses every route may give (RFC 9457, `application/problem+json`), and the
event-stream bodies. Rules by route shape, so that a new route is documented as it is added."""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code", "request_id"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "description": "Stable snake_case error code."},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {"type": "object", "additionalProperties": True},
            "description": "Validation errors, one per field.",
        },
    },
    "additionalProperties": True,
}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}
_DESCRIPTIONS = {
    400: "Malformed request (invalid JSON, credentials in the query string)",
    401: "Missing or invalid API key",
    403: "The key's user lacks the role this route needs",
    404: "No such object for this user",
    409: "Conflict with the object's state (turn in progress, idempotency key in use, decided)",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Validation failed",
    429: "Rate limited or over quota",
    503: "A dependency is unavailable; retry later",
}
# Before OpenAPI 3.2 (itemSchema), an event stream's schema describes each event.
_SSE_EVENT = {
    "type": "object",
    "description": "One server-sent event: `id` is the seq, `event` the type, `data` the event as JSON",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[1-9][0-9]*$"},
        "event": {"type": "string", "pattern": "^[a-z_]+$"},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}
_SSE = {"text/event-stream": {"schema": _SSE_EVENT}}
_EVENTS_LIST = {"application/json": {"schema": {"type": "object", "additionalProperties": True}}}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            complete(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(schema: dict[str, Any]) -> None:
    schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            for status in _problem_statuses(path, method, operation):
                responses[str(status)] = _problem(status)
            _stream_bodies(path, method, responses)


def _problem_statuses(path: str, method: str, operation: dict[str, Any]) -> list[int]:
    if not path.startswith("/api/v1/"):
        return [503] if path == "/readyz" else []
    statuses = [400, 401, 422, 429, 503]
    if "requestBody" in operation:
        statuses += [413, 415]
    if "{" in path:
        statuses.append(404)
    if method in ("post", "delete"):
        statuses.append(409)  # POST: Idempotency-Key in use; DELETE: a turn in progress
    if path.startswith("/api/v1/users"):
        statuses.append(403)
    return statuses


def _problem(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _DESCRIPTIONS[status],
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if status in (429, 503):
        response["headers"] = _RETRY_AFTER
    return response


def _stream_bodies(path: str, method: str, responses: dict[str, Any]) -> None:
    """The routes whose body is a turn's event stream, as API.md describes them."""
    if method == "post" and path.endswith("/messages") and "200" in responses:
        responses["200"]["content"] = _SSE
    elif method == "get" and path.endswith("/events"):
        responses["200"] = {
            "description": "The turn's events: SSE, or a list with Accept: application/json",
            "content": {**_SSE, **_EVENTS_LIST},
        }
        responses["204"] = {"description": "The turn has ended and nothing is left after the given seq"}
