"""Liveness and readiness."""

import asyncio
import time
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _timed(check: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check(), timeout=3)
        result: dict[str, Any] = {"status": "ok"}
    except Exception as err:  # a failed check is reported, never raised
        # The error's type only: /readyz answers without a key, so no addresses or details.
        result = {"status": "failed", "message": f"unreachable ({type(err).__name__})"}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state

    async def database() -> None:
        await state.pool.fetchval("SELECT 1")

    async def temporal() -> None:
        client = await state.temporal.get()
        if client is None:
            raise ConnectionError("cannot connect to Temporal")
        await client.service_client.check_health(timeout=timedelta(seconds=2))

    checks = {"database": await _timed(database), "temporal": await _timed(temporal)}
    if not state.hub.listening:
        # Streams still work (they re-read every few seconds), only slower: degraded.
        checks["events"] = {"status": "degraded", "latency_ms": 0.0, "message": "event listener reconnecting"}
    failed = any(c["status"] == "failed" for c in checks.values())
    degraded = any(c["status"] == "degraded" for c in checks.values())
    return JSONResponse(
        {"status": "failed" if failed else "degraded" if degraded else "ok", "checks": checks},
        status_code=503 if failed else 200,
        headers={"Retry-After": "5"} if failed else None,
    )
