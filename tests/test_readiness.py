"""`/readyz` and `assistant doctor`: six checks with latencies, 503 naming the failed
dependency when PostgreSQL or Temporal is stopped and 200 again once it is back, `degraded`
when only the model endpoint is down, and the same diagnosis, with hints, on the command line."""

import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

import devstack
from api.app import create_app
from core.config import Settings
from devstack import EmbeddedPostgres, EmbeddedTemporal, free_port
from store.migrate import migrate
from tests.conftest import ROOT, _serve, subprocess_env

CHECKS = {"database", "temporal", "model", "mcp_servers", "disk", "memory"}


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An API app of the test's own, served on loopback, and a client of it."""
    port = free_port()
    server, task = await _serve(create_app(settings), port)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        await task


async def ready_until(client: httpx.AsyncClient, status_code: int) -> dict[str, Any]:
    """/readyz once it answers `status_code` (a restarted service takes a moment to be seen)."""
    for _ in range(300):
        answer = await client.get("/readyz")
        if answer.status_code == status_code:
            body: dict[str, Any] = answer.json()
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"/readyz never answered {status_code}: {answer.status_code} {answer.text}")


async def test_readyz_on_the_stack_is_ok_with_six_checks(api_url):
    async with httpx.AsyncClient(base_url=api_url) as client:
        answer = await client.get("/readyz")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok", body
    assert set(body["checks"]) >= CHECKS
    for name in CHECKS:
        check = body["checks"][name]
        assert check["status"] == "ok", (name, check)
        assert check["latency_ms"] >= 0
        assert check["message"]


async def test_model_endpoint_down_is_degraded_and_names_model(settings, pool):
    port = free_port()  # nothing listens there
    own = settings.model_copy(update={"openai_base_url": f"http://127.0.0.1:{port}/v1"})
    async with serving(own) as client:
        answer = await client.get("/readyz")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "degraded"
    assert body["checks"]["model"]["status"] == "degraded"
    assert "unreachable" in body["checks"]["model"]["message"]
    assert body["checks"]["database"]["status"] == body["checks"]["temporal"]["status"] == "ok"
    # No key is needed to read it: no address, no secret.
    assert str(port) not in answer.text and "127.0.0.1" not in answer.text
    assert "test-key" not in answer.text


