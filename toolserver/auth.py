"""Bearer-key authentication for every HTTP route of the tool server but its health check.

One shared key, from TOOL_SERVER_KEY or generated at start. Keys are compared as SHA-256
digests with `hmac.compare_digest`, so the time taken says nothing about the key, its length
included. The check sits in front of routing, so the MCP endpoint is covered like the rest.
"""

import hashlib
import hmac
import secrets

from starlette.types import ASGIApp, Receive, Scope, Send

from api.problems import problem_response
from core.errors import ConfigurationError
from tools.netguard import is_loopback_host


def server_key(configured: str | None, host: str) -> tuple[str, bool]:
    """The key to require and whether it was generated now (and must be shown to the operator).

    A generated key is fine for a server only this machine can reach; anywhere else the key
    must be set, so that clients can be given it before the server starts."""
    if configured and configured.strip():
        return configured.strip(), False
    if not is_loopback_host(host):
        raise ConfigurationError(
            f"TOOL_SERVER_KEY must be set to serve tools on {host}, a non-loopback address"
        )
    return secrets.token_urlsafe(32), True


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


class BearerKeyMiddleware:
    """401 (problem+json, `WWW-Authenticate: Bearer`) unless `Authorization: Bearer <key>`."""

    def __init__(self, app: ASGIApp, *, key: str, open_paths: frozenset[str]) -> None:
        self.app = app
        self._key_digest = _digest(key)
        self._open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._open_paths:
            await self.app(scope, receive, send)
            return
        detail = self._refusal(scope)
        if detail is None:
            await self.app(scope, receive, send)
            return
        response = problem_response(
            401,
            "unauthenticated",
            detail,
            request_id=scope.get("state", {}).get("request_id"),
            headers={"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)

    def _refusal(self, scope: Scope) -> str | None:
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"").decode("latin-1")
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            return "a key is required: Authorization: Bearer <TOOL_SERVER_KEY>"
        if not hmac.compare_digest(_digest(secret.strip()), self._key_digest):
            return "the key is not this tool server's"
        return None
