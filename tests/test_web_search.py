"""web_search against a real HTTP server on loopback speaking SearxNG's and Serper's wire
formats: normalised results, the request each backend receives, and every way a search fails."""

import base64
import json
import logging
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from activities.tools import MAX_RESULT_CHARS
from core.config import Settings
from core.errors import ConfigurationError
from devstack import free_port
from tests.searchserver import SERPER_KEY, Canned, SearchServer
from tools.base import SchemaCheck, ToolContext, ToolFailed, ToolTemporarilyFailed
from tools.web_search import SERPER_URL, WEB_SEARCH_SCHEMA, SearchConfig, WebSearchTool

CONTEXT = ToolContext(turn_id="turn-1", tool_call_id="call-1", user_id="user-1", idempotency_key="key-1")
SEARXNG_KEY = "proxy-bearer-token-81d3"
RESULT_KEYS = {"title", "url", "snippet", "date", "source", "image_url"}

ToolFactory = Callable[..., WebSearchTool]


@pytest.fixture(scope="module")
def server() -> Iterator[SearchServer]:
    search = SearchServer().start()
    try:
        yield search
    finally:
        search.stop()


@pytest.fixture(autouse=True)
def fresh(server: SearchServer) -> None:
    server.reset()


@pytest.fixture
async def make_tool(server: SearchServer) -> AsyncIterator[ToolFactory]:
    made: list[WebSearchTool] = []

    def make(backend: str, **overrides: Any) -> WebSearchTool:
        tool = WebSearchTool.from_settings(_settings(backend, server, **overrides))
        assert tool is not None
        made.append(tool)
        return tool

    yield make
    for tool in made:
        await tool.aclose()


def _settings(backend: str | None, server: SearchServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "search_backend": backend,
        "search_url": server.base_url,
        "search_api_key": SecretStr(SERPER_KEY) if backend == "serper" else None,
        "search_timeout": 5,
        "assistant_env": "production",
    }
    return Settings(**{**values, **overrides})


async def _fails(tool: WebSearchTool, arguments: dict[str, Any]) -> ToolFailed:
    with pytest.raises(ToolFailed) as caught:
        await tool.run(arguments, CONTEXT)
    return caught.value


def _assert_shape(results: list[dict[str, Any]]) -> None:
    for result in results:
        assert set(result) <= RESULT_KEYS and {"title", "url", "snippet"} <= set(result)
        assert all(isinstance(value, str) for value in result.values())
        assert result["url"].startswith(("http://", "https://"))


async def test_searxng_web_results_are_plain_deduplicated_and_capped(
    server: SearchServer, make_tool: ToolFactory
) -> None:
    tool = make_tool("searxng")
    result = await tool.run({"query": "python", "num_results": 7}, CONTEXT)

    results = result["results"]
    assert list(result) == ["results"] and len(results) == 7
    _assert_shape(results)
    assert results[0] == {
        "title": "Welcome to python.org",
        "url": "https://www.python.org/",
        "snippet": "The official home of the python Programming Language & its community.",
        "source": "python.org",
    }
    # The duplicate, the javascript: and the ftp: links are gone; escaped markup stays text.
    assert [r["url"] for r in results[1:3]] == [
        "https://site1.example.org/python",
        "https://site2.example.org/python",
    ]
    assert results[1]["snippet"] == "Snippet 1 <b>escaped</b> text"
    [request] = server.received
    assert (request.method, request.path) == ("GET", "/search")
    assert request.query == {"q": "python", "format": "json", "categories": "general", "pageno": "1"}
    assert "authorization" not in request.headers


async def test_searxng_twenty_results_fit_one_page(server: SearchServer, make_tool: ToolFactory) -> None:
    results = (await make_tool("searxng").run({"query": "python", "num_results": 20}, CONTEXT))["results"]
    assert len(results) == 20 and len({r["url"] for r in results}) == 20
    assert len(server.received) == 1


