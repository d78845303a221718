"""Hostile input against a served API (uvicorn, as `assistant api` runs it): huge bodies,
deep JSON, huge headers, long ids, too many tools, bad pagination; each gets a 4xx, and
the API stays healthy. Event streams end after SSE_MAX_DURATION and resume losslessly."""

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from api.app import create_app
from core.config import Settings
from devstack import free_port
from tests.conftest import _serve, marker
from tests.helpers import create_conversation
from tests.test_approvals import email_args, script_email

MB = 1_000_000


async def raw_request(base_url: str, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send `head` (and `body`) on a fresh connection; the status, headers and body of the reply."""
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        try:
            writer.write(head + body)
            await writer.drain()
        except ConnectionError:
            pass  # the server may answer and close before reading everything we send
        raw = await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
    head_text, _, rest = raw.partition(b"\r\n\r\n")
    lines = head_text.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, rest


@pytest.fixture
async def healthy_after(api_url: str) -> AsyncIterator[None]:
    """After the test's hostile requests, the API still answers."""
    yield
    async with httpx.AsyncClient(base_url=api_url) as client:
        assert (await client.get("/healthz")).status_code == 200


async def test_a_50_mb_body_is_refused_before_it_is_read(user, api_url, healthy_after):
    head = (
        f"POST /api/v1/conversations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {user.key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {50 * MB}\r\n\r\n"
    ).encode()
    # Not one byte of the body is sent: the answer comes from the head alone.
    status, headers, body = await raw_request(api_url, head)
    assert status == 413
    assert headers["content-type"].startswith("application/problem+json")
    assert json.loads(body)["code"] == "payload_too_large"


async def test_a_50_mb_chunked_body_is_cut_off(user, api_url, healthy_after):
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(50):
            sent += MB
            yield b" " * MB

    try:
        response = await user.client.post(
            "/api/v1/conversations", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 413 and response.json()["code"] == "payload_too_large"
    except httpx.TransportError:
        pass  # the server may close while the client is still sending
    assert sent < 50 * MB, "the server stopped the upload long before its end"


@pytest.mark.parametrize("shape", ["list", "object"])
async def test_a_10000_deep_json_is_a_4xx(user, healthy_after, shape):
    deep = "[" * 10_000 + "]" * 10_000 if shape == "list" else '{"a":' * 10_000 + "1" + "}" * 10_000
    for method, path in (("POST", "/api/v1/conversations"), ("POST", "/api/v1/auth/keys")):
        response = await user.client.request(
            method, path, content=f'{{"metadata": {deep}}}', headers={"Content-Type": "application/json"}
        )
        assert 400 <= response.status_code < 500, response.text
        assert response.headers["content-type"].startswith("application/problem+json")


async def test_a_1_mb_header_is_refused_by_the_server(api_url, settings, healthy_after):
    head = f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * MB}\r\n\r\n".encode()
    status, _, body = await raw_request(api_url, head)
    assert status == 431
    assert json.loads(body)["code"] == "request_header_too_large"
    # Many headers that add up past the limit are refused the same way.
    many = "".join(f"X-H{i}: {'b' * 1000}\r\n" for i in range(settings.max_header_bytes // 1000 + 10))
    status, _, _ = await raw_request(api_url, f"GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode())
    assert status == 431


async def test_headers_under_the_limit_are_served(user, settings, healthy_after):
    cookie = "c" * (settings.max_header_bytes // 2)
    response = await user.client.get("/api/v1/auth/me", headers={"Cookie": cookie})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "template",
    [
        "/api/v1/conversations/{id}",
        "/api/v1/conversations/{id}/messages",
        "/api/v1/turns/{id}",
        "/api/v1/turns/{id}/events",
        "/api/v1/approvals/{id}",
    ],
)
async def test_a_10_kb_id_is_not_found(user, template, healthy_after):
    response = await user.client.get(template.format(id="conv_" + "x" * 10_000))
    assert response.status_code == 404, response.text
    assert response.json()["code"] == "not_found"


async def test_too_many_tools_is_a_422(user, healthy_after):
    response = await user.client.post("/api/v1/conversations", json={"tools": ["fetch_page"] * 201})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "validation_failed" and any(e["field"] == "tools" for e in body["errors"])


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "101"}, {"limit": "-1"}, {"limit": "1e9"}, {"order": "sideways"}],
)
async def test_bad_pagination_is_a_422(user, params, healthy_after):
    response = await user.client.get("/api/v1/conversations", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_failed"


@pytest.fixture
async def short_streams_url(settings: Settings, worker: None) -> AsyncIterator[str]:
    """An API process of its own whose event streams last one second."""
    port = free_port()
    app = create_app(settings.model_copy(update={"sse_max_duration": timedelta(seconds=1)}))
    server, task = await _serve(app, port)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def _stream_once(
    client: httpx.AsyncClient, turn_id: str, after: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """One connection to the turn's events: the events and the `retry:` values it carried."""
    events: list[dict[str, Any]] = []
    retries: list[str] = []
    headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after)}
    async with client.stream("GET", f"/api/v1/turns/{turn_id}/events", headers=headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
            elif line.startswith("retry:"):
                retries.append(line[6:].strip())
    return events, retries


async def test_a_stream_ends_at_its_maximum_duration_and_resumes_losslessly(user, model, short_streams_url):
    tag = marker()
    script_email(model, tag, email_args(tag), then="Sent it, as approved.")
    conv = await create_conversation(user.client)
    async with httpx.AsyncClient(
        base_url=short_streams_url, headers={"Authorization": f"Bearer {user.key}"}, timeout=60
    ) as client:
        started = await client.post(
            f"/api/v1/conversations/{conv['id']}/messages",
            json={"content": f"mail bob {tag}"},
            headers={"Accept": "application/json"},
        )
        assert started.status_code == 202, started.text
        turn_id = started.json()["turn"]["id"]

        # The turn waits for a person: the stream is closed at its maximum, with a hint.
        seen: list[dict[str, Any]] = []
        while not any(e["type"] == "approval_required" for e in seen):
            events, retries = await _stream_once(client, turn_id, seen[-1]["seq"] if seen else 0)
            assert retries, "a stream closed before the turn's end says when to reconnect"
            assert not any(e["type"] in ("complete", "error", "cancelled") for e in events)
            seen += events
        approval_id = next(e["approval_id"] for e in seen if e["type"] == "approval_required")
        decided = await client.post(f"/api/v1/approvals/{approval_id}", json={"decision": "approve"})
        assert decided.status_code == 200, decided.text

        # Resuming by Last-Event-ID gets everything after it, up to the terminal event.
        while not seen or seen[-1]["type"] not in ("complete", "error", "cancelled"):
            events, _ = await _stream_once(client, turn_id, seen[-1]["seq"])
            seen += events
    assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1)), "gap-free, nothing twice"
    assert seen[-1]["type"] == "complete" and seen[-1]["content"] == "Sent it, as approved."
