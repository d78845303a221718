"""fetch_page against real HTTP servers on loopback: first what it refuses to reach, then how
it reads what it may reach (with private networks allowed, as an intranet operator would)."""

import asyncio
import gzip
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any

import pytest

from activities.tools import MAX_RESULT_CHARS
from core.config import Settings
from devstack import free_port
from tests.pageserver import PageServer, Reply
from tools.base import SchemaCheck, ToolContext, ToolFailed, ToolTemporarilyFailed
from tools.fetch_page import FetchPageTool
from tools.netguard import IPAddress, private_networks, public_only, system_resolver

CONTEXT = ToolContext(turn_id="turn", tool_call_id="call", user_id="user", idempotency_key="key")
TEST_PUBLIC = IPv4Address("127.0.0.2")


class TableResolver:
    """Names from a table (`later` answers every lookup after the first), anything else from the
    system resolver; remembers what it was asked."""

    def __init__(self, table: dict[str, list[str]], later: dict[str, list[str]] | None = None) -> None:
        self._table = table
        self._later = later or {}
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append(host)
        if host in self._later and self.asked.count(host) > 1:
            return [ip_address(a) for a in self._later[host]]
        if host in self._table:
            return [ip_address(a) for a in self._table[host]]
        return await system_resolver(host, port)


def test_public_policy_allows_only_public_addresses() -> None:
    assert public_only(ip_address("8.8.8.8")) is None
    assert public_only(ip_address("2606:4700::1111")) is None
    assert public_only(ip_address("2002:0808:0808::1")) is None  # 6to4 of a public address


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("10.1.2.3", "private-network"),
        ("172.16.0.1", "private-network"),
        ("192.168.1.1", "private-network"),
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("255.255.255.255", "special-purpose"),
        ("192.0.2.1", "special-purpose"),
        ("::", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fc00::1", "unique-local"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("::ffff:10.0.0.1", "IPv6 form of 10.0.0.1, a private-network"),
        ("::ffff:127.0.0.1", "IPv6 form of 127.0.0.1, a loopback"),
        ("64:ff9b::a00:1", "IPv6 form of 10.0.0.1"),
        ("2002:0a00:0001::", "IPv6 form of 10.0.0.1"),
        ("::a00:1", "reserved"),  # IPv4-compatible, deprecated
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "special-purpose"),  # Teredo
        ("168.63.129.16", "cloud platform"),  # Azure's WireServer, on a public address
    ],
)
def test_public_policy_refuses_every_non_public_range(address: str, reason: str) -> None:
    refusal = public_only(ip_address(address))
    assert refusal is not None and reason in refusal


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack instance metadata
        "::ffff:169.254.169.254",
        "fe80::a9fe:a9fe",
        "fd00:ec2::254",  # AWS metadata over IPv6
        "100.100.100.200",  # Alibaba Cloud metadata
        "168.63.129.16",  # Azure WireServer
        "192.0.0.192",  # Oracle Cloud metadata
    ],
)
def test_the_intranet_policy_still_refuses_cloud_metadata(address: str) -> None:
    """FETCH_ALLOW_PRIVATE_NETWORKS opens intranets, not the host's cloud credentials."""
    assert private_networks(ip_address(address)) is not None


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "::1", "10.1.2.3", "192.168.1.1", "fd12:3456::1", "8.8.8.8"]
)
def test_the_intranet_policy_allows_loopback_private_and_public(address: str) -> None:
    assert private_networks(ip_address(address)) is None


# --- Refusals: nothing reaches the server --------------------------------------------------


@pytest.fixture
def target() -> Iterator[PageServer]:
    """A server on 127.0.0.1 that no refused fetch may ever reach."""
    with PageServer() as server:
        server.page("/", "<html><head><title>Internal</title></head><body><p>secret</p></body></html>")
        yield server


def guarded_tool(resolver: Any = system_resolver, policy: Any = public_only) -> FetchPageTool:
    return FetchPageTool(timeout=2.0, max_bytes=1 << 20, policy=policy, resolver=resolver)