async def test_searxng_news_and_images(server: SearchServer, make_tool: ToolFactory) -> None:
    tool = make_tool("searxng")
    news = (await tool.run({"query": "rust", "type": "news"}, CONTEXT))["results"]
    images = (await tool.run({"query": "cats", "type": "images", "num_results": 3}, CONTEXT))["results"]

    assert [r.get("date") for r in news] == ["2024-05-02T08:30:00", "2024-05-01T17:05:00+00:00", None]
    assert news[0]["source"] == "news1.example.com"
    assert images[0] == {
        "title": "cats photo 1",
        "url": "https://photos.example.net/cats/1",
        "snippet": "",
        "source": "photos.example.net",
        "image_url": "https://img.example.net/cats/1.jpg",
    }
    # An image behind the instance's image proxy is linked through the instance.
    assert (
        images[2]["image_url"]
        == f"{server.base_url}/image_proxy?url=https%3A%2F%2Fimg.example.net%2F3.jpg&h=abc"
    )
    assert [r.query["categories"] for r in server.received] == ["news", "images"]


async def test_searxng_key_goes_to_the_proxy_as_a_bearer_token(
    server: SearchServer, make_tool: ToolFactory
) -> None:
    tool = make_tool("searxng", search_api_key=SecretStr(SEARXNG_KEY))
    result = await tool.run({"query": "python"}, CONTEXT)
    assert server.received[0].headers["authorization"] == f"Bearer {SEARXNG_KEY}"
    assert SEARXNG_KEY not in json.dumps(result)


async def test_serper_web_news_images(server: SearchServer, make_tool: ToolFactory) -> None:
    tool = make_tool("serper")
    web = (await tool.run({"query": "temporal", "num_results": 3}, CONTEXT))["results"]
    news = (await tool.run({"query": "temporal", "type": "news", "num_results": 2}, CONTEXT))["results"]
    images = (await tool.run({"query": "temporal", "type": "images", "num_results": 1}, CONTEXT))["results"]

    assert web == [
        {
            "title": "temporal result 1",
            "url": "https://serp1.example.org/temporal",
            "snippet": "Snippet 1 for temporal …",
            "date": "2024-03-03",
            "source": "serp1.example.org",
        },
        {
            "title": "temporal result 2",
            "url": "https://serp2.example.org/temporal",
            "snippet": "Snippet 2 for temporal …",
            "source": "serp2.example.org",
        },
        {
            "title": "temporal result 3",
            "url": "https://serp3.example.org/temporal",
            "snippet": "Snippet 3 for temporal …",
            "source": "serp3.example.org",
        },
    ]
    assert [(r["date"], r["source"]) for r in news] == [("2 hours ago", "Paper 1"), ("2024-05-01", "Paper 2")]
    assert images == [
        {
            "title": "temporal image 1",
            "url": "https://gallery.example.com/temporal/1",
            "snippet": "",
            "source": "Gallery 1",
            "image_url": "https://cdn.example.com/temporal/1.png",
        }
    ]
    assert [(r.method, r.path, r.body) for r in server.received] == [
        ("POST", "/search", {"q": "temporal", "num": 3}),
        ("POST", "/news", {"q": "temporal", "num": 2}),
        ("POST", "/images", {"q": "temporal", "num": 1}),
    ]
    assert all(r.headers["x-api-key"] == SERPER_KEY for r in server.received)
    assert SERPER_KEY not in json.dumps([web, news, images])


def test_configuration(server: SearchServer) -> None:
    assert WebSearchTool.from_settings(_settings(None, server)) is None
    assert WebSearchTool.from_settings(_settings(None, server, search_url=None)) is None
    serper = SearchConfig.from_settings(_settings("serper", server, search_url=None))
    assert serper is not None and serper.url == SERPER_URL and SERPER_KEY not in repr(serper)
    with pytest.raises(ConfigurationError, match="SEARCH_URL"):
        WebSearchTool.from_settings(_settings("searxng", server, search_url=None))
    with pytest.raises(ConfigurationError, match="SEARCH_API_KEY"):
        WebSearchTool.from_settings(_settings("serper", server, search_api_key=None))
    with pytest.raises(ConfigurationError, match="SEARCH_URL must be an http"):
        WebSearchTool.from_settings(_settings("searxng", server, search_url="ftp://searx.example.org"))
    with pytest.raises(ConfigurationError, match="in clear"):
        WebSearchTool.from_settings(_settings("serper", server, search_url="http://serper.example.org"))
    with pytest.raises(ConfigurationError, match="in clear"):
        WebSearchTool.from_settings(_settings("searxng", server, search_url="http://u:pw@searx.example.org"))
    # Plain http to an instance on this machine, without credentials, is fine.
    local = WebSearchTool.from_settings(_settings("searxng", server, search_url="http://localhost:8888"))
    assert local is not None


