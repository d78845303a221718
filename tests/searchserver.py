"""A search backend on loopback speaking both wire formats web_search uses, recording requests.

- SearxNG: `GET /search?q=…&format=json&categories=…` answers the shape of SearxNG's
  `searx/webutils.py:get_json_response` (docs.searxng.org/dev/search_api.html); without
  `format=json` it answers 403 like an instance whose search.formats lacks json.
- Serper: `POST /search`, `/news`, `/images` with JSON `{q, num}` and `X-API-KEY` answers the
  shapes of serper.dev's API; a wrong key answers 403 `{"message": "Unauthorized."}` as Serper does.

A test queues canned answers (`answer_next`) to play errors; they are used before the normal ones.
"""

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from devstack import free_port

SERPER_KEY = "serper-test-key-5f0c2b9e"


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass(frozen=True)
class Canned:
    """One answer to play instead of the normal one."""

    status: int
    body: bytes | str | dict[str, Any] = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, dict):
            return json.dumps(self.body).encode(), "application/json"
        if isinstance(self.body, str):
            return self.body.encode(), "text/html; charset=utf-8"
        return self.body, "application/octet-stream"


class SearchServer:
    """Start/stop-able HTTP server on 127.0.0.1; `received` lists every request in order."""

    def __init__(self, serper_key: str = SERPER_KEY) -> None:
        self.serper_key = serper_key
        self.port = free_port()
        self.received: list[Received] = []
        self._canned: list[Canned] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "SearchServer":
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def reset(self) -> None:
        with self._lock:
            self.received.clear()
            self._canned.clear()

    def answer_next(self, *answers: Canned) -> None:
        with self._lock:
            self._canned.extend(answers)

    def record(self, request: Received) -> Canned | None:
        with self._lock:
            self.received.append(request)
            return self._canned.pop(0) if self._canned else None


