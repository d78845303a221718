"""Pure ASGI middleware for every request: request id, credentials in the query string,
body size limit, and an access log that never records query strings or keys."""

import re
import time
import uuid
from urllib.parse import parse_qsl

import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import failure_response, problem_response
from core.log_context import request_scope

log = structlog.get_logger("api.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_CREDENTIAL_PARAMS = {"api_key", "key", "token", "access_token"}


class _BodyTooLarge(HTTPException):
    """Raised while reading a body (sent without Content-Length) once it passes the limit.

    An HTTPException, because FastAPI re-raises those from body parsing (where any other
    exception becomes a 400) and its handler then answers 413; raised outside FastAPI (by
    the idempotency middleware) it reaches `EdgeMiddleware`, which answers the same.
    """

    def __init__(self, max_body_bytes: int) -> None:
        super().__init__(413, f"the request body exceeds {max_body_bytes} bytes")


class EdgeMiddleware:
    """Request id, query-credential refusal, body size limit, access log."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        offered = headers.get("x-request-id", "")
        request_id = offered if _REQUEST_ID.match(offered) else f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status_holder = {"status": 0}
        over_limit = {"body": False}
        started_turn: dict[str, str] = {}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                for key, value in message.get("headers", []):
                    if key.lower() == b"x-turn-id":  # the turn a message started
                        started_turn["turn_id"] = value.decode("latin-1")
                message.setdefault("headers", [])
                message["headers"] = [
                    (k, v) for k, v in message["headers"] if k.lower() != b"x-request-id"
                ] + [(b"x-request-id", request_id.encode())]
                if over_limit["body"]:
                    # The server then drops the connection instead of reading (and
                    # discarding) the rest of a body that may be gigabytes long.
                    message["headers"].append((b"connection", b"close"))
            await send(message)

        structlog.contextvars.bind_contextvars(request_id=request_id)
        # Lines of this request read the caller and the path's ids from its scope as they
        # come to be known (core.log_context.add_request_context).
        scope_token = request_scope.set(scope)
        try:
            refusal = self._refusal(scope, headers, request_id)
            if refusal is not None:
                await refusal(scope, receive, send_with_id)
                return
            try:
                await self.app(scope, self._limited(receive, over_limit), send_with_id)
            except _BodyTooLarge:
                if status_holder["status"] == 0:
                    await self._too_large(request_id)(scope, receive, send_with_id)
            except Exception as exc:
                if status_holder["status"] != 0:
                    raise  # the response has started: nothing better to send
                await failure_response(exc, request_id)(scope, receive, send_with_id)
        finally:
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status_holder["status"],
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
                **started_turn,
            )
            request_scope.reset(scope_token)
            structlog.contextvars.unbind_contextvars("request_id")

    def _refusal(self, scope: Scope, headers: dict[str, str], request_id: str) -> ASGIApp | None:
        query = scope.get("query_string", b"").decode("latin-1")
        if query and any(k.lower() in _CREDENTIAL_PARAMS for k, _ in parse_qsl(query)):
            return problem_response(
                400,
                "credentials_in_query",
                "credentials are not accepted in the query string; use the Authorization header",
                request_id=request_id,
            )
        # No id contains U+0000 (`%00`), and PostgreSQL cannot even compare text holding one.
        if "\x00" in scope["path"]:
            return problem_response(404, "not_found", "no such resource", request_id=request_id)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return self._too_large(request_id)
        return None

    def _too_large(self, request_id: str) -> ASGIApp:
        # `Connection: close`, as for a body cut off while read (see `__call__`).
        return problem_response(
            413,
            "payload_too_large",
            f"the request body exceeds {self.max_body_bytes} bytes",
            request_id=request_id,
            headers={"Connection": "close"},
        )

    def _limited(self, receive: Receive, over_limit: dict[str, bool]) -> Receive:
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    over_limit["body"] = True
                    raise _BodyTooLarge(self.max_body_bytes)
            return message

        return limited_receive