def test_schema_and_checks(server: SearchServer) -> None:
    check = SchemaCheck(WEB_SEARCH_SCHEMA)
    assert check.errors({"query": "x", "type": "news", "num_results": 20}) == []
    for bad in (
        {"query": "x", "num_results": 0},
        {"query": "x", "num_results": 21},
        {"query": "x", "type": "videos"},
        {"query": ""},
        {"query": "x", "page": 2},
        {},
    ):
        assert check.errors(bad), bad
    tool = WebSearchTool.from_settings(_settings("searxng", server))
    assert tool is not None
    with pytest.raises(ToolFailed, match="blank"):
        tool.check({"query": "   "})


@pytest.mark.parametrize(
    ("backend", "answer", "needle"),
    [
        # None: the test server's own answer to a wrong key, Serper's 403 "Unauthorized.".
        ("serper", None, "HTTP 403: Unauthorized.): check SEARCH_API_KEY"),
        ("searxng", Canned(401, {"error": "missing bearer token"}), "HTTP 401: missing bearer token"),
        # Flask's page for an instance whose search.formats lacks json.
        ("searxng", Canned(403, "<title>403 Forbidden</title><h1>Forbidden</h1>"), "format=json"),
    ],
)
async def test_refused_credentials_fail_after_one_request(
    server: SearchServer, make_tool: ToolFactory, backend: str, answer: Canned | None, needle: str
) -> None:
    key = "wrong-key-123" if backend == "serper" else SEARXNG_KEY
    tool = make_tool(backend, search_api_key=SecretStr(key))
    if answer is not None:
        server.answer_next(answer)
    failure = await _fails(tool, {"query": "python"})
    assert failure.code == "search_auth_failed" and needle in failure.message
    assert len(server.received) == 1
    assert key not in json.dumps(failure.as_result())


@pytest.mark.parametrize(
    "answer",
    [
        Canned(400, {"message": "Not enough credits", "statusCode": 400}),
        Canned(429, {"message": "Monthly quota exceeded"}, headers={"Retry-After": "1"}),
        Canned(402, {"error": {"message": "Payment required"}}),
    ],
)
async def test_spent_credits_are_a_quota_error_after_one_request(
    server: SearchServer, make_tool: ToolFactory, answer: Canned
) -> None:
    server.answer_next(answer)
    failure = await _fails(make_tool("serper"), {"query": "python"})
    assert failure.code == "search_quota_exceeded"
    assert f"HTTP {answer.status}" in failure.message
    assert len(server.received) == 1


async def test_rate_limit_waits_as_asked_then_succeeds(server: SearchServer, make_tool: ToolFactory) -> None:
    server.answer_next(Canned(429, "Too Many Requests", headers={"Retry-After": "1"}))
    started = time.monotonic()
    result = await make_tool("searxng").run({"query": "python"}, CONTEXT)
    assert len(result["results"]) == 5
    assert time.monotonic() - started >= 1.0
    assert len(server.received) == 2


async def test_persistent_or_long_rate_limit_is_temporary(
    server: SearchServer, make_tool: ToolFactory
) -> None:
    tool = make_tool("serper")
    limited = Canned(429, {"message": "Too many requests"}, headers={"Retry-After": "0"})
    server.answer_next(limited, limited, limited)
    with pytest.raises(ToolTemporarilyFailed, match="rate limiting"):
        await tool.run({"query": "python"}, CONTEXT)
    assert len(server.received) == 3  # the first request and two retries

    server.reset()
    server.answer_next(Canned(429, {"message": "Too many requests"}, headers={"Retry-After": "3600"}))
    with pytest.raises(ToolTemporarilyFailed, match="rate limiting"):
        await tool.run({"query": "python"}, CONTEXT)
    assert len(server.received) == 1  # an hour's wait is left to the activity's retries


