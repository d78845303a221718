"""Security headers on every response (errors and refusals included), the web UI's and
the docs' own policies, and CORS only for ALLOWED_ORIGINS, preflight included."""

from collections.abc import AsyncIterator

import httpx
import pytest

from api.app import create_app
from api.security_headers import API_POLICY
from api.webui import CONTENT_SECURITY_POLICY
from core.config import Settings
from devstack import free_port
from tests.conftest import _serve, marker
from tests.helpers import create_conversation, read_sse

UI_ORIGIN = "https://ui.example.test"


def assert_hardened(response: httpx.Response, policy: str | None = API_POLICY) -> None:
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff", (response.url, headers)
    assert headers["referrer-policy"] == "no-referrer", (response.url, headers)
    assert headers["x-frame-options"] == "DENY", (response.url, headers)
    csp = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp, csp
    if policy is not None:
        assert csp == policy, (response.url, csp)


async def test_api_responses_carry_the_strict_policy(user, api_url):
    conv = await create_conversation(user.client, title="headers")
    anonymous = httpx.AsyncClient(base_url=api_url)
    async with anonymous:
        responses = [
            await user.client.get("/api/v1/auth/me"),
            await user.client.get(f"/api/v1/conversations/{conv['id']}"),
            await user.client.get("/api/v1/conversations/conv_nothing"),  # 404
            await user.client.post("/api/v1/conversations", json={"title": 5}),  # 422
            await user.client.get("/api/v1/conversations", params={"api_key": "x"}),  # 400 at the edge
            await user.client.post(
                "/api/v1/conversations",
                content=b" " * (2 << 20),
                headers={"Content-Type": "application/json"},
            ),  # 413 at the edge
            await anonymous.get("/api/v1/auth/me"),  # 401
            await anonymous.get("/healthz"),
            await anonymous.get("/openapi.json"),
            await anonymous.get("/static/app.js"),
        ]
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 200, 404, 422, 400, 413, 401, 200, 200, 200], statuses
    for response in responses:
        assert_hardened(response)


async def test_the_event_stream_carries_the_headers(user, model):
    tag = marker()
    model.script(tag, [{"kind": "reply", "content": "ok"}])
    conv = await create_conversation(user.client)
    events, response = await read_sse(
        user.client, "POST", f"/api/v1/conversations/{conv['id']}/messages", json={"content": f"hi {tag}"}
    )
    assert events[-1]["type"] == "complete"
    assert_hardened(response)


async def test_the_ui_keeps_its_own_policy_and_docs_allow_only_their_cdn(api_url):
    async with httpx.AsyncClient(base_url=api_url) as client:
        page = await client.get("/")
        docs = await client.get("/docs")
    assert page.status_code == 200 and docs.status_code == 200
    assert_hardened(page, CONTENT_SECURITY_POLICY)
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert_hardened(docs, policy=None)
    csp = docs.headers["content-security-policy"]
    assert csp.startswith("default-src 'none'") and "https://cdn.jsdelivr.net" in csp
    assert "https://cdn.jsdelivr.net" in docs.text, "Swagger UI still loads from the CDN the policy allows"


async def test_no_cors_without_allowed_origins(user):
    response = await user.client.get("/api/v1/auth/me", headers={"Origin": UI_ORIGIN})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


@pytest.fixture
async def cors_url(settings: Settings, worker: None) -> AsyncIterator[str]:
    """An API process of its own that allows one web origin."""
    port = free_port()
    server, task = await _serve(
        create_app(settings.model_copy(update={"allowed_origins": [UI_ORIGIN]})), port
    )
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def test_cors_answers_only_the_allowed_origin(user, cors_url):
    auth = {"Authorization": f"Bearer {user.key}"}
    async with httpx.AsyncClient(base_url=cors_url) as client:
        allowed = await client.get("/api/v1/auth/me", headers={**auth, "Origin": UI_ORIGIN})
        other = await client.get("/api/v1/auth/me", headers={**auth, "Origin": "https://evil.example.test"})
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        }
        allowed_pre = await client.options(
            "/api/v1/conversations", headers={**preflight, "Origin": UI_ORIGIN}
        )
        other_pre = await client.options(
            "/api/v1/conversations", headers={**preflight, "Origin": "https://evil.example.test"}
        )
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == UI_ORIGIN
    assert "x-request-id" in allowed.headers["access-control-expose-headers"].lower()
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    assert allowed_pre.status_code == 200, allowed_pre.text
    assert allowed_pre.headers["access-control-allow-origin"] == UI_ORIGIN
    assert "POST" in allowed_pre.headers["access-control-allow-methods"]
    assert "authorization" in allowed_pre.headers["access-control-allow-headers"].lower()
    assert other_pre.status_code == 400 and "access-control-allow-origin" not in other_pre.headers
    for response in (allowed, other, allowed_pre, other_pre):
        assert_hardened(response)
