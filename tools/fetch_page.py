"""`fetch_page`: a web page as readable text, fetched only from public addresses.

Connections go through tools/netguard.py: every address a host resolves to is checked and the
socket is opened to a checked address. Redirects are followed here, one hop at a time
(at most five), so each target's scheme is judged like the first URL's and its host is
checked when its connection opens. Proxy variables are ignored: a proxy would make the
connection, and the address check, somewhere else.

The body is read raw and decompressed here, in bounded steps, so that FETCH_MAX_BYTES caps
what the page expands to and not only what crosses the wire. HTML is reduced to its main text
by trafilatura, in a thread (it is CPU-bound and the worker's heartbeats share the event loop);
other text passes through; anything else is refused before its body is read.

Every HTTP answer is a result with its status (a 404 page is information), except 502, 503
and 504, which ask for another attempt. `word_count` counts the whole text that was read, even
when `content` is cut to `max_length`. Page text is untrusted data and is returned only as data.
"""

import asyncio
import codecs
import re
import ssl
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import charset_normalizer
import httpx
import structlog
import trafilatura
from trafilatura.settings import Document

from core.config import Settings
from tools.base import ToolContext, ToolFailed, ToolSpec, ToolTemporarilyFailed
from tools.netguard import (
    AddressGuard,
    AddressNotAllowed,
    AddressPolicy,
    GuardedTransport,
    HostNotFound,
    Resolver,
    any_address,
    public_only,
    system_resolver,
)

log = structlog.get_logger(__name__)

MAX_REDIRECTS = 5
DEFAULT_MAX_LENGTH = 20_000
# Results are cut at 100,000 characters of JSON; escaping can nearly double page text.
MAX_LENGTH_LIMIT = 50_000
MAX_URL_LENGTH = 4096
_MAX_TITLE = 500
_MAX_DESCRIPTION = 1000

FETCH_PAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        "url": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_URL_LENGTH,
            "description": "The page's http or https URL.",
        },
        "max_length": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_LENGTH_LIMIT,
            "default": DEFAULT_MAX_LENGTH,
            "description": f"Most characters of content to return (default {DEFAULT_MAX_LENGTH}).",
        },
    },
}

FETCH_PAGE_DESCRIPTION = (
    "Fetch a web page by URL and return its readable text: title, description, main content, "
    "word_count, the final URL after redirects and the HTTP status. HTML is reduced to its main "
    "text; plain text, JSON and XML come back as they are; images, PDFs and other binary files "
    "are refused. Only public internet addresses can be fetched. `truncated` says whether the "
    "content was cut."
)