def _handler_for(server: SearchServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle(self) -> None:
            # The client may hang up mid-answer or between requests (timeout and size tests).
            with contextlib.suppress(ConnectionError):
                super().handle()

        def do_GET(self) -> None:
            self._handle(lambda request: _searxng(request))

        def do_POST(self) -> None:
            self._handle(lambda request: _serper(request, server.serper_key))

        def _handle(self, normal: Callable[[Received], Canned]) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            request = Received(
                method=self.command,
                path=parts.path,
                query={k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()},
                headers={k.lower(): v for k, v in self.headers.items()},
                body=json.loads(raw) if raw else None,
            )
            answer = server.record(request) or normal(request)
            if answer.delay:
                time.sleep(answer.delay)
            body, content_type = answer.encoded()
            self.send_response(answer.status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _searxng(request: Received) -> Canned:
    if request.path != "/search":
        return Canned(404, "<h1>Not Found</h1>")
    if request.query.get("format") != "json":
        return Canned(403, _FLASK_403)
    query = request.query.get("q", "")
    category = request.query.get("categories", "general")
    results = {"news": _searxng_news, "images": _searxng_images}.get(category, _searxng_general)(query)
    return Canned(
        200,
        {
            "query": query,
            "number_of_results": 0,
            "results": results,
            "answers": [],
            "corrections": [],
            "infoboxes": [],
            "suggestions": [f"{query} tutorial"],
            "unresponsive_engines": [["wikidata", "timeout"]],
        },
    )


def _searxng_result(url: str, title: str, content: str, engine: str, category: str) -> dict[str, Any]:
    parts = urlsplit(url)
    return {
        "url": url,
        "title": title,
        "content": content,
        "engine": engine,
        "parsed_url": [parts.scheme, parts.netloc, parts.path, "", parts.query, ""],
        "template": "default.html",
        "engines": [engine],
        "positions": [1],
        "score": 1.0,
        "category": category,
        "publishedDate": None,
        "thumbnail": "",
    }


def _searxng_general(query: str) -> list[dict[str, Any]]:
    results = [
        _searxng_result(
            "https://www.python.org/",
            f'Welcome to <span class="highlight">{query}</span>.org',
            f'The official home of the <span class="highlight">{query}</span> Programming Language &amp; '
            "its\n   community.",
            "duckduckgo",
            "general",
        ),
        # The same page from another engine, and links no one should be handed.
        _searxng_result("https://www.python.org/", "Python (duplicate)", "again", "brave", "general"),
        _searxng_result("javascript:alert(1)", "Click me", "not a web page", "brave", "general"),
        _searxng_result("ftp://files.example.org/", "Files", "not a web page either", "brave", "general"),
    ]
    for n in range(1, 25):
        results.append(
            _searxng_result(
                f"https://site{n}.example.org/{query}",
                f"Result {n} about {query}",
                f"Snippet {n} &lt;b&gt;escaped&lt;/b&gt; text",
                "bing",
                "general",
            )
        )
    return results


def _searxng_news(query: str) -> list[dict[str, Any]]:
    results = []
    for n, published in enumerate(["2024-05-02T08:30:00", "2024-05-01T17:05:00+00:00", None], start=1):
        item = _searxng_result(
            f"https://news{n}.example.com/2024/{query}-{n}",
            f"{query} news {n}",
            f"What happened with {query}, part {n}.",
            "bing news",
            "news",
        )
        item["publishedDate"] = published
        results.append(item)
    return results


def _searxng_images(query: str) -> list[dict[str, Any]]:
    results = []
    for n in range(1, 4):
        item = _searxng_result(
            f"https://photos.example.net/{query}/{n}",
            f"{query} photo {n}",
            "",
            "bing images",
            "images",
        )
        item.update(
            template="images.html",
            img_src=f"https://img.example.net/{query}/{n}.jpg",
            thumbnail_src=f"https://tbn.example.net/{n}.jpg",
            resolution="1920 x 1080",
            img_format="jpeg",
        )
        results.append(item)
    # An instance with image_proxy on links images through itself, relative to its base URL.
    results[-1]["img_src"] = "/image_proxy?url=https%3A%2F%2Fimg.example.net%2F3.jpg&h=abc"
    return results


def _serper(request: Received, key: str) -> Canned:
    if request.headers.get("x-api-key") != key:
        return Canned(403, {"message": "Unauthorized.", "statusCode": 403})
    body = request.body if isinstance(request.body, dict) else {}
    query, num = str(body.get("q", "")), int(body.get("num", 10))
    kind = {"/search": "search", "/news": "news", "/images": "images"}.get(request.path)
    if kind is None:
        return Canned(404, {"message": "Not found", "statusCode": 404})
    answer: dict[str, Any] = {
        "searchParameters": {"q": query, "type": kind, "num": num, "engine": "google"},
        "credits": 1,
    }
    if kind == "search":
        answer["organic"] = [
            {
                "title": f"{query} result {n}",
                "link": f"https://serp{n}.example.org/{query}",
                "snippet": f"Snippet {n} for {query} …",
                "position": n,
                **({"date": "Mar 3, 2024"} if n == 1 else {}),
                **(
                    {"sitelinks": [{"title": "Docs", "link": "https://serp1.example.org/docs"}]}
                    if n == 1
                    else {}
                ),
            }
            for n in range(1, num + 1)
        ]
        answer["relatedSearches"] = [{"query": f"{query} tutorial"}]
    elif kind == "news":
        answer["news"] = [
            {
                "title": f"{query} headline {n}",
                "link": f"https://paper{n}.example.com/{query}",
                "snippet": f"Latest on {query} ({n}).",
                "date": "2 hours ago" if n == 1 else "May 1, 2024",
                "source": f"Paper {n}",
                "imageUrl": f"https://paper{n}.example.com/thumb.jpg",
                "position": n,
            }
            for n in range(1, min(num, 10) + 1)
        ]
    else:
        answer["images"] = [
            {
                "title": f"{query} image {n}",
                "imageUrl": f"https://cdn.example.com/{query}/{n}.png",
                "imageWidth": 1200,
                "imageHeight": 800,
                "thumbnailUrl": f"https://encrypted-tbn0.example.com/{n}",
                "thumbnailWidth": 300,
                "thumbnailHeight": 200,
                "source": f"Gallery {n}",
                "domain": "gallery.example.com",
                "link": f"https://gallery.example.com/{query}/{n}",
                "googleUrl": f"https://www.google.com/imgres?imgurl={n}",
                "position": n,
            }
            for n in range(1, num + 1)
        ]
    return Canned(200, answer)


# What Flask's abort(403) sends, as a SearxNG instance does when format=json is not allowed.
_FLASK_403 = (
    "<!doctype html>\n<html lang=en>\n<title>403 Forbidden</title>\n<h1>Forbidden</h1>\n"
    "<p>You don't have the permission to access the requested resource. It is either read-protected "
    "or not readable by the server.</p>\n"
)
