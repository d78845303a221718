"""FastAPI app of the fake OpenAI-compatible model, plus ways to run it (async and threaded)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from types import TracebackType
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fakemodel.chunks import error_body
from fakemodel.demo import demo_answer
from fakemodel.demo_tools import demo_step
from fakemodel.messages import last_user_text, prompt_token_count
from fakemodel.respond import completion_response, error_response, install_log_filter, plan_for
from fakemodel.script import ErrorStep, RecordedRequest, ScriptBook, Step

MODEL_IDS = ("gpt-4o-mini", "gpt-4o", "assistant-fake")
_CREATED = 1_700_000_000


class _StreamOptions(BaseModel):
    include_usage: bool = False


class _ChatRequest(BaseModel):
    """The parts of a chat-completions body the fake model needs; the rest is ignored."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool | None = False
    stream_options: _StreamOptions | None = None


class _ScriptIn(BaseModel):
    match: str
    steps: list[Step] = Field(min_length=1)


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse(error_body(400, message), status_code=400)


def create_app(
    *, token_delay: float = 0.02, book: ScriptBook | None = None, api_key: str | None = None
) -> FastAPI:
    """Build the app; `api_key` (when given) is the only bearer token accepted."""
    install_log_filter()
    scripts = book if book is not None else ScriptBook()
    app = FastAPI(title="assistant fake model", docs_url=None, redoc_url=None)
    app.state.book = scripts
    # Set by the runners on shutdown so in-flight (possibly very slow) streams end at once.
    closing = threading.Event()
    app.state.closing = closing

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        data = [
            {"id": m, "object": "model", "created": _CREATED, "owned_by": "assistant-fake"} for m in MODEL_IDS
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            body = error_body(401, "Incorrect API key provided.", code="invalid_api_key")
            return JSONResponse(body, status_code=401)
        try:
            raw = json.loads(await request.body())
        except ValueError:
            return _bad_request("We could not parse the JSON body of your request.")
        if not isinstance(raw, dict):
            return _bad_request("The request body must be a JSON object.")
        try:
            chat = _ChatRequest.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return _bad_request(f"Invalid request at '{where}': {first['msg']}")
        script_id, step = scripts.take(raw)
        if script_id is None:
            step = demo_step(raw)
        if isinstance(step, ErrorStep):
            return error_response(step)
        demo = demo_answer(last_user_text(chat.messages) or "") if step is None else ""
        return await completion_response(
            plan_for(step, demo, token_delay),
            model=chat.model,
            stream=bool(chat.stream),
            include_usage=bool(chat.stream_options and chat.stream_options.include_usage),
            prompt_tokens=prompt_token_count(chat.messages),
            closing=closing,
        )

    @app.post("/_fake/scripts")
    async def add_script(script: _ScriptIn) -> dict[str, str]:
        return {"id": scripts.add(script.match, script.steps)}

    @app.delete("/_fake/scripts")
    async def clear_scripts() -> dict[str, bool]:
        scripts.clear()
        return {"ok": True}

    @app.get("/_fake/requests")
    async def recorded(match: str | None = None) -> list[RecordedRequest]:
        return scripts.requests(match)

    @app.delete("/_fake/requests")
    async def clear_recorded() -> dict[str, bool]:
        scripts.clear_requests()
        return {"ok": True}

    return app


class _Server(uvicorn.Server):
    """uvicorn server that leaves signal handling to whoever owns the event loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """Do not touch signal handlers: `serve` stops by cancellation instead."""
        yield


def _listen(host: str, port: int) -> socket.socket:
    # Binding here (not in uvicorn) turns a busy port into an OSError instead of sys.exit.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says so; without it a reused connection stalls ~40 ms (Nagle + delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _server(app: FastAPI, graceful: int) -> _Server:
    config = uvicorn.Config(
        app,
        log_config=None,  # keep the host application's logging setup
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=graceful,
    )
    return _Server(config)


async def serve(host: str, port: int, token_delay: float) -> None:
    """Serve the fake model until cancelled, then shut down gracefully."""
    sock = _listen(host, port)
    app = create_app(token_delay=token_delay)
    server = _server(app, graceful=2)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        app.state.closing.set()
        server.should_exit = True
        await task
        raise
    finally:
        sock.close()


class FakeModelServer:
    """Fake model on 127.0.0.1 in a background thread with its own event loop (for tests)."""

    def __init__(
        self,
        *,
        token_delay: float = 0.0,
        book: ScriptBook | None = None,
        api_key: str | None = None,
    ) -> None:
        self.book = book if book is not None else ScriptBook()
        self._app = create_app(token_delay=token_delay, book=self.book, api_key=api_key)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """OpenAI base URL of the running server."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 10.0) -> FakeModelServer:
        """Start serving; returns once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("FakeModelServer already started")
        self._app.state.closing.clear()
        sock = _listen("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        server = _server(self._app, graceful=1)
        self._server = server
        self._thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])),
            name=f"fakemodel-{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("fake model server failed to start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        if self._server is not None:
            self._app.state.closing.set()
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def script(self, match: str, steps: Sequence[Step | Mapping[str, Any]]) -> str:
        """Script replies for requests whose last user message contains `match`."""
        return self.book.add(match, steps)

    def requests(self, match: str | None = None) -> list[RecordedRequest]:
        """Recorded chat-completions requests, oldest first."""
        return self.book.requests(match)

    def reset(self) -> None:
        """Forget scripts and recorded requests (handy with a shared server)."""
        self.book.reset()

    def __enter__(self) -> FakeModelServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