_REDIRECT_STATUSES = {301, 302, 303, 307, 308}
_RETRY_STATUSES = {502, 503, 504}
_HTML_TYPES = {"text/html", "application/xhtml+xml"}
_TEXT_APPLICATION_TYPES = {
    "application/json",
    "application/xml",
    "application/javascript",
    "application/x-javascript",
    "application/yaml",
    "application/x-yaml",
    "application/x-ndjson",
}
# What a page labelled Latin-1 or ASCII really is, as browsers read it (WHATWG Encoding).
_BROWSER_CHARSETS = {"iso8859-1": "cp1252", "ascii": "cp1252"}
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-z0-9_.:-]+)""", re.IGNORECASE)
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HEADERS = {
    "User-Agent": "Mozilla/5.0 (compatible; durable-assistant fetch_page)",
    "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.5",
    "Accept-Encoding": "gzip",
}

_Kind = Literal["html", "text", "binary", "unknown"]


@dataclass(frozen=True)
class _Download:
    """What one fetch brought back, before it is read as text."""

    final_url: str
    status: int
    kind: _Kind
    charset: str | None
    body: bytes
    capped: bool


class FetchPageTool:
    """Fetches over a connection guard; nothing is kept between calls (cookies included)."""

    spec = ToolSpec(name="fetch_page", description=FETCH_PAGE_DESCRIPTION, input_schema=FETCH_PAGE_SCHEMA)

    def __init__(
        self,
        *,
        timeout: float,
        max_bytes: int,
        policy: AddressPolicy = public_only,
        resolver: Resolver = system_resolver,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._guard = AddressGuard(policy, resolver)
        self._ssl_context = ssl_context or httpx.create_ssl_context()

    @classmethod
    def from_settings(cls, settings: Settings) -> "FetchPageTool":
        """Always available; FETCH_ALLOW_PRIVATE_NETWORKS lifts the address policy."""
        return cls(
            timeout=settings.fetch_timeout.total_seconds(),
            max_bytes=settings.fetch_max_bytes,
            policy=any_address if settings.fetch_allow_private_networks else public_only,
        )

    def check(self, arguments: dict[str, Any]) -> None:
        """The URL is judged in `run`, where each redirect's URL is judged the same way."""

    async def aclose(self) -> None:
        """Each call opens and closes its own client: nothing to release."""

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        url = _web_url(arguments["url"])
        max_length = arguments.get("max_length", DEFAULT_MAX_LENGTH)
        download = await self._download(url)
        title, description, text = await asyncio.to_thread(_readable, download)
        return {
            "url": arguments["url"],
            "final_url": download.final_url,
            "status": download.status,
            "title": title,
            "description": description,
            "content": text[:max_length],
            "word_count": len(text.split()),
            "truncated": download.capped or len(text) > max_length,
        }

    async def _download(self, url: httpx.URL) -> _Download:
        try:
            async with (
                asyncio.timeout(self._timeout),
                httpx.AsyncClient(
                    transport=GuardedTransport(self._guard, ssl_context=self._ssl_context),
                    timeout=self._timeout,
                    follow_redirects=False,
                    trust_env=False,
                    headers=_HEADERS,
                ) as client,
            ):
                return await self._follow(client, url)
        except AddressNotAllowed as err:
            log.info("fetch refused", host=err.host, address=str(err.address), reason=err.reason)
            raise ToolFailed(
                "address_not_allowed",
                f"{err}; fetch_page only reaches public internet addresses (an operator can allow "
                "private networks with FETCH_ALLOW_PRIVATE_NETWORKS=true)",
            ) from err
        except HostNotFound as err:
            raise ToolFailed("host_not_found", f"{err} (no DNS record)") from err
        except TimeoutError as err:
            raise ToolTemporarilyFailed(f"{url} did not finish loading within {self._timeout:g}s") from err
        except httpx.TimeoutException as err:
            host = _failed_host(err, url)
            raise ToolTemporarilyFailed(f"{host} did not answer within {self._timeout:g}s") from err
        except httpx.NetworkError as err:
            host = _failed_host(err, url)
            invalid = _certificate_error(err)
            if invalid is not None:
                raise ToolFailed(
                    "certificate_invalid", f"{host}'s TLS certificate is not valid: {invalid.verify_message}"
                ) from err
            raise ToolTemporarilyFailed(f"could not reach {host}: {err or type(err).__name__}") from err
        except httpx.ProtocolError as err:
            host = _failed_host(err, url)
            raise ToolFailed("bad_response", f"{host} sent a malformed HTTP response: {err}") from err
        except zlib.error as err:
            raise ToolFailed("bad_response", f"the page's compressed body is corrupt: {err}") from err

    async def _follow(self, client: httpx.AsyncClient, url: httpx.URL) -> _Download:
        for _ in range(MAX_REDIRECTS + 1):
            async with client.stream("GET", url) as response:
                location = response.headers.get("location")
                if response.status_code in _REDIRECT_STATUSES and location:
                    url = _redirect_target(response.url, location)
                    continue
                return await self._read(response)
        raise ToolFailed("too_many_redirects", f"the page redirected more than {MAX_REDIRECTS} times")

    async def _read(self, response: httpx.Response) -> _Download:
        if response.status_code in _RETRY_STATUSES:
            raise ToolTemporarilyFailed(f"{response.url.host} answered {response.status_code}")
        media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        kind = _kind(media_type)
        if kind == "binary":
            raise _unsupported(media_type)
        body, capped = await _read_capped(response, self._max_bytes)
        if kind == "unknown":
            kind = _sniff(body)
            if kind == "binary":
                raise _unsupported("binary data")
        return _Download(
            str(response.url), response.status_code, kind, response.charset_encoding, body, capped
        )


def _web_url(text: str) -> httpx.URL:
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as err:
        raise ToolFailed("unsupported_url", f"{text[:200]!r} is not a valid URL: {err}") from err
    if url.scheme not in ("http", "https") or not url.host:
        raise ToolFailed("unsupported_url", f"only http and https URLs can be fetched, not {text[:200]!r}")
    return url


def _redirect_target(current: httpx.URL, location: str) -> httpx.URL:
    try:
        target = current.join(location)
    except httpx.InvalidURL as err:
        raise ToolFailed("unsupported_url", f"the page redirected to an invalid URL: {err}") from err
    if len(str(target)) > MAX_URL_LENGTH:
        raise ToolFailed("unsupported_url", f"the page redirected to a URL over {MAX_URL_LENGTH} characters")
    return _web_url(str(target))


