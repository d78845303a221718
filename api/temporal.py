"""A Temporal client connected lazily and reconnected on demand.

The API must start, and answer `/healthz` and reads, while Temporal is unreachable;
routes that need Temporal get a 503 until it answers.
"""

import asyncio

import structlog
from temporalio.client import Client

from core import telemetry

log = structlog.get_logger(__name__)


class TemporalConnector:
    def __init__(self, address: str, namespace: str) -> None:
        self._address = address
        self._namespace = namespace
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Client | None:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                try:
                    self._client = await asyncio.wait_for(
                        # Traced when tracing is on, so a turn's workflow spans join the request's trace.
                        Client.connect(
                            self._address,
                            namespace=self._namespace,
                            interceptors=telemetry.temporal_interceptors(),
                        ),
                        timeout=5,
                    )
                except Exception as err:
                    log.warning("cannot connect to Temporal", error=str(err))
                    return None
            return self._client
