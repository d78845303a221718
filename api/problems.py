"""RFC 9457 problem responses, and the handlers that turn every error into one.

Errors become status codes only here, at the edge. Nothing a client sends may produce a
500: validation failures, malformed JSON and unknown routes all get their stable `code`.
"""

import json
import re
from http import HTTPStatus
from typing import Any

import asyncpg
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from temporalio.service import RPCError, RPCStatusCode

from core.errors import AssistantError

log = structlog.get_logger(__name__)

PROBLEM_TYPE_BASE = "https://docs.durable-assistant.dev/problems/"

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    503: "unavailable",
}


class Problem(Exception):
    """An HTTP error raised by a route: status, stable code, message and extra members."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    request_id: str | None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": request_id,
        **extra,
    }
    return Response(
        json.dumps(body, default=str),
        status_code=status,
        headers=headers,
        media_type="application/problem+json",
    )


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ())]
        errors.append(
            {
                "field": ".".join(location[1:]) or location[0] if location else "",
                "location": location[0] if location else "body",
                "message": error.get("msg", "invalid"),
                "type": error.get("type", "invalid"),
            }
        )
    return errors


def is_outage(exc: BaseException) -> bool:
    """Whether an error means a dependency (PostgreSQL, Temporal) is down, not a bug: a 503."""
    if isinstance(exc, OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.CannotConnectNowError):
        return True
    if isinstance(exc, asyncpg.PostgresConnectionError):
        return True
    return isinstance(exc, RPCError) and exc.status in (
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
    )


def failure_response(exc: BaseException, request_id: str | None) -> Response:
    """The problem response for an unexpected exception: 503 for an outage, else 500."""
    if is_outage(exc):
        log.warning("dependency unavailable", error=f"{type(exc).__name__}: {exc}")
        return problem_response(
            503,
            "unavailable",
            "a service the API depends on is unavailable; retry later",
            request_id=request_id,
            headers={"Retry-After": "5"},
        )
    log.error("unhandled error", exc_info=exc)
    return problem_response(500, "internal_error", "internal error", request_id=request_id)


def install(app: FastAPI) -> None:
    """Register handlers so every error leaves as application/problem+json."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        return problem_response(
            exc.status,
            exc.code,
            exc.detail,
            request_id=request_id_of(request),
            headers=exc.headers,
            **exc.extra,
        )

    @app.exception_handler(AssistantError)
    async def _assistant_error(request: Request, exc: AssistantError) -> Response:
        if exc.status >= 500:
            log.exception("request failed", exc_info=exc)
            return problem_response(
                500, "internal_error", "internal error", request_id=request_id_of(request)
            )
        return problem_response(
            exc.status, exc.code, exc.message, request_id=request_id_of(request), **exc.context
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = _field_errors(exc)
        if any(e["type"] == "json_invalid" for e in errors):
            return problem_response(
                400,
                "invalid_json",
                "the request body is not valid JSON",
                request_id=request_id_of(request),
            )
        return problem_response(
            422,
            "validation_failed",
            "the request is invalid",
            request_id=request_id_of(request),
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers 400 for a body json.loads cannot take (invalid UTF-8, nesting past
        # the recursion limit, integers past Python's digit limit): that is invalid JSON too.
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
            return problem_response(
                400,
                "invalid_json",
                "the request body is not valid JSON",
                request_id=request_id_of(request),
            )
        code = _HTTP_CODES.get(exc.status_code, "error")
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return problem_response(
            exc.status_code, code, detail, request_id=request_id_of(request), headers=headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        # Normally EdgeMiddleware answers first (with X-Request-ID); this is the last net.
        return failure_response(exc, request_id_of(request))


def _allowed_methods(request: Request) -> list[str]:
    """Every method the path accepts, from the OpenAPI paths: Starlette's own `Allow` names only
    the first route that matched the path, and FastAPI makes one route per method."""
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        pattern = re.sub(r"\\{\w+\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            methods.update(method.upper() for method in operations)
    return sorted(methods)