RESOLVES_TO_LOOPBACK = {
    "www.example-public.test": ["127.0.0.1"],
    "localtest.me": ["127.0.0.1"],
    "mixed.example-public.test": ["8.8.8.8", "127.0.0.1"],
}


@pytest.mark.parametrize(
    ("url", "code", "why"),
    [
        ("http://127.0.0.1:{port}/", "address_not_allowed", "127.0.0.1 is a loopback address"),
        ("https://127.0.0.1:{port}/", "address_not_allowed", "loopback"),
        ("http://localhost:{port}/", "address_not_allowed", "localhost resolves to"),
        ("http://[::1]:{port}/", "address_not_allowed", "loopback"),
        ("http://[::ffff:127.0.0.1]:{port}/", "address_not_allowed", "IPv6 form of 127.0.0.1"),
        ("http://2130706433:{port}/", "address_not_allowed", "resolves to 127.0.0.1"),
        ("http://0x7f000001:{port}/", "address_not_allowed", "resolves to 127.0.0.1"),
        ("http://0177.1:{port}/", "address_not_allowed", "resolves to 127.0.0.1"),
        ("http://127.1:{port}/", "address_not_allowed", "resolves to 127.0.0.1"),
        ("http://0x7f.0.0.1:{port}/", "address_not_allowed", "resolves to 127.0.0.1"),
        ("http://0.0.0.0:{port}/", "address_not_allowed", "unspecified"),
        ("http://public.example@127.0.0.1:{port}/", "address_not_allowed", "loopback"),
        ("http://[::ffff:a9fe:a9fe]/", "address_not_allowed", "IPv6 form of 169.254.169.254"),
        ("http://[::]:{port}/", "address_not_allowed", "unspecified"),
        ("http://169.254.169.254/latest/meta-data/", "address_not_allowed", "link-local"),
        ("http://10.0.0.1/", "address_not_allowed", "private-network"),
        ("http://100.64.0.1/", "address_not_allowed", "carrier-grade NAT"),
        ("http://www.example-public.test:{port}/", "address_not_allowed", "resolves to 127.0.0.1"),
        ("http://localtest.me:{port}/", "address_not_allowed", "resolves to 127.0.0.1"),
        ("http://mixed.example-public.test:{port}/", "address_not_allowed", "resolves to 127.0.0.1"),
        # httpx refuses to parse this octal spelling at all.
        ("http://0177.0.0.1:{port}/", "unsupported_url", "not a valid URL"),
        ("file:///etc/passwd", "unsupported_url", "only http and https"),
        ("gopher://127.0.0.1:{port}/", "unsupported_url", "only http and https"),
        ("http://127.0.0.1:99999/", "unsupported_url", "port"),
        ("http://127.0.0.1:0/", "unsupported_url", "port"),
        ("http://xn--/", "unsupported_url", "not a valid URL"),
        ("http://127.0.0.1/\ud800", "unsupported_url", "not a valid URL"),
    ],
)
async def test_non_public_targets_are_refused_before_any_connection(
    target: PageServer, url: str, code: str, why: str
) -> None:
    tool = guarded_tool(resolver=TableResolver(RESOLVES_TO_LOOPBACK))
    with pytest.raises(ToolFailed) as failure:
        await tool.run({"url": url.format(port=target.port)}, CONTEXT)
    assert failure.value.code == code
    assert why in failure.value.message
    if code == "address_not_allowed":
        assert "FETCH_ALLOW_PRIVATE_NETWORKS" in failure.value.message
    assert target.received == []


async def test_the_same_server_answers_when_private_networks_are_allowed(target: PageServer) -> None:
    """The control for the refusals above: the setting decides, and the server is really there."""
    refusing = FetchPageTool.from_settings(Settings(_env_file=None))  # type: ignore[call-arg]
    with pytest.raises(ToolFailed) as failure:
        await refusing.run({"url": target.url("/")}, CONTEXT)
    assert failure.value.code == "address_not_allowed"
    assert target.received == []

    allowing = FetchPageTool.from_settings(
        Settings(_env_file=None, fetch_allow_private_networks=True)  # type: ignore[call-arg]
    )
    result = await allowing.run({"url": target.url("/")}, CONTEXT)
    assert (result["status"], result["title"], result["content"]) == (200, "Internal", "secret")
    assert target.paths == ["/"]


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://[::ffff:a9fe:a9fe]/"])
async def test_an_intranet_deployment_still_refuses_cloud_metadata(url: str) -> None:
    intranet = FetchPageTool.from_settings(
        Settings(_env_file=None, fetch_allow_private_networks=True)  # type: ignore[call-arg]
    )
    with pytest.raises(ToolFailed) as failure:
        await intranet.run({"url": url}, CONTEXT)
    assert failure.value.code == "address_not_allowed"
    assert "link-local" in failure.value.message and "cloud platform" in failure.value.message


