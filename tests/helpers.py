"""Small factories and SSE readers used across tests."""

import json
from typing import Any

import httpx
from httpx_sse import aconnect_sse


async def create_conversation(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await client.post("/api/v1/conversations", json=fields)
    assert response.status_code == 201, response.text
    return response.json()


async def start_turn_json(client: httpx.AsyncClient, conversation_id: str, content: str) -> dict[str, Any]:
    response = await client.post(
        f"/api/v1/conversations/{conversation_id}/messages",
        json={"content": content},
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 202, response.text
    return response.json()


async def read_sse(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    stop_after: int | None = None,
    **kwargs: Any,
) -> tuple[list[dict[str, Any]], httpx.Response]:
    """Events of an SSE response (until it closes, or after `stop_after` events)."""
    events: list[dict[str, Any]] = []
    async with aconnect_sse(client, method, url, **kwargs) as source:
        async for sse in source.aiter_sse():
            event = json.loads(sse.data)
            assert sse.id == str(event["seq"]) and sse.event == event["type"]
            events.append(event)
            if stop_after is not None and len(events) >= stop_after:
                break
        return events, source.response


async def wait_turn(
    client: httpx.AsyncClient, turn_id: str, within: float = 60, until: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Poll with ?wait until the turn has ended (or reached a status of `until`)."""
    import time

    deadline = time.monotonic() + within
    while True:
        response = await client.get(f"/api/v1/turns/{turn_id}", params={"wait": 10})
        assert response.status_code == 200, response.text
        turn = response.json()
        if turn["status"] in ("completed", "failed", "cancelled", *until) or time.monotonic() > deadline:
            return turn


def text_of(events: list[dict[str, Any]]) -> str:
    """The text a client rebuilds from token events, honouring `reset`."""
    text = ""
    for event in events:
        if event["type"] == "reset":
            text = ""
        elif event["type"] == "token":
            assert event["index"] == len(text), (event, len(text))
            text += event["content"]
    return text


async def wait_until_serving(url: str, proc: Any) -> None:
    """Wait for an `assistant api` child process to answer /healthz (it must not exit first)."""
    import asyncio

    async with httpx.AsyncClient() as client:
        for _ in range(300):
            assert proc.poll() is None, "the API process exited early"
            try:
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not start")


def git_repository(path: Any) -> Any:
    """A git repository at `path` with one commit ("the first commit"), for mcp-server-git."""
    import subprocess

    git = ["git", "-c", "user.name=Tester", "-c", "user.email=tester@example.test", "-C", str(path)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "the first commit"], check=True)
    return path
