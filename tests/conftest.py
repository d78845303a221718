"""Shared fixtures: real PostgreSQL and Temporal (embedded), the built-in model over HTTP,
a worker and an API server on loopback. Everything is per session; tests isolate by user
and conversation, and script the model by a unique marker in their message."""

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr
from temporalio.client import Client

from api.app import create_app
from api.server import server_config
from core.config import Settings
from devstack import EmbeddedPostgres, EmbeddedTemporal, free_port
from fakemodel import FakeModelServer
from store import users
from store.db import Pool, create_pool
from store.migrate import migrate
from tests.browser import browser, browsing
from tests.imapserver import DovecotServer, ImapUser
from tests.loopback_only import AccessLog, loopback_only
from tests.mailserver import MailServer
from tests.pageserver import PageServer
from tests.searchserver import SearchServer
from tests.shopdb import ShopDatabase
from tools.registry import build_registry
from worker import build_worker, keep_catalog_fresh, publish_tools

ROOT = Path(__file__).resolve().parent.parent
# Fixtures, imported so that every test module can use them.
__all__ = ["browser", "browsing", "loopback_only"]


@pytest.fixture(autouse=True)
def _network_stays_on_loopback(loopback_only: AccessLog) -> AccessLog:
    """Every test fails if Python code in this process tries to reach beyond loopback."""
    return loopback_only


@dataclass
class Stack:
    database_url: str
    temporal_address: str
    data_dir: Path


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    # Not under pytest's basetemp: a second pytest session on the machine resets
    # /tmp/pytest-of-<user> to 0700, which would cut the embedded PostgreSQL (running as its
    # own user when we are root) off from its data directory mid-run.
    data_dir = Path(tempfile.mkdtemp(prefix="assistant-tests-"))
    stops: list[Any] = [lambda: shutil.rmtree(data_dir, ignore_errors=True)]
    database_url = os.environ.get("TEST_DATABASE_URL")
    if not database_url:
        pg = EmbeddedPostgres(data_dir)
        database_url = pg.start()
        stops.append(pg.stop)
    temporal = EmbeddedTemporal(data_dir, persistent=False)
    temporal_address = temporal.start()
    stops.append(temporal.stop)
    try:
        yield Stack(database_url, temporal_address, data_dir)
    finally:
        for stop in reversed(stops):
            stop()