async def test_unknown_host_is_reported() -> None:
    resolver = TableResolver({"nowhere.test": []})
    with pytest.raises(ToolFailed) as failure:
        await guarded_tool(resolver=resolver).run({"url": "http://nowhere.test/"}, CONTEXT)
    assert failure.value.code == "host_not_found"
    assert "nowhere.test" in failure.value.message


@pytest.mark.parametrize("host", ["a" * 64 + ".example", "a..example"])
async def test_a_name_no_dns_server_could_hold_is_not_found(host: str) -> None:
    """The system resolver cannot even encode a label over 63 characters or an empty one."""
    with pytest.raises(ToolFailed) as failure:
        await guarded_tool().run({"url": f"http://{host}/"}, CONTEXT)
    assert failure.value.code == "host_not_found"


async def test_a_lookup_that_failed_for_now_asks_for_a_retry() -> None:
    async def dns_unreachable(host: str, port: int) -> list[IPAddress]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    with pytest.raises(ToolTemporarilyFailed, match=r"could not look up news\.test"):
        await guarded_tool(resolver=dns_unreachable).run({"url": "http://news.test/"}, CONTEXT)


@pytest.fixture
def public_site(target: PageServer) -> Iterator[PageServer]:
    """A server the test policy treats as public (127.0.0.2), on the same port as `target`."""
    with PageServer(str(TEST_PUBLIC), port=target.port) as server:
        server.page("/page", "<html><head><title>Public</title></head><body><p>hello</p></body></html>")
        yield server


def treat_127_0_0_2_as_public(ip: IPAddress) -> str | None:
    return None if ip == TEST_PUBLIC else public_only(ip)


@pytest.mark.parametrize(
    ("location", "code"),
    [
        ("http://127.0.0.1:{port}/", "address_not_allowed"),
        ("http://www.example-public.test:{port}/", "address_not_allowed"),
        ("http://[::ffff:7f00:1]:{port}/", "address_not_allowed"),
        ("file:///etc/passwd", "unsupported_url"),
        ("http://xn--/", "unsupported_url"),
        ("http://public.test:70000/", "unsupported_url"),
    ],
)
async def test_a_redirect_to_a_non_public_target_is_refused(
    target: PageServer, public_site: PageServer, location: str, code: str
) -> None:
    public_site.redirect("/go", location.format(port=target.port))
    resolver = TableResolver({"public.test": [str(TEST_PUBLIC)], **RESOLVES_TO_LOOPBACK})
    tool = guarded_tool(resolver=resolver, policy=treat_127_0_0_2_as_public)
    with pytest.raises(ToolFailed) as failure:
        await tool.run({"url": f"http://public.test:{target.port}/go"}, CONTEXT)
    assert failure.value.code == code
    assert public_site.paths == ["/go"]
    assert target.received == []


async def test_the_connection_goes_to_the_address_that_was_checked(
    target: PageServer, public_site: PageServer
) -> None:
    """DNS rebinding: a second lookup would now say 127.0.0.1, but there is no second lookup."""
    resolver = TableResolver({"rebind.test": [str(TEST_PUBLIC)]}, later={"rebind.test": ["127.0.0.1"]})
    tool = guarded_tool(resolver=resolver, policy=treat_127_0_0_2_as_public)
    result = await tool.run({"url": f"http://rebind.test:{target.port}/page"}, CONTEXT)
    assert result["title"] == "Public"
    assert resolver.asked == ["rebind.test"]
    assert public_site.received[0].host == f"rebind.test:{target.port}"  # the name, not the address
    assert target.received == []


