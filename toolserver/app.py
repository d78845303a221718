"""The tool server's HTTP app: the simple HTTP tool protocol at `/mcp/discover` and
`/mcp/execute`, MCP's streamable HTTP endpoint at exactly `/mcp`, and `/healthz`.

The MCP endpoint is a route for the one path, not a mount, so that `/mcp/discover` and
`/mcp/execute` stay the simple protocol's. Every route but `/healthz` needs the bearer key.
Errors leave as the API's problem documents (api/problems.py), under the API's edge middleware
(request ids, body size limit, access log), so nothing a client sends produces a 500.
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.routing import Route

from api import problems
from api.middleware import EdgeMiddleware
from tools.base import ToolFailed, ToolTemporarilyFailed
from tools.netguard import is_loopback_host
from toolserver.auth import BearerKeyMiddleware
from toolserver.catalog import ServedTools
from toolserver.mcp_server import SERVER_NAME, SERVER_VERSION, build_mcp_server
from toolserver.protocol import (
    CallError,
    CallResult,
    Discovery,
    ExecuteData,
    ExecuteRequest,
    ExecuteResponse,
    ServerInfo,
    ToolCall,
    ToolDescription,
)

router = APIRouter(prefix="/mcp")


def create_app(tools: ServedTools, *, key: str, host: str, max_body_bytes: int) -> FastAPI:
    sessions = StreamableHTTPSessionManager(
        app=build_mcp_server(tools), security_settings=_transport_security(host)
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with sessions.run():
            yield
        await tools.aclose()

    app = FastAPI(
        title="Assistant tool server",
        version=SERVER_VERSION,
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.tools = tools
    problems.install(app)
    app.include_router(router)
    app.router.routes.append(Route("/mcp", endpoint=StreamableHTTPASGIApp(sessions)))

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    # Outermost last: the edge sets the request id the 401 carries.
    app.add_middleware(BearerKeyMiddleware, key=key, open_paths=frozenset({"/healthz"}))
    app.add_middleware(EdgeMiddleware, max_body_bytes=max_body_bytes)
    return app


@router.get("/discover")
async def discover(request: Request) -> Discovery:
    tools: ServedTools = request.app.state.tools
    return Discovery(
        server=ServerInfo(name=SERVER_NAME, version=SERVER_VERSION),
        tools=[
            ToolDescription(
                slug=spec.name,
                name=spec.name,
                description=spec.description,
                parameters=spec.input_schema,
                requires_confirmation=tools.needs_approval(spec.name),
            )
            for spec in tools.specs()
        ],
    )


@router.post("/execute", response_model_exclude_unset=True)
async def execute(body: ExecuteRequest, request: Request) -> ExecuteResponse:
    tools: ServedTools = request.app.state.tools
    results = await asyncio.gather(
        *(_run(tools, call, f"{body.request_id}:{n}") for n, call in enumerate(body.tools))
    )
    failed = sum(not result.successful for result in results)
    response = ExecuteResponse(
        request_id=body.request_id, successful=failed == 0, data=ExecuteData(results=results)
    )
    if failed:
        response.error = f"{failed} of {len(results)} tool calls failed"
    return response


async def _run(tools: ServedTools, call: ToolCall, call_id: str) -> CallResult:
    try:
        data = await tools.call(call.tool_slug, call.arguments, call_id)
    except ToolFailed as err:
        return _failed(call, err.code, err.message)
    except ToolTemporarilyFailed as err:
        return _failed(call, ToolTemporarilyFailed.code, f"{err}; the call may work if tried again later")
    return CallResult(tool_slug=call.tool_slug, successful=True, data=data)


def _failed(call: ToolCall, code: str, message: str) -> CallResult:
    return CallResult(tool_slug=call.tool_slug, successful=False, error=CallError(code=code, message=message))


def _transport_security(host: str) -> TransportSecuritySettings | None:
    """DNS-rebinding protection for a loopback server, as the MCP SDK sets it up by default.

    A server on another address is reached under names unknown here; the key protects it."""
    if not is_loopback_host(host):
        return None
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )
