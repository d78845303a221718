"""Service-level behaviour: health, OpenAPI, keep-alive pings, and turns left queued."""

import posixpath
import re

import httpx

from devstack import free_port
from store import turns
from tests.conftest import assistant_process, marker, subprocess_env
from tests.helpers import create_conversation, wait_turn, wait_until_serving
from worker import reconcile_queued_turns


async def test_healthz_and_readyz(api_url):
    async with httpx.AsyncClient(base_url=api_url) as client:
        health = await client.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert health.headers["x-request-id"]
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "ok"
        for name in ("database", "temporal"):
            assert body["checks"][name]["status"] == "ok"
            assert body["checks"][name]["latency_ms"] >= 0


async def test_openapi_describes_the_routes(api_url):
    async with httpx.AsyncClient(base_url=api_url) as client:
        spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in (
        "/api/v1/conversations",
        "/api/v1/conversations/{conversation_id}/messages",
        "/api/v1/turns/{turn_id}",
        "/api/v1/turns/{turn_id}/events",
        "/api/v1/turns/{turn_id}/cancel",
        "/api/v1/auth/keys",
    ):
        assert path in paths


async def test_idle_stream_gets_ping_comments(settings, user, model, tmp_path):
    """A stream that waits on a slow model receives `: ping` comments at the configured interval."""
    tag = marker()
    model.script(tag, [{"kind": "reply", "content": "late", "delay_ms": 2500}])
    port = free_port()
    env = subprocess_env(settings, SSE_PING_INTERVAL="300ms")
    with assistant_process(["api", "--port", str(port)], env, tmp_path / "api.log") as api:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {user.key}"}
        ) as client:
            await wait_until_serving(base, api)
            conv = await create_conversation(client)
            lines: list[str] = []
            async with client.stream(
                "POST",
                f"/api/v1/conversations/{conv['id']}/messages",
                json={"content": f"x {tag}"},
                timeout=30,
            ) as response:
                async for line in response.aiter_lines():
                    lines.append(line)
                    if line.startswith("event: complete"):
                        break
    assert lines.count(": ping") >= 3


async def test_turn_left_queued_is_started_by_the_reconciler(user, model, pool, temporal, settings):
    """An API process that died between committing a turn and starting its workflow loses nothing."""
    tag = marker()
    model.script(tag, [{"kind": "reply", "content": "recovered"}])
    conv = await create_conversation(user.client)
    async with pool.acquire() as conn, conn.transaction():
        started = await turns.start_turn(
            conn, user_id=user.id, conversation_id=conv["id"], content=f"hi {tag}"
        )
    assert started is not None
    _message, turn = started
    assert await reconcile_queued_turns(temporal, pool, settings, grace_seconds=0) >= 1
    done = await wait_turn(user.client, turn.id)
    assert done["status"] == "completed"
    assert done["output"]["content"] == "recovered"


async def test_web_page_is_served_with_every_file_it_loads(api_url):
    """The page, its scripts and styles, and every module they import, served as what they are."""
    async with httpx.AsyncClient(base_url=api_url) as client:
        page = await client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        wanted = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
        assert "/static/app.js" in wanted and "/static/vendor/purify.min.js" in wanted
        seen = set()
        while wanted:
            path = wanted.pop()
            if path in seen:
                continue
            seen.add(path)
            response = await client.get(path)
            assert response.status_code == 200, path
            kind = "text/css" if path.endswith(".css") else "javascript"
            assert kind in response.headers["content-type"], (path, response.headers["content-type"])
            base = path.rsplit("/", 1)[0]
            for imported in re.findall(r'from\s+"(\./[^"]+)"', response.text):
                wanted.append(posixpath.normpath(f"{base}/{imported}"))
    assert len([p for p in seen if p.startswith("/static/js/")]) >= 3, seen