async def test_names_are_judged_by_their_addresses_not_their_spelling(
    target: PageServer, public_site: PageServer
) -> None:
    resolver = TableResolver({"127.0.0.1.nip.test": [str(TEST_PUBLIC)]})
    tool = guarded_tool(resolver=resolver, policy=treat_127_0_0_2_as_public)
    result = await tool.run({"url": f"http://127.0.0.1.nip.test:{target.port}/page"}, CONTEXT)
    assert result["content"] == "hello"
    assert target.received == []


# --- Reading pages (private networks allowed) ----------------------------------------------

ARTICLE = """<!doctype html>
<html><head><title>Rivers of Europe</title>
<meta name="description" content="A short guide to the great rivers.">
</head><body>
<nav><a href="/">Home</a> | <a href="/about">About</a> | <a href="/contact">Contact us</a></nav>
<article><h1>Rivers of Europe</h1>
<p>The Danube flows through ten countries, more than any other river in the world, from the
Black Forest to the Black Sea.</p>
<p>The Rhine rises in the Swiss Alps and reaches the North Sea in the Netherlands after passing
Basel, Strasbourg and Cologne.</p>
<p>The Volga is the longest river of Europe and flows entirely within Russia into the Caspian Sea.</p>
</article>
<footer>Copyright 2024 Example Footer Corp. All rights reserved. Privacy policy.</footer>
</body></html>"""

CYRILLIC = """<html><head><meta charset="windows-1251"><title>Реки Европы</title></head>
<body><article><p>Волга — самая длинная река Европы, она впадает в Каспийское море и течёт
через всю Россию с севера на юг.</p></article></body></html>"""  # noqa: RUF001

BIG_PIECE = b"<p>" + b"lorem ipsum dolor sit amet " * 2400 + b"</p>\n"  # about 64 KiB
BIG_PIECES = 512  # 32 MiB in all, far beyond socket buffers
# 5 MiB of markup that makes jusText, trafilatura's fallback, take time quadratic in its size
# (minutes); gzip sends it in a few kilobytes.
HEAVY = (b"<html><body>" + b"<div><div><p>some words here</p></div></div>" * 130_000)[: 5 << 20]
# lxml's metadata pass trips over this (an AssertionError inside htmldate's cleaning).
SVG_META = "<svg><meta property='og:url' content='http://\u00fc..'><svg>"


@pytest.fixture(scope="module")
def site() -> Iterator[PageServer]:
    with PageServer() as server:
        server.page("/article", ARTICLE)
        server.redirect("/hop1", "/hop2", status=301)
        server.redirect("/hop2", server.url("/article"), status=307)
        for name, length in (("five", 5), ("six", 6)):
            for step in range(1, length + 1):
                nxt = f"/{name}/{step + 1}" if step < length else "/article"
                server.redirect(f"/{name}/{step}", nxt)
        server.route(
            "/big",
            Reply(
                headers={"Content-Type": "text/html"},
                pieces=lambda: (b"<html><body>" if i == 0 else BIG_PIECE for i in range(BIG_PIECES)),
            ),
        )
        server.page(
            "/bomb", gzip.compress(b"a" * (16 << 20)), "text/plain", headers={"Content-Encoding": "gzip"}
        )
        server.page(
            "/gzip", gzip.compress(ARTICLE.encode()), "text/html", headers={"Content-Encoding": "gzip"}
        )
        server.page("/notes.txt", "line one\nline two\x00\x07 end\r\n", "text/plain; charset=utf-8")
        server.page("/data.json", '{"river": "Danube", "length_km": 2850}', "application/json")
        server.page(
            "/latin1.txt", "Café \u2013 déjà vu, naïve".encode("cp1252"), "text/plain; charset=iso-8859-1"
        )
        server.page("/rot13.txt", "plain words", "text/plain; charset=rot13")
        server.page("/idna.txt", "plain words", "text/plain; charset=idna")
        server.page("/cyrillic", CYRILLIC.encode("windows-1251"), "text/html")
        server.page("/heavy", gzip.compress(HEAVY), "text/html", headers={"Content-Encoding": "gzip"})
        server.page("/svg-meta", SVG_META)
        server.route(
            "/gzip-then-more",
            Reply(
                headers={"Content-Type": "text/plain", "Content-Encoding": "gzip"},
                pieces=lambda: [gzip.compress(b"the whole page"), *[b"trailing bytes"] * 100],
                piece_delay=0.05,
            ),
        )
        server.page("/utf7.txt", "a +2AA- b", "text/plain; charset=utf-7")  # a lone surrogate
        server.page("/escapes.txt", r"a \ud800 b \x00 c", "text/plain; charset=unicode_escape")
        server.page("/quotes.txt", '"' * 60_000, "text/plain")
        server.page("/logo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png")
        server.page("/report.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3", "application/pdf")
        server.page("/untyped", b"\x00\x01\x02binary", "")
        server.route("/down", Reply(503, {"Content-Type": "text/plain"}, b"maintenance"))
        server.route("/silent", Reply(delay=5))
        server.route(
            "/drip",
            Reply(
                headers={"Content-Type": "text/plain"},
                pieces=lambda: (b"x" for _ in range(100)),
                piece_delay=0.05,
            ),
        )
        yield server


