"""How an API process is served: uvicorn, with a limit on the size of each request's head.

The request line and headers reach the app only once the server has read them all, so their
size can only be limited in the server. uvicorn's pure-Python h11 protocol has such a limit
(`h11_max_incomplete_event_size`, 16 KiB by default, answered with a plain-text 400); its
httptools protocol, the one `uvicorn[standard]` runs and ours, has none and would buffer a
header of any size. `HeadLimitedHttpTools` counts the bytes read while a head is incomplete and answers
431 once they pass `MAX_HEADER_BYTES`, having buffered at most that plus one read.
"""

import json
import uuid
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.problems import PROBLEM_TYPE_BASE
from core.config import Settings

_LINGER_SECONDS = 2.0


class _HeadTooLarge(Exception):
    """Raised from a parser callback; httptools turns it into a parse error."""


class HeadLimitedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head larger than the configured limit.

    Two counts: the parsed request line and headers (exact, checked when the head is
    complete), and the bytes of reads that left a head incomplete (what httptools is
    buffering meanwhile, so a head that never ends is cut off too).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limit: int = getattr(self.config, "max_header_bytes", 0) or 1 << 62
        self._in_head = True  # before the first request's headers are complete
        self._head_bytes = 0
        self._buffered = 0
        self._head_done = False
        self._too_large = False
        self._refused = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._buffered = 0

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_done = True
        if self._head_bytes > self._limit:
            self._too_large = True
            raise _HeadTooLarge
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a 431: what the client still sends is read and dropped
        self._head_done = False
        super().data_received(data)
        # Bytes of a read that completed a head belong partly to the body: count only reads
        # that left the head incomplete, which are head bytes through and through.
        if self._in_head and not self._head_done and not self._refused and self.parser is not None:
            self._buffered += len(data)
            if self._buffered > self._limit:
                self._refuse_head()

    def send_400_response(self, msg: str) -> None:
        if self._too_large:  # the parse error is ours
            self._refuse_head()
        else:
            super().send_400_response(msg)

    def eof_received(self) -> None:
        if self._refused:
            self.transport.close()
        super().eof_received()

    def _refuse_head(self) -> None:
        self._in_head = False
        self._refused = True
        self.logger.warning("Request head larger than %d bytes refused.", self._limit)
        code = "request_header_too_large"
        body = json.dumps(
            {
                "type": PROBLEM_TYPE_BASE + code,
                "title": "Request Header Fields Too Large",
                "status": 431,
                "detail": f"the request line and headers exceed {self._limit} bytes",
                "code": code,
                "request_id": f"req_{uuid.uuid4().hex}",
            }
        ).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/problem+json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        # A lingering close: closing with unread bytes would reset the connection and could
        # destroy the 431 before the client reads it. Stop writing, drop what still comes,
        # and close when the client does, or after a grace period.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER_SECONDS, self.transport.close)


class _Config(uvicorn.Config):
    """A uvicorn config that carries the head limit to the protocol."""

    def __init__(self, app: Any, *, max_header_bytes: int, **options: Any) -> None:
        super().__init__(app, **options)
        self.max_header_bytes = max_header_bytes


def server_config(app: Any, settings: Settings, *, host: str, port: int, **options: Any) -> uvicorn.Config:
    """The uvicorn config of an API process (`assistant api`, tests) with the head limit set."""
    return _Config(
        app,
        host=host,
        port=port,
        http=HeadLimitedHttpTools,
        max_header_bytes=settings.max_header_bytes,
        **options,
    )