@pytest.mark.parametrize("backend", ["searxng", "serper"])
async def test_server_errors_are_temporary_and_not_retried_here(
    server: SearchServer, make_tool: ToolFactory, backend: str
) -> None:
    server.answer_next(Canned(500, "<h1>Internal Server Error</h1>"))
    with pytest.raises(ToolTemporarilyFailed, match="HTTP 500: Internal Server Error"):
        await make_tool(backend).run({"query": "python"}, CONTEXT)
    assert len(server.received) == 1


async def test_refused_query_and_redirect_are_search_failed(
    server: SearchServer, make_tool: ToolFactory
) -> None:
    tool = make_tool("serper")
    server.answer_next(Canned(400, {"message": "Query not allowed", "statusCode": 400}))
    failure = await _fails(tool, {"query": "python"})
    assert (failure.code, len(server.received)) == ("search_failed", 1)
    assert "Query not allowed" in failure.message

    server.reset()
    server.answer_next(Canned(302, headers={"Location": "https://elsewhere.example.org/search"}))
    failure = await _fails(tool, {"query": "python"})
    assert (failure.code, len(server.received)) == ("search_failed", 1)
    assert "redirect" in failure.message


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (Canned(200, "<html>not json</html>"), "other than JSON"),
        (Canned(200, {"results": "nope"}), "no `results` list"),
        (Canned(200, b"[" * 100_000), "other than JSON"),
        (Canned(200, b" " * (3 * 2**20)), "more than 2 MB"),
    ],
)
async def test_bad_answers_are_bad_response(
    server: SearchServer, make_tool: ToolFactory, answer: Canned, why: str
) -> None:
    server.answer_next(answer)
    failure = await _fails(make_tool("searxng"), {"query": "python"})
    assert failure.code == "search_bad_response" and why in failure.message
    assert len(server.received) == 1


async def test_searxng_finding_nothing_while_engines_failed_says_so_at_once(
    server: SearchServer, make_tool: ToolFactory
) -> None:
    server.answer_next(
        Canned(
            200,
            {
                "query": "python",
                "number_of_results": 0,
                "results": [],
                "answers": [],
                "corrections": [],
                "infoboxes": [],
                "suggestions": [],
                "unresponsive_engines": [["google", "CAPTCHA"], ["duckduckgo", "timeout"]],
            },
        )
    )
    with pytest.raises(ToolFailed, match="google CAPTCHA; duckduckgo timeout") as failed:
        await make_tool("searxng").run({"query": "python"}, CONTEXT)
    assert failed.value.code == "search_failed"
    assert len(server.received) == 1, "told at once, not retried"


async def test_unreachable_and_slow_backends_are_temporary(
    server: SearchServer, make_tool: ToolFactory
) -> None:
    nothing = make_tool("searxng", search_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ToolTemporarilyFailed, match="could not be reached"):
        await nothing.run({"query": "python"}, CONTEXT)

    server.answer_next(Canned(200, {"results": []}, delay=2.0))
    started = time.monotonic()
    with pytest.raises(ToolTemporarilyFailed, match=r"did not answer within 0\.5 s"):
        await make_tool("searxng", search_timeout=0.5).run({"query": "python"}, CONTEXT)
    assert time.monotonic() - started < 1.5