def open_tool(**overrides: Any) -> FetchPageTool:
    return FetchPageTool(**{"timeout": 2.0, "max_bytes": 1 << 20, "policy": private_networks, **overrides})


async def fetch(url: str, **arguments: Any) -> dict[str, Any]:
    result = await open_tool().run({"url": url, **arguments}, CONTEXT)
    assert_storable(result)
    return result


def assert_storable(result: dict[str, Any]) -> None:
    """What the activity stores: UTF-8 JSON, which jsonb takes (no NUL, no lone surrogate), and
    short enough not to be cut."""
    stored = json.dumps(result, ensure_ascii=False, allow_nan=False)
    stored.encode("utf-8")
    assert "\\u0000" not in stored
    assert len(stored) <= MAX_RESULT_CHARS


async def test_an_html_page_becomes_its_main_text(site: PageServer) -> None:
    result = await fetch(site.url("/article"))
    assert result["url"] == result["final_url"] == site.url("/article")
    assert (result["status"], result["truncated"]) == (200, False)
    assert result["title"] == "Rivers of Europe"
    assert result["description"] == "A short guide to the great rivers."
    assert "The Danube flows through ten countries" in result["content"]
    assert "The Volga is the longest river of Europe" in result["content"]
    assert "Contact us" not in result["content"] and "All rights reserved" not in result["content"]
    assert result["word_count"] == len(result["content"].split()) > 50


async def test_redirects_are_followed_to_the_final_url(site: PageServer) -> None:
    result = await fetch(site.url("/hop1"))
    assert (result["url"], result["final_url"]) == (site.url("/hop1"), site.url("/article"))
    assert result["title"] == "Rivers of Europe"


async def test_five_redirects_are_followed_and_a_sixth_is_refused(site: PageServer) -> None:
    assert (await fetch(site.url("/five/1")))["final_url"] == site.url("/article")
    with pytest.raises(ToolFailed) as failure:
        await fetch(site.url("/six/1"))
    assert failure.value.code == "too_many_redirects"
    assert [p for p in site.paths if p.startswith("/six/")] == [f"/six/{n}" for n in range(1, 7)]


async def test_a_large_page_is_capped_and_its_download_stopped(site: PageServer) -> None:
    cap = 64 * 1024
    result = await open_tool(max_bytes=cap).run({"url": site.url("/big")}, CONTEXT)
    assert result["truncated"] is True
    assert "lorem ipsum" in result["content"] and len(result["content"]) <= cap
    delivery = next(d for d in site.deliveries if d.path == "/big")
    assert await asyncio.to_thread(delivery.done.wait, 5)
    assert delivery.aborted and delivery.bytes_sent < BIG_PIECES * len(BIG_PIECE) // 2