@pytest.fixture(scope="session")
def model() -> Iterator[FakeModelServer]:
    server = FakeModelServer(token_delay=0.0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mail() -> Iterator[MailServer]:
    server = MailServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pages() -> Iterator[PageServer]:
    """Web pages for fetch_page; the session's worker may reach loopback to read them."""
    with PageServer() as server:
        yield server


@pytest.fixture(scope="session")
def search() -> Iterator[SearchServer]:
    server = SearchServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mailbox() -> Iterator[DovecotServer]:
    """The IMAP mailbox search_emails reads (Dovecot); tests deliver what they search for."""
    server = DovecotServer([ImapUser("assistant", "mailbox-secret")]).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def shop(stack: Stack) -> AsyncIterator[ShopDatabase]:
    """A database for query_database, read through the role docs/TOOLS.md describes."""
    async with ShopDatabase.created(stack.database_url) as database:
        yield database


@pytest.fixture(scope="session")
def settings(
    stack: Stack,
    model: FakeModelServer,
    mail: MailServer,
    search: SearchServer,
    shop: ShopDatabase,
    mailbox: DovecotServer,
) -> Settings:
    return Settings(
        smtp_host="127.0.0.1",
        smtp_port=mail.port,
        smtp_tls="none",
        smtp_from="Assistant <assistant@example.test>",
        search_backend="searxng",
        search_url=search.base_url,
        query_database_url=SecretStr(shop.reader_dsn),
        query_timeout=timedelta(seconds=5),
        fetch_allow_private_networks=True,
        **mailbox.imap_settings("assistant", tls="starttls"),
        database_url=stack.database_url,
        temporal_address=stack.temporal_address,
        openai_base_url=model.base_url,
        openai_api_key="test-key",
        temporal_task_queue=f"tests-{uuid.uuid4().hex[:8]}",
        assistant_data_dir=stack.data_dir,
        assistant_env="development",
        sse_ping_interval=timedelta(seconds=15),
        # The suite sends bursts with one key per user: limits are tested on apps of their own.
        rate_limit_requests="",
        rate_limit_turns="",
        max_active_turns_per_user=0,
        max_streams_per_key=0,
    )


@pytest.fixture(scope="session")
async def pool(settings: Settings) -> AsyncIterator[Pool]:
    assert settings.database_url
    await migrate(settings.database_url)
    pool = await create_pool(settings.database_url)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def temporal(settings: Settings) -> Client:
    assert settings.temporal_address
    return await Client.connect(settings.temporal_address)


@pytest.fixture(scope="session")
async def worker(temporal: Client, pool: Pool, settings: Settings) -> AsyncIterator[None]:
    registry = build_registry(settings, pool)
    await publish_tools(pool, registry)
    # As `assistant worker` does, so the catalog stays fresh all session.
    publisher = asyncio.create_task(keep_catalog_fresh(pool, registry))
    async with build_worker(temporal, pool, settings, registry):
        yield
    publisher.cancel()


class InProcessServer(uvicorn.Server):
    """A server inside the test process leaves signal handlers alone. uvicorn's own swaps the
    SIGTERM handler and restores it on exit, so servers stopped out of order leave it bound
    to a stopped server; sse-starlette reads that server's `should_exit` to end every stream
    of the process, and so would cut the session API's streams."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _serve(app: Any, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """Serve a `create_app` app as `assistant api` does (api.server: the request-head limit)."""
    config = server_config(
        app, app.state.settings, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on"
    )
    server = InProcessServer(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    return server, task


@pytest.fixture(scope="session")
async def api_url(settings: Settings, pool: Pool, worker: None) -> AsyncIterator[str]:
    port = free_port()
    server, task = await _serve(create_app(settings), port)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


@dataclass
class User:
    id: str
    key: str
    client: httpx.AsyncClient


@pytest.fixture
async def make_user(pool: Pool, api_url: str) -> AsyncIterator[object]:
    clients: list[httpx.AsyncClient] = []

    async def factory(name: str = "tester") -> User:
        user = await users.create_user(pool, name=name)
        key = await users.create_key(pool, user_id=user.id, name="test")
        client = httpx.AsyncClient(
            base_url=api_url, headers={"Authorization": f"Bearer {key.secret}"}, timeout=60
        )
        clients.append(client)
        return User(user.id, key.secret, client)

    yield factory
    for client in clients:
        await client.aclose()


@pytest.fixture
async def user(make_user: object) -> User:
    return await make_user()  # type: ignore[operator]


@pytest.fixture
def own_queue(settings: Settings, tmp_path: Path) -> tuple[dict[str, str], Path]:
    """The environment of `assistant` child processes on a task queue of their own (so that
    killing them touches nothing else of the suite), and a directory for their logs."""
    return subprocess_env(settings, TEMPORAL_TASK_QUEUE=f"own-{uuid.uuid4().hex[:8]}"), tmp_path


def marker() -> str:
    """A unique string to put in a message, so a model script matches only this test."""
    return f"[t-{uuid.uuid4().hex[:10]}]"


def subprocess_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for an `assistant` child process using the test stack."""
    env = dict(os.environ)
    env.update(
        {
            "DATABASE_URL": settings.database_url or "",
            "TEMPORAL_ADDRESS": settings.temporal_address or "",
            "OPENAI_BASE_URL": settings.openai_base_url or "",
            "OPENAI_API_KEY": "test-key",
            "TEMPORAL_TASK_QUEUE": settings.temporal_task_queue,
            "ASSISTANT_DATA_DIR": str(settings.assistant_data_dir),
            "LOG_FORMAT": "json",
            "PYTHONPATH": str(ROOT),
            "SMTP_HOST": settings.smtp_host or "",
            "SMTP_PORT": str(settings.smtp_port or ""),
            "SMTP_TLS": settings.smtp_tls,
            "SMTP_FROM": settings.smtp_from or "",
            "RATE_LIMIT_REQUESTS": "off",
            "RATE_LIMIT_TURNS": "off",
            "MAX_ACTIVE_TURNS_PER_USER": "0",
            "MAX_STREAMS_PER_KEY": "0",
        }
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def assistant_process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """An `assistant …` child process, killed at the end if still running."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
