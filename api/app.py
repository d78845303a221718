"""The app factory: routers under /api/v1, problem handlers, middleware, and a lifespan
that owns the pool, the Temporal connector and the event hub."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import metrics, openapi, problems, webui
from api.hub import EventHub
from api.idempotency import IdempotencyMiddleware
from api.middleware import EdgeMiddleware
from api.ratelimit import RateLimitHeaders, RateLimits
from api.routes import approvals, auth, conversations, health, messages, tools, turns, users
from api.security_headers import SecurityHeadersMiddleware
from api.temporal import TemporalConnector
from core import telemetry
from core.config import Settings
from store.db import create_pool


def create_app(settings: Settings) -> FastAPI:
    dsn = settings.require_database_url()
    temporal_address = settings.require_temporal_address()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.pool = await create_pool(dsn, max_size=20)
        app.state.rate_limits = RateLimits(settings, app.state.pool)
        await app.state.rate_limits.start()
        app.state.temporal = TemporalConnector(temporal_address, settings.temporal_namespace)
        app.state.hub = EventHub(dsn)
        await app.state.hub.start()
        await app.state.temporal.get()
        try:
            yield
        finally:
            await app.state.hub.stop()
            await app.state.rate_limits.stop()
            await app.state.pool.close()

    app = FastAPI(
        title="Durable Assistant API",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    # Known before start-up too: api.server reads its limits from it.
    app.state.settings = settings
    problems.install(app)
    v1 = APIRouter(prefix="/api/v1")
    for module in (auth, conversations, messages, turns, approvals, tools, users):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(health.router)
    app.include_router(metrics.router)
    webui.install(app)
    openapi.install(app)

    # Outermost first: the edge sets the request id and limits the body before anything reads it.
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "Last-Event-ID",
                "X-Request-ID",
            ],
            expose_headers=[
                "X-Request-ID",
                "X-Turn-ID",
                "Location",
                "Idempotent-Replayed",
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
            ],
        )
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(EdgeMiddleware, max_body_bytes=settings.max_request_bytes)
    # Outermost of all, so that even the edge's refusals (400, 413) carry the headers.
    app.add_middleware(SecurityHeadersMiddleware)
    # Around everything, so every response is counted and timed as the client sees it.
    app.add_middleware(metrics.MetricsMiddleware)
    telemetry.instrument_app(app)  # when tracing is on (OTEL_EXPORTER_OTLP_ENDPOINT)
    return app