async def test_the_cap_applies_to_the_decompressed_body(site: PageServer) -> None:
    cap = 16 * 1024  # below the default max_length, so the content shows where the body ended
    result = await open_tool(max_bytes=cap).run({"url": site.url("/bomb")}, CONTEXT)
    assert result["truncated"] is True
    assert result["content"] == "a" * cap
    gzipped = await fetch(site.url("/gzip"))
    assert gzipped["title"] == "Rivers of Europe" and "Danube" in gzipped["content"]


async def test_reading_ends_with_the_compressed_stream(site: PageServer) -> None:
    """Bytes a server sends after the gzip stream's end are not waited for."""
    started = time.monotonic()
    result = await fetch(site.url("/gzip-then-more"))
    assert (result["content"], result["truncated"]) == ("the whole page", False)
    assert time.monotonic() - started < 1.5


async def test_content_is_cut_at_max_length(site: PageServer) -> None:
    whole = await fetch(site.url("/article"))
    cut = await fetch(site.url("/article"), max_length=40)
    assert cut["content"] == whole["content"][:40]
    assert cut["truncated"] is True
    assert cut["word_count"] == whole["word_count"]  # counts the whole text, not the cut


@pytest.mark.parametrize(
    ("path", "content"),
    [
        ("/notes.txt", "line one\nline two end\n"),  # control characters dropped
        ("/data.json", '{"river": "Danube", "length_km": 2850}'),
        ("/latin1.txt", "Café \u2013 déjà vu, naïve"),  # labelled Latin-1, read as browsers do
        ("/rot13.txt", "plain words"),  # hostile labels: codecs that are not text encodings
        ("/idna.txt", "plain words"),
    ],
)
async def test_text_passes_through(site: PageServer, path: str, content: str) -> None:
    result = await fetch(site.url(path))
    assert result["content"] == content
    assert (result["title"], result["description"], result["truncated"]) == (None, None, False)
    assert result["word_count"] == len(content.split())


@pytest.mark.parametrize(
    ("path", "content"), [("/utf7.txt", "a \ufffd b"), ("/escapes.txt", "a \ufffd b  c")]
)
async def test_decoding_never_yields_what_the_database_refuses(
    site: PageServer, path: str, content: str
) -> None:
    """Python codecs a page may name produce lone surrogates, which PostgreSQL cannot store."""
    assert (await fetch(site.url(path)))["content"] == content


async def test_a_result_fits_the_activity_even_when_every_character_needs_escaping(site: PageServer) -> None:
    result = await fetch(site.url("/quotes.txt"), max_length=50_000)
    assert result["truncated"] is True
    assert 40_000 < len(result["content"]) < 50_000 and set(result["content"]) == {'"'}


async def test_markup_that_breaks_the_extractor_still_gives_a_result(site: PageServer) -> None:
    result = await fetch(site.url("/svg-meta"))
    assert (result["status"], result["content"], result["truncated"]) == (200, "", False)


async def test_extraction_time_is_bounded_and_keeps_the_event_loop_free(site: PageServer) -> None:
    """Extraction runs in a thread on a bounded slice of the markup: the call ends in seconds,
    and the loop that sends the activity's heartbeats never waits long."""
    longest_gap, ticking = 0.0, True

    async def tick() -> None:
        nonlocal longest_gap
        last = time.monotonic()
        while ticking:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            longest_gap, last = max(longest_gap, now - last), now

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    try:
        result = await asyncio.wait_for(
            open_tool(max_bytes=5 << 20).run({"url": site.url("/heavy")}, CONTEXT), timeout=30
        )
    finally:
        ticking = False
        await ticker
    assert time.monotonic() - started < 15
    assert longest_gap < 1.0
    assert result["truncated"] is True and result["content"].startswith("some words here")
    assert_storable(result)


async def test_a_charset_declared_in_the_page_is_honoured(site: PageServer) -> None:
    result = await fetch(site.url("/cyrillic"))
    assert result["title"] == "Реки Европы"
    assert "Волга — самая длинная река Европы" in result["content"]


@pytest.mark.parametrize(
    ("path", "what"), [("/logo.png", "image/png"), ("/report.pdf", "application/pdf"), ("/untyped", "binary")]
)
async def test_binary_content_is_refused(site: PageServer, path: str, what: str) -> None:
    with pytest.raises(ToolFailed) as failure:
        await fetch(site.url(path))
    assert failure.value.code == "unsupported_content"
    assert what in failure.value.message


