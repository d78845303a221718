"""The test tools over streamable HTTP:
`python -m tests.mcpservers.http_server --port N [--variant v2] [--token T]`.

With `--token`, every request must carry `Authorization: Bearer T` (HTTP 401 otherwise)."""

import argparse

import uvicorn
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.mcpservers.toolbox import build_server


def require_token(app: ASGIApp, token: str) -> ASGIApp:
    expected = f"Bearer {token}".encode()

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != expected:
            await PlainTextResponse("missing or wrong token", status_code=401)(scope, receive, send)
            return
        await app(scope, receive, send)

    return guarded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--variant", default="v1", choices=["v1", "v2"])
    parser.add_argument("--token")
    args = parser.parse_args()
    app: ASGIApp = build_server(args.variant).streamable_http_app(host="127.0.0.1")
    if args.token:
        app = require_token(app, args.token)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