def _failed_host(err: httpx.RequestError, first: httpx.URL) -> str:
    """The host of the request that failed: after a redirect it is not the first URL's."""
    try:
        return err.request.url.host
    except RuntimeError:  # the error was raised outside any request
        return first.host


def _certificate_error(err: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate check that failed under a connection error, if that was the cause."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _kind(media_type: str) -> _Kind:
    if not media_type:
        return "unknown"
    if media_type in _HTML_TYPES:
        return "html"
    if (
        media_type.startswith("text/")
        or media_type in _TEXT_APPLICATION_TYPES
        or media_type.endswith(("+json", "+xml"))
    ):
        return "text"
    return "binary"


def _sniff(body: bytes) -> _Kind:
    """The kind of a body sent without a Content-Type."""
    head = body[:1024]
    if b"\x00" in head:
        return "binary"
    lowered = head.lstrip().lower()
    return "html" if lowered.startswith(b"<!doctype html") or b"<html" in lowered else "text"


def _unsupported(what: str) -> ToolFailed:
    return ToolFailed(
        "unsupported_content",
        f"the URL serves {what}, not a web page or text; fetch_page reads HTML and text only",
    )


async def _read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the decoded body, and whether there was more."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        inflate = None
    elif encoding in ("gzip", "x-gzip", "deflate"):
        inflate = zlib.decompressobj(zlib.MAX_WBITS | (16 if "gzip" in encoding else 0))
    else:
        raise ToolFailed(
            "unsupported_content", f"the page is encoded as {encoding!r}, which is not supported"
        )
    body = bytearray()
    async for chunk in response.aiter_raw():
        # A bounded step: a small compressed chunk must not expand past the cap in memory.
        data = chunk if inflate is None else inflate.decompress(chunk, limit + 1 - len(body))
        body += data
        if len(body) > limit:
            return bytes(body[:limit]), True
    return bytes(body), False


def _readable(download: _Download) -> tuple[str | None, str | None, str]:
    """Title, description and text of a download (CPU-bound: run it in a thread)."""
    text = _decode(download)
    title = description = None
    if download.kind == "html":
        title, description, text = _html_text(text, download.final_url)
    return _clean(title, _MAX_TITLE), _clean(description, _MAX_DESCRIPTION), _clean(text) or ""


def _decode(download: _Download) -> str:
    body = download.body
    if body.startswith(codecs.BOM_UTF8):
        return body[len(codecs.BOM_UTF8) :].decode("utf-8", "replace")
    charset = _known_charset(download.charset)
    if charset is None and download.kind == "html":
        declared = _META_CHARSET.search(body[:4096])
        charset = _known_charset(declared[1].decode("ascii") if declared else None)
    if charset is None:
        try:
            # Not final: a body cut by the cap may end inside a character.
            return codecs.getincrementaldecoder("utf-8")().decode(body, final=False)
        except UnicodeDecodeError:
            guess = charset_normalizer.from_bytes(body).best()
            charset = guess.encoding if guess is not None else "utf-8"
    try:
        return body.decode(charset, "replace")
    except (LookupError, UnicodeError):  # a codec such as idna, which refuses "replace"
        return body.decode("utf-8", "replace")


def _known_charset(name: str | None) -> str | None:
    """A text encoding Python knows by that name; not a codec like rot13 or base64."""
    if not name:
        return None
    try:
        canonical = codecs.lookup(name).name
        b"".decode(canonical)
    except (LookupError, UnicodeError):
        return None
    return _BROWSER_CHARSETS.get(canonical, canonical)


def _html_text(html: str, url: str) -> tuple[str | None, str | None, str]:
    """trafilatura's main text and metadata; all visible text when it finds no main content."""
    try:
        document = trafilatura.bare_extraction(html, url=url, with_metadata=True, include_comments=False)
    except Exception:  # hostile markup must not fail the call: fall back to plain text
        log.warning("page extraction failed", url=url, exc_info=True)
        document = None
    if isinstance(document, Document) and document.text:
        return document.title, document.description, document.text
    metadata = trafilatura.extract_metadata(html) if html.strip() else None
    text = trafilatura.html2txt(html) if html.strip() else ""
    return (metadata.title, metadata.description, text) if metadata else (None, None, text)


def _clean(text: str | None, limit: int | None = None) -> str | None:
    """Text without control characters (jsonb and terminals refuse them), cut to `limit`."""
    if text is None:
        return None
    cleaned = _CONTROL_CHARS.sub("", text.replace("\r\n", "\n"))
    return cleaned[:limit] if limit else cleaned