async def test_an_error_page_is_a_result_with_its_status(site: PageServer) -> None:
    result = await fetch(site.url("/missing"))
    assert (result["status"], result["content"]) == (404, "no such page")


async def test_an_unavailable_server_asks_for_a_retry(site: PageServer) -> None:
    with pytest.raises(ToolTemporarilyFailed, match="503"):
        await fetch(site.url("/down"))
    with pytest.raises(ToolTemporarilyFailed, match="could not reach"):
        await fetch(f"http://127.0.0.1:{free_port()}/")


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/silent", r"within 0\.3s"),
        ("/drip", r"did not finish loading within 0\.3s"),
    ],
)
async def test_a_slow_server_times_out(site: PageServer, path: str, message: str) -> None:
    """Silence trips a timeout; a slow drip, each byte in time for the read timeout, trips the overall one."""
    started = time.monotonic()
    with pytest.raises(ToolTemporarilyFailed, match=message):
        await open_tool(timeout=0.3).run({"url": site.url(path)}, CONTEXT)
    assert time.monotonic() - started < 1.5


def test_the_schema_bounds_the_arguments() -> None:
    check = SchemaCheck(FetchPageTool.spec.input_schema)
    assert check.errors({"url": "https://example.com/", "max_length": 100}) == []
    assert check.errors({"url": "https://example.com/", "max_length": 0})
    assert check.errors({"url": "https://example.com/", "max_length": 50_001})
    assert check.errors({"url": ""})
    assert check.errors({"url": "https://example.com/", "headers": {}})
    assert check.errors({})


def test_the_tool_is_always_available() -> None:
    tool = FetchPageTool.from_settings(Settings(_env_file=None))  # type: ignore[call-arg]
    assert tool.spec.name == "fetch_page" and not tool.spec.requires_confirmation


async def test_proxy_settings_in_the_environment_are_ignored(
    site: PageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with PageServer() as proxy:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(name, proxy.url("/"))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        result = await fetch(site.url("/article"))
    assert result["title"] == "Rivers of Europe"
    assert proxy.received == []


def test_the_fixture_refuses_lookups_and_connections_beyond_loopback(loopback_only: Any) -> None:
    """The guard the tests above rely on. Both probes are harmless even if the guard failed:
    a numeric-only lookup never asks DNS, and a connection to 0.0.0.0 stays on this machine."""
    with pytest.raises(PermissionError):
        socket.getaddrinfo("example.com", 80, flags=socket.AI_NUMERICHOST)
    with pytest.raises(PermissionError):
        socket.create_connection(("0.0.0.0", free_port()), timeout=0.5)
    assert [operation for operation, _ in loopback_only.attempts] == ["DNS lookup", "connect"]
    loopback_only.attempts.clear()  # expected here; the teardown check stays for everything else


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for the name secure.test only."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=secure.test",
            "-addext",
            "subjectAltName=DNS:secure.test",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_checks_the_certificate_against_the_name_not_the_address(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    with PageServer(str(TEST_PUBLIC), ssl_context=server_context) as server:
        server.page("/", "<html><head><title>Secure</title></head><body><p>over tls</p></body></html>")
        names = TableResolver({"secure.test": [str(TEST_PUBLIC)], "other.test": [str(TEST_PUBLIC)]})
        tool = FetchPageTool(
            timeout=2.0,
            max_bytes=1 << 20,
            policy=treat_127_0_0_2_as_public,
            resolver=names,
            ssl_context=ssl.create_default_context(cafile=cert),
        )
        result = await tool.run({"url": f"https://secure.test:{server.port}/"}, CONTEXT)
        assert (result["title"], result["content"]) == ("Secure", "over tls")
        with pytest.raises(ToolFailed) as failure:
            await tool.run({"url": f"https://other.test:{server.port}/"}, CONTEXT)
        assert failure.value.code == "certificate_invalid"
        assert "not valid for 'other.test'" in failure.value.message
    assert [r.host for r in server.received] == [f"secure.test:{server.port}"]