class _Refusing(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that refuses every key."""

    def do_GET(self) -> None:
        body = json.dumps({"error": {"message": "Incorrect API key provided.", "code": "invalid_api_key"}})
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def refusing_model() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_refused_model_key_is_degraded_with_the_cause(settings, pool, refusing_model):
    own = settings.model_copy(update={"openai_base_url": refusing_model, "openai_api_key": "wrong-secret"})
    async with serving(own) as client:
        answer = await client.get("/readyz")
    assert answer.status_code == 200 and answer.json()["status"] == "degraded"
    model = answer.json()["checks"]["model"]
    assert model["status"] == "degraded" and "refused the API key (401)" in model["message"]
    assert "wrong-secret" not in answer.text


@pytest.fixture
def own_dir() -> Iterator[Path]:
    # Not under pytest's basetemp (see the `stack` fixture): the embedded PostgreSQL may run
    # as a user of its own.
    path = Path(tempfile.mkdtemp(prefix="assistant-readiness-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
async def test_readyz_is_503_naming_the_database_while_postgres_is_stopped(
    settings, pool, own_dir, monkeypatch
):
    pg = EmbeddedPostgres(own_dir)
    url = await asyncio.to_thread(pg.start)
    try:
        await migrate(url)
        async with serving(settings.model_copy(update={"database_url": url})) as client:
            body = await ready_until(client, 200)
            assert body["checks"]["database"]["status"] == "ok"

            await asyncio.to_thread(pg.stop)
            answer = await client.get("/readyz")
            assert answer.status_code == 503 and answer.headers["retry-after"]
            down = answer.json()
            assert down["status"] == "failed"
            assert down["checks"]["database"]["status"] == "failed"
            assert down["checks"]["database"]["message"]
            assert down["checks"]["temporal"]["status"] == "ok"
            assert str(pg.port) not in answer.text

            # The same server again, on the same port (the app's DATABASE_URL).
            monkeypatch.setattr(devstack, "free_port", lambda port=pg.port: port)
            await asyncio.to_thread(pg.start)
            monkeypatch.undo()
            back = await ready_until(client, 200)
            assert back["checks"]["database"]["status"] == "ok"
    finally:
        await asyncio.to_thread(pg.stop)


@pytest.mark.slow
async def test_readyz_is_503_naming_temporal_while_it_is_stopped(settings, pool, own_dir):
    temporal = EmbeddedTemporal(own_dir, persistent=False)
    address = await asyncio.to_thread(temporal.start)
    try:
        async with serving(settings.model_copy(update={"temporal_address": address})) as client:
            assert (await ready_until(client, 200))["checks"]["temporal"]["status"] == "ok"

            await asyncio.to_thread(temporal.stop)
            down = await ready_until(client, 503)
            assert down["checks"]["temporal"]["status"] == "failed"
            assert down["checks"]["database"]["status"] == "ok"

            await asyncio.to_thread(temporal.start)  # the same port again
            back = await ready_until(client, 200)
            assert back["checks"]["temporal"]["status"] == "ok"
    finally:
        await asyncio.to_thread(temporal.stop)


async def doctor(env: dict[str, str], *args: str) -> tuple[int, str]:
    """`assistant doctor` as an operator runs it (a child process)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        "doctor",
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_doctor_on_the_stack_says_every_check_is_ok(settings, api_url):
    code, out = await doctor(subprocess_env(settings))
    assert code == 0, out
    lines = out.splitlines()
    for name in (*CHECKS, "worker", "smtp"):
        line = next((line for line in lines if line.split()[1:2] == [name]), None)
        assert line is not None and line.startswith("ok"), (name, out)
        assert " ms " in line
    assert "hint:" not in out

    code, out = await doctor(subprocess_env(settings), "--json")
    assert code == 0
    diagnosis = json.loads(out)
    assert diagnosis["status"] == "ok"
    assert set(diagnosis["checks"]) >= {*CHECKS, "worker", "smtp"}
    assert all(c["latency_ms"] >= 0 and c["hint"] is None for c in diagnosis["checks"].values())


async def test_doctor_without_a_database_fails_with_a_hint(settings, api_url):
    port = free_port()
    env = subprocess_env(settings, DATABASE_URL=f"postgresql://postgres:pw-secret@127.0.0.1:{port}/postgres")
    code, out = await doctor(env)
    assert code == 1, out
    line = next(line for line in out.splitlines() if line.split()[1:2] == ["database"])
    assert line.startswith("FAIL")
    assert f"PostgreSQL unreachable at 127.0.0.1:{port}" in out
    assert "is `assistant dev` running" in out and "DATABASE_URL" in out
    assert "pw-secret" not in out
    # Temporal still answers: only the database is the problem.
    assert next(line for line in out.splitlines() if line.split()[1:2] == ["temporal"]).startswith("ok")

    code, out = await doctor(env, "--json")
    assert code == 1
    diagnosis = json.loads(out)
    assert diagnosis["status"] == "failed"
    assert diagnosis["checks"]["database"]["status"] == "failed"
    assert "assistant dev" in diagnosis["checks"]["database"]["hint"]


async def test_doctor_with_the_model_down_is_degraded_but_exits_0(settings, api_url):
    port = free_port()
    env = subprocess_env(settings, OPENAI_BASE_URL=f"http://user:pw-secret@127.0.0.1:{port}/v1")
    code, out = await doctor(env)
    assert code == 0, out
    line = next(line for line in out.splitlines() if line.split()[1:2] == ["model"])
    assert line.startswith("WARN") and "unreachable" in line
    assert f"is the model server running at http://127.0.0.1:{port}/v1" in out
    assert "pw-secret" not in out
    assert out.splitlines()[-1].startswith("degraded")
