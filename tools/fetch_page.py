"""`fetch_page`: a web page as readable text, fetched only from public addresses.

Connections go through tools/netguard.py: every address a host resolves to is checked and the
socket is opened to a checked address. Redirects are followed here, one hop at a time
(at most five), so each target's scheme is judged like the first URL's and its host is
checked when its connection opens. Proxy variables are ignored: a proxy would make the
connection, and the address check, somewhere else.

The body is read within FETCH_MAX_BYTES, decompressed in bounded steps, and turned into text
by tools/page_text.py, in a thread (extraction is CPU-bound and the worker's heartbeats share
the event loop). HTML is reduced to its main text; other text passes through; anything else is
refused before its body is read. A result stays under the activity's cut whatever the page
holds: `content` is shortened until its JSON fits.

Every HTTP answer is a result with its status (a 404 page is information), except 502, 503
and 504, which ask for another attempt. `word_count` counts the whole text that was read, even
when `content` is cut to `max_length`. Page text is untrusted data and is returned only as data.
"""

import asyncio
import json
import ssl
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import structlog

from core.config import Settings
from tools.base import ToolContext, ToolFailed, ToolSpec, ToolTemporarilyFailed
from tools.netguard import (
    AddressGuard,
    AddressNotAllowed,
    AddressPolicy,
    GuardedTransport,
    HostNotFound,
    LookupFailed,
    Resolver,
    private_networks,
    public_only,
    system_resolver,
)
from tools.page_text import UnsupportedEncoding, page_text, read_capped

log = structlog.get_logger(__name__)

MAX_REDIRECTS = 5
DEFAULT_MAX_LENGTH = 20_000
MAX_LENGTH_LIMIT = 50_000
MAX_URL_LENGTH = 4096
# The activity cuts a result's JSON at 100,000 characters (activities/tools.py), which would
# leave the model broken JSON; escaping can double page text, so the JSON is measured.
_MAX_RESULT_CHARS = 95_000

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
        self._refusal_hint = (
            "fetch_page never reaches the cloud platform's own services"
            if policy is private_networks
            else "fetch_page only reaches public internet addresses (an operator can allow private "
            "networks with FETCH_ALLOW_PRIVATE_NETWORKS=true)"
        )
        self._ssl_context = ssl_context or httpx.create_ssl_context()

    @classmethod
    def from_settings(cls, settings: Settings) -> "FetchPageTool":
        """Always available; FETCH_ALLOW_PRIVATE_NETWORKS lifts the address policy."""
        return cls(
            timeout=settings.fetch_timeout.total_seconds(),
            max_bytes=settings.fetch_max_bytes,
            policy=private_networks if settings.fetch_allow_private_networks else public_only,
        )

    def check(self, arguments: dict[str, Any]) -> None:
        """The URL is judged in `run`, where each redirect's URL is judged the same way."""

    async def aclose(self) -> None:
        """Each call opens and closes its own client: nothing to release."""

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        url = _web_url(arguments["url"])
        max_length = arguments.get("max_length", DEFAULT_MAX_LENGTH)
        download = await self._download(url)
        page = await asyncio.to_thread(
            page_text,
            download.body,
            html=download.kind == "html",
            charset=download.charset,
            url=download.final_url,
        )
        result = {
            "url": arguments["url"],
            "final_url": download.final_url,
            "status": download.status,
            "title": page.title,
            "description": page.description,
            "content": page.text[:max_length],
            "word_count": len(page.text.split()),
            "truncated": download.capped or page.partial or len(page.text) > max_length,
        }
        return _fitted(result)

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
            raise ToolFailed("address_not_allowed", f"{err}; {self._refusal_hint}") from err
        except HostNotFound as err:
            raise ToolFailed("host_not_found", f"{err} (no DNS record)") from err
        except LookupFailed as err:
            raise ToolTemporarilyFailed(str(err)) from err
        except UnsupportedEncoding as err:
            raise ToolFailed(
                "unsupported_content", f"the page is encoded as {err.encoding!r}, which is not supported"
            ) from err
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
        except UnicodeError as err:  # httpx reads every Location, followed or not; IDNA refused its host
            raise ToolFailed("unsupported_url", f"the page redirected to an invalid URL: {err}") from err

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
        body, capped = await read_capped(response, self._max_bytes)
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
        host = url.host  # decoded from IDNA, which refuses a malformed A-label such as "xn--"
    except (httpx.InvalidURL, UnicodeError) as err:  # UnicodeError: also a lone surrogate
        raise ToolFailed("unsupported_url", f"{text[:200]!r} is not a valid URL: {err}") from err
    if url.scheme not in ("http", "https") or not host:
        raise ToolFailed("unsupported_url", f"only http and https URLs can be fetched, not {text[:200]!r}")
    if url.port is not None and not 0 < url.port < 65536:
        raise ToolFailed(
            "unsupported_url", f"{text[:200]!r} names port {url.port}, which no server listens on"
        )
    if len(str(url)) > MAX_URL_LENGTH:
        raise ToolFailed("unsupported_url", f"the URL is over {MAX_URL_LENGTH} characters once encoded")
    return url


def _redirect_target(current: httpx.URL, location: str) -> httpx.URL:
    try:
        target = str(current.join(location))
    except (httpx.InvalidURL, UnicodeError) as err:
        raise ToolFailed("unsupported_url", f"the page redirected to an invalid URL: {err}") from err
    return _web_url(target)


def _fitted(result: dict[str, Any]) -> dict[str, Any]:
    """The result with `content` shortened until its JSON is under _MAX_RESULT_CHARS."""
    excess = len(json.dumps(result, ensure_ascii=False)) - _MAX_RESULT_CHARS
    if excess > 0:
        # Every character takes at least one in JSON, so cutting `excess` of them is enough.
        result["content"] = result["content"][: max(0, len(result["content"]) - excess)]
        result["truncated"] = True
    return result


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
