"""`Idempotency-Key` on POST (API.md, "Conventions").

Generic POSTs are handled by `IdempotencyMiddleware`, which replays the stored response.
`POST …/messages` is handled in its route instead, inside the transaction that creates
the turn, so a replay can answer with the same turn's event stream.
"""

import hashlib
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import Problem, problem_response
from store import idempotency, users
from store.idempotency import Record

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255


def request_hash(method: str, path: str, body: bytes) -> str:
    """Same method, path and JSON body (whatever its formatting) → same hash."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, RecursionError):  # not JSON (or nested past the parser): the route refuses it
        canonical = body
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).hexdigest()


def check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise Problem(
            422,
            "validation_failed",
            "Idempotency-Key must be 1-255 printable characters",
            errors=[
                {
                    "field": "Idempotency-Key",
                    "location": "header",
                    "message": "1-255 printable characters",
                    "type": "string",
                }
            ],
        )
    return key


def conflict_of(record: Record, expected_hash: str) -> Problem | None:
    """The problem to answer for an existing record, or None if it may be replayed."""
    if record.request_hash != expected_hash:
        return Problem(
            422, "idempotency_key_reused", "this Idempotency-Key was used with a different request"
        )
    if record.response_status is None:
        return Problem(
            409,
            "idempotency_key_in_use",
            "a request with this Idempotency-Key is still in progress",
        )
    return None


class IdempotencyMiddleware:
    """Stores and replays responses of POSTs that carry an Idempotency-Key."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or HEADER not in headers
            or not scope["path"].startswith("/api/v1/")
            or scope["path"].endswith("/messages")
        ):
            await self.app(scope, receive, send)
            return
        request_id = scope.get("state", {}).get("request_id")
        try:
            key = check_key(headers[HEADER])
        except Problem as problem:
            await problem_response(
                problem.status, problem.code, problem.detail, request_id=request_id, **problem.extra
            )(scope, receive, send)
            return
        body = await _read_body(receive)
        pool = scope["app"].state.pool
        scheme, _, secret = headers.get("authorization", "").partition(" ")
        found = await users.authenticate(pool, secret=secret.strip()) if scheme.lower() == "bearer" else None
        if found is None:  # the route answers 401 itself
            await self.app(scope, _replay_body(body), send)
            return
        user_id = found[0].id
        digest = request_hash("POST", scope["path"], body)
        record = await idempotency.reserve(
            pool, user_id=user_id, key=key, method="POST", path=scope["path"], request_hash=digest
        )
        if record is not None:
            refusal = conflict_of(record, digest)
            if refusal is not None:
                await problem_response(refusal.status, refusal.code, refusal.detail, request_id=request_id)(
                    scope, receive, send
                )
                return
            await _send_stored(send, record)
            return
        await self._run_and_store(scope, body, send, pool, user_id, key)

    async def _run_and_store(
        self, scope: Scope, body: bytes, send: Send, pool: Any, user_id: str, key: str
    ) -> None:
        # The response is held back until the key's record is settled: a client that acts on
        # it at once (follows a redirect, retries) must find the key completed or free.
        held: list[Message] = []
        captured: dict[str, Any] = {"status": 0, "headers": [], "body": b""}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["headers"] = message.get("headers", [])
            elif message["type"] == "http.response.body":
                captured["body"] += message.get("body", b"")
            held.append(message)

        try:
            await self.app(scope, _replay_body(body), capture)
        except BaseException:
            await idempotency.release(pool, user_id=user_id, key=key)
            raise
        status = captured["status"]
        # A redirect (FastAPI's trailing-slash one) did nothing: the key stays free for the
        # redirected request, which a client following it sends with the same key. So does a
        # 429: the request was refused for now, and retrying it later must be able to succeed.
        if 200 <= status < 300 or (400 <= status < 500 and status != 429):
            kept = {
                k.decode(): v.decode()
                for k, v in captured["headers"]
                if k.lower() in (b"content-type", b"location")
            }
            await idempotency.complete(
                pool,
                user_id=user_id,
                key=key,
                status=status,
                body=_without_secret(captured["body"]),
                headers=kept,
            )
        else:
            await idempotency.release(pool, user_id=user_id, key=key)
        for message in held:
            await send(message)


def _without_secret(body: bytes) -> bytes:
    """The body to keep for replays, less any `secret` or `api_key` (a new API key is shown
    once, and only its hash is ever stored): a replay of `POST /auth/keys` or `POST /users`
    returns the key or the user without it."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if isinstance(parsed, dict) and {"secret", "api_key"} & parsed.keys():
        parsed.pop("secret", None)
        parsed.pop("api_key", None)
        return json.dumps(parsed).encode()
    return body


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay_body(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def _send_stored(send: Send, record: Record) -> None:
    headers = [(k.encode(), v.encode()) for k, v in (record.response_headers or {}).items()]
    headers.append((b"idempotent-replayed", b"true"))
    body = record.response_body or b""
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": record.response_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
