"""Security headers on every response, errors and refusals included (pure ASGI, outermost).

The API answers JSON and SSE only, so its policy lets a response load and run nothing:
`default-src 'none'; frame-ancestors 'none'`. A response that sets its own policy keeps it:
the web UI at `/` (api/webui.py). `/docs` is Swagger UI as FastAPI serves it: its script and
stylesheet come from cdn.jsdelivr.net and it starts with an inline script, so its policy
allows exactly those; it shows no user data, which is what makes `'unsafe-inline'` there
acceptable. Self-hosting Swagger UI would tighten it; `/openapi.json` is all a tool needs.
"""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_POLICY = "default-src 'none'; frame-ancestors 'none'"
DOCS_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'unsafe-inline' https://cdn.jsdelivr.net",
        "style-src 'unsafe-inline' https://cdn.jsdelivr.net",
        "img-src 'self' data: https://fastapi.tiangolo.com",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ]
)
_COMMON = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeadersMiddleware:
    """Adds nosniff, no-referrer, DENY framing and a Content-Security-Policy where missing."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        policy = DOCS_POLICY if path == "/docs" or path.startswith("/docs/") else API_POLICY
        added = [*_COMMON, (b"content-security-policy", policy.encode())]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend((name, value) for name, value in added if name not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
