"""The API's Prometheus metrics: a pure ASGI middleware that measures every request, and
`GET /metrics` that serves them.

Requests are labelled by route template (`/api/v1/turns/{turn_id}`), never by raw path, so
ids do not become series; a request no route matched is `unmatched`. Event streams are
recognised by their response's content type, so the gauge of connected SSE clients needs no
help from the routes that stream. Under `assistant dev` (development only) `/metrics` also
carries the worker's exposition, fetched from its loopback metrics port
(`WORKER_METRICS_URL`), so one scrape covers every process of the stack.
"""

import hmac
import time

import httpx
from fastapi import APIRouter, Request, Response
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import Problem

REQUESTS = Counter(
    "app_requests", "HTTP requests by method, route template and status.", ["method", "route", "status"]
)
REQUEST_DURATION = Histogram(
    "app_request_duration_seconds",
    "HTTP request duration by method and route template (an event stream: until it closes).",
    ["method", "route"],
)
ACTIVE_REQUESTS = Gauge("app_active_requests", "HTTP requests being served now.")
SSE_CLIENTS = Gauge("sse_clients_connected", "Event streams open now.")
EVENT_LOG_LAG = Histogram(
    "event_log_lag_seconds",
    "From an event's row being written to its being sent on a stream that had caught up (live).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

UNMATCHED = "unmatched"
# The classic text format, which every Prometheus reads (and which concatenates safely).
_TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"

router = APIRouter(tags=["metrics"])


class MetricsMiddleware:
    """Counts, times and gauges every HTTP request by its route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500, "streaming": False}

        async def send_measured(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if content_type.startswith(b"text/event-stream"):
                    status["streaming"] = True
                    SSE_CLIENTS.inc()
            await send(message)

        ACTIVE_REQUESTS.inc()
        try:
            await self.app(scope, receive, send_measured)
        finally:
            ACTIVE_REQUESTS.dec()
            if status["streaming"]:
                SSE_CLIENTS.dec()
            template = _route_template(scope)
            method = scope["method"]
            REQUESTS.labels(method=method, route=template, status=str(status["code"])).inc()
            REQUEST_DURATION.labels(method=method, route=template).observe(time.perf_counter() - started)


def _route_template(scope: Scope) -> str:
    """The matched route's full path template. FastAPI keeps a route of an included router
    with its own path (`/turns/{turn_id}`) in `scope["route"]`; the full one (with the
    router's prefix) is in its effective route context, which tests/test_metrics.py checks."""
    context = scope.get("fastapi", {}).get("effective_route_context")
    template = getattr(context, "path_format", None) or getattr(scope.get("route"), "path", None)
    return template or UNMATCHED


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    settings = request.app.state.settings
    if settings.metrics_token is not None:
        expected = f"Bearer {settings.metrics_token.get_secret_value()}".encode()
        offered = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(offered, expected):
            raise Problem(
                401,
                "unauthenticated",
                "/metrics requires Authorization: Bearer <METRICS_TOKEN>",
                headers={"WWW-Authenticate": "Bearer"},
            )
    body = generate_latest(REGISTRY)
    if settings.is_development and settings.worker_metrics_url:
        body += await _worker_exposition(settings.worker_metrics_url)
    return Response(body, media_type=_TEXT_FORMAT)


async def _worker_exposition(url: str) -> bytes:
    """The worker's metrics, or a comment saying why they are missing (the API's still serve)."""
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            response = await client.get(url)
            response.raise_for_status()
    except httpx.HTTPError as err:
        return f"# the worker's metrics are unavailable: {type(err).__name__}\n".encode()
    return response.content