async def test_hostile_results_keep_the_shape_and_stay_small(
    server: SearchServer, make_tool: ToolFactory
) -> None:
    huge = "A" * 50_000
    server.answer_next(
        Canned(
            200,
            {
                "organic": [
                    {
                        "title": huge,
                        "link": "https://a.example.org/",
                        "snippet": "x\u0000y\ud800z\n\n" + huge,
                    },
                    {"title": 42, "link": ["https://b.example.org/"], "snippet": None},
                    {"title": "no link"},
                    "not an object",
                    {"title": "data", "link": "data:text/html,<script>alert(1)</script>"},
                    {"title": "spaces", "link": "https://c.example.org/a b"},
                    {"title": {"x": 1}, "link": "https://d.example.org/", "date": ["today"], "source": 7},
                ],
            },
        )
    )
    result = await make_tool("serper").run({"query": "python", "num_results": 10}, CONTEXT)
    results = result["results"]
    _assert_shape(results)
    assert [r["url"] for r in results] == ["https://a.example.org/", "https://d.example.org/"]
    assert len(results[0]["title"]) == 300 and len(results[0]["snippet"]) == 500
    assert results[0]["snippet"].startswith("x y z A")
    assert results[1] == {
        "title": "d.example.org",
        "url": "https://d.example.org/",
        "snippet": "",
        "source": "d.example.org",
    }
    assert len(json.dumps(result)) < 2_000


async def test_aclose_is_safe_before_and_after_use(server: SearchServer) -> None:
    tool = WebSearchTool.from_settings(_settings("searxng", server))
    assert tool is not None
    await tool.aclose()
    await tool.run({"query": "python", "num_results": 1}, CONTEXT)
    await tool.aclose()
    await tool.aclose()
    # A closed tool opens a new pool when used again (a worker restarting its tools).
    assert len((await tool.run({"query": "python", "num_results": 1}, CONTEXT))["results"]) == 1
    await tool.aclose()


async def test_a_password_in_search_url_is_sent_but_never_logged(
    server: SearchServer, make_tool: ToolFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"http://searcher:pw-7f3a9c@127.0.0.1:{server.port}"
    result = await make_tool("searxng", search_url=url).run({"query": "python", "num_results": 1}, CONTEXT)
    assert len(result["results"]) == 1
    sent = base64.b64encode(b"searcher:pw-7f3a9c").decode()
    assert server.received[0].headers["authorization"] == f"Basic {sent}"
    assert caplog.records  # httpx does log each request
    assert "pw-7f3a9c" not in caplog.text and sent not in caplog.text


def _gzip_of_spaces(megabytes: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = b" " * (1 << 20)
    return b"".join(packer.compress(block) for _ in range(megabytes)) + packer.flush()


async def test_a_compressed_answer_is_inflated_within_the_cap(
    server: SearchServer, make_tool: ToolFactory
) -> None:
    """A backend may compress although asked not to; 256 MB of gzip'd spaces is 256 KB on the wire."""
    server.answer_next(Canned(200, _gzip_of_spaces(256), headers={"Content-Encoding": "gzip"}))
    tool = make_tool("searxng")
    tracemalloc.start()
    try:
        failure = await _fails(tool, {"query": "python"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert failure.code == "search_bad_response" and "more than 2 MB" in failure.message
    assert peak < 16 * 2**20

    packed = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    answer = json.dumps({"results": [{"url": "https://gz.example.org/", "title": "Gzipped"}]}).encode()
    server.answer_next(Canned(200, packed.compress(answer) + packed.flush(), {"Content-Encoding": "gzip"}))
    [result] = (await tool.run({"query": "python"}, CONTEXT))["results"]
    assert (result["url"], result["title"]) == ("https://gz.example.org/", "Gzipped")


async def test_twenty_results_of_the_longest_kind_still_fit_the_activity(
    server: SearchServer, make_tool: ToolFactory
) -> None:
    """Quotes and backslashes take two characters each in JSON."""
    organic = [
        {
            "title": '"' * 400,
            "link": f"https://r{n}.example.org/" + '"' * 2000,
            "snippet": "\\" * 600,
            "date": '"' * 80,
            "source": '"' * 200,
        }
        for n in range(20)
    ]
    server.answer_next(Canned(200, {"organic": organic}))
    result = await make_tool("serper").run({"query": "python", "num_results": 20}, CONTEXT)
    _assert_shape(result["results"])
    assert 5 <= len(result["results"]) < 20
    assert len(json.dumps(result, ensure_ascii=False)) < MAX_RESULT_CHARS
