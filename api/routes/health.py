"""Liveness and readiness (API.md, "/healthz", "/readyz"); the checks are core/health.py."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from core import health

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Six checks, concurrently: 503 when `database` or `temporal` fails, `degraded` (200)
    when only the others do. Messages name the cause, never an address or a secret."""
    state = request.app.state
    report = await health.run_checks(
        health.standard_checks(
            state.settings,
            fetchval=state.pool.fetchval,
            fetch=state.pool.fetch,
            temporal_client=state.temporal.get,
        )
    )
    body: dict[str, Any] = report.public()
    if not state.hub.listening:
        # Streams still work (they re-read every few seconds), only slower: degraded.
        body["checks"]["events"] = {
            "status": "degraded",
            "latency_ms": 0.0,
            "message": "event listener reconnecting",
        }
        if body["status"] == "ok":
            body["status"] = "degraded"
    failed = report.status == "failed"
    return JSONResponse(
        body, status_code=503 if failed else 200, headers={"Retry-After": "5"} if failed else None
    )
