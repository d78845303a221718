"""A real HTTP server on a loopback address for tests: scripted replies, every request recorded."""

import contextlib
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from devstack import free_port


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # A body made piece by piece (large or slow pages), sent until the connection closes.
    pieces: Callable[[], Iterable[bytes]] | None = None
    piece_delay: float = 0.0
    # Seconds of silence before the status line.
    delay: float = 0.0


@dataclass
class Received:
    path: str
    host: str | None


@dataclass
class Delivery:
    """How much of a piecewise body went out, and whether the client left before the end."""

    path: str
    bytes_sent: int = 0
    aborted: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class PageServer:
    """Serves routes by exact path (404 otherwise); start/stop it, or use it as a context manager."""

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self._ssl_context = ssl_context
        self.received: list[Received] = []
        self.deliveries: list[Delivery] = []
        self._routes: dict[str, Reply] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def url(self, path: str = "/") -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}{path}"

    @property
    def paths(self) -> list[str]:
        with self._lock:
            return [request.path for request in self.received]

    def route(self, path: str, reply: Reply) -> None:
        self._routes[path] = reply

    def page(
        self,
        path: str,
        body: str | bytes,
        content_type: str = "text/html; charset=utf-8",
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.route(path, Reply(status, {"Content-Type": content_type, **(headers or {})}, data))

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.route(path, Reply(status, {"Location": location}))

    def start(self) -> "PageServer":
        server = ThreadingHTTPServer((self.host, self.port), self._handler_class())
        server.daemon_threads = True
        if self._ssl_context is not None:
            # The handshake happens in the handler's thread, on its first read.
            server.socket = self._ssl_context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        # A short poll interval: `stop` waits for the next poll, and tests start many servers.
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.02,), name="pageserver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "PageServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        pages = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle(self) -> None:
                # fetch_page hangs up on pages it refuses or caps, mid-answer or between requests.
                with contextlib.suppress(ConnectionError):
                    super().handle()

            def do_GET(self) -> None:
                with pages._lock:
                    pages.received.append(Received(self.path, self.headers.get("Host")))
                reply = pages._routes.get(self.path) or Reply(
                    404, {"Content-Type": "text/plain"}, b"no such page"
                )
                if reply.delay and pages._stopping.wait(reply.delay):
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.pieces is None:
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                    return
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                self._send_pieces(reply)

            def _send_pieces(self, reply: Reply) -> None:
                assert reply.pieces is not None
                delivery = Delivery(self.path)
                with pages._lock:
                    pages.deliveries.append(delivery)
                try:
                    for piece in reply.pieces():
                        if reply.piece_delay and pages._stopping.wait(reply.piece_delay):
                            break
                        self.wfile.write(piece)
                        self.wfile.flush()
                        delivery.bytes_sent += len(piece)
                except (BrokenPipeError, ConnectionResetError):
                    delivery.aborted = True
                finally:
                    delivery.done.set()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: tests read `received` instead."""

        return Handler
