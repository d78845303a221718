"""`web_search` as a tool: one search at a SearxNG instance or at Serper, as compact results.

Retries: a failure a retry may fix (5xx, timeout, unreachable backend) raises
ToolTemporarilyFailed and the activity is retried; an answer no retry can change (bad key,
spent credits, refused query) raises ToolFailed after exactly one request. The one retry made
here is for a 429 that asks to wait a few seconds (`Retry-After`): the activity's own backoff
would ignore the wait the backend asked for.

Everything the backend answers is data: the answer is read at most `_MAX_ANSWER_BYTES`
(decompressed in bounded steps), each result is cut down to `{title, url, snippet, date?,
source?, image_url?}` of plain text, and results stop before their JSON nears the activity's cut.

A user and password in SEARCH_URL go as an Authorization header, never in a request URL:
httpx logs every request's URL.
"""

import asyncio
import email.utils
import json
import zlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import httpx
import structlog
from pydantic import SecretStr

from core.config import Settings
from core.errors import ConfigurationError
from tools.base import InvalidArguments, ToolContext, ToolFailed, ToolSpec, ToolTemporarilyFailed
from tools.netguard import is_loopback_host
from tools.page_text import UnsupportedEncoding, read_capped
from tools.search_backends import (
    BackendRequest,
    RateLimited,
    RawResult,
    SearchBackend,
    SearchType,
    SearxngBackend,
    SerperBackend,
    answer_error,
    error_message,
    plain_text,
    public_origin,
)

log = structlog.get_logger(__name__)

SERPER_URL = "https://google.serper.dev"
# Google's own limit on a query's length.
MAX_QUERY_CHARS = 2048
_MAX_ANSWER_BYTES = 2 * 2**20
_MAX_URL_CHARS = 2048
_MAX_TITLE_CHARS, _MAX_SNIPPET_CHARS, _MAX_SOURCE_CHARS, _MAX_DATE_CHARS = 300, 500, 100, 64
# JSON characters of all results together; the activity cuts a result at 100,000.
_MAX_RESULTS_CHARS = 60_000
# A 429 is retried here at most this often, and only when the backend asks for a short wait.
_RATE_LIMIT_RETRIES = 2
_MAX_RATE_LIMIT_WAIT = 5.0
_DEFAULT_RATE_LIMIT_WAIT = 1.0

WEB_SEARCH_DESCRIPTION = (
    "Search the web. Returns the top results as title, url and a short snippet; news results add "
    "the date and publisher. Snippets are short: fetch a page to read it in full."
)
WEB_SEARCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_QUERY_CHARS,
            "description": "What to search for, as you would type it into a search engine.",
        },
        "type": {
            "type": "string",
            "enum": ["web", "news", "images"],
            "default": "web",
            "description": "web pages (default), recent news articles, or images.",
        },
        "num_results": {
            "type": "integer",
            "minimum": 1,
            "maximum": 20,
            "default": 5,
            "description": "How many results to return.",
        },
    },
    "required": ["query"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class SearchConfig:
    """Which backend web_search asks, and how (SEARCH_* settings)."""

    backend: Literal["searxng", "serper"]
    url: str
    api_key: SecretStr | None = field(default=None, repr=False)
    timeout: float = 15.0

    @classmethod
    def from_settings(cls, settings: Settings) -> "SearchConfig | None":
        """None while SEARCH_BACKEND is unset; `ConfigurationError` when it is set but unusable."""
        if settings.search_backend is None:
            if settings.search_url or settings.search_api_key:
                log.warning(
                    "SEARCH_URL or SEARCH_API_KEY is set but SEARCH_BACKEND is not; web_search is off"
                )
            return None
        key = settings.search_api_key
        if key is not None and not key.get_secret_value():
            key = None
        if settings.search_backend == "searxng" and not settings.search_url:
            raise ConfigurationError(
                "SEARCH_BACKEND=searxng needs SEARCH_URL, the instance's base URL (e.g. https://searx.example.org)"
            )
        if settings.search_backend == "serper" and key is None:
            raise ConfigurationError(
                "SEARCH_BACKEND=serper needs SEARCH_API_KEY (an API key from serper.dev)"
            )
        url = settings.search_url or SERPER_URL
        _check_url(url, has_key=key is not None, development=settings.is_development)
        timeout = settings.search_timeout.total_seconds()
        if timeout <= 0:
            raise ConfigurationError("SEARCH_TIMEOUT must be longer than zero")
        return cls(backend=settings.search_backend, url=url, api_key=key, timeout=timeout)

    def make_backend(self) -> SearchBackend:
        if self.backend == "searxng":
            return SearxngBackend(self.url, self.api_key)
        if self.api_key is None:
            raise ConfigurationError("SEARCH_BACKEND=serper needs SEARCH_API_KEY")
        return SerperBackend(self.url, self.api_key)


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: httpx.Headers
    body: bytes
    complete: bool


class WebSearchTool:
    """web_search through the configured backend; keeps one HTTP connection pool per worker."""

    spec = ToolSpec(name="web_search", description=WEB_SEARCH_DESCRIPTION, input_schema=WEB_SEARCH_SCHEMA)

    def __init__(self, config: SearchConfig) -> None:
        self._config = config
        self._backend = config.make_backend()
        self._where = f"{self._backend.name} at {public_origin(config.url)}"
        # What must never reach a result, an error or a log: the key and a password in SEARCH_URL.
        parts = urlsplit(config.url)
        password = parts.password or ""
        secrets = [config.api_key.get_secret_value() if config.api_key else "", password, unquote(password)]
        self._secrets = [secret for secret in secrets if secret]
        self._auth = (
            httpx.BasicAuth(unquote(parts.username or ""), unquote(password))
            if parts.username is not None or parts.password is not None
            else None
        )
        self._http: httpx.AsyncClient | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "WebSearchTool | None":
        config = SearchConfig.from_settings(settings)
        return cls(config) if config is not None else None

    def check(self, arguments: dict[str, Any]) -> None:
        if not str(arguments.get("query", "")).strip():
            raise InvalidArguments("query must not be blank")

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def run(self, arguments: dict[str, Any], context: ToolContext) -> Any:
        search_type: SearchType = arguments.get("type", "web")
        num_results = int(arguments.get("num_results", 5))
        request = self._backend.request(arguments["query"].strip(), search_type, num_results)
        payload = await self._exchange(request)
        results = normalise(self._backend.results(payload, search_type), num_results)
        log.info(
            "web search answered",
            backend=self._backend.name,
            type=search_type,
            results=len(results),
            tool_call_id=context.tool_call_id,
        )
        return {"results": results}

    async def _exchange(self, request: BackendRequest) -> Any:
        """The parsed JSON of a 2xx answer, after at most `_RATE_LIMIT_RETRIES` short waits on 429."""
        attempt = 0
        while True:
            answer = await self._send(request)
            if 200 <= answer.status < 300:
                return self._payload(answer)
            failure = answer_error(
                self._backend, answer.status, self._redact(error_message(answer.body)), _retry_after(answer)
            )
            if isinstance(failure, RateLimited) and attempt < _RATE_LIMIT_RETRIES:
                wait = _DEFAULT_RATE_LIMIT_WAIT if failure.retry_after is None else failure.retry_after
                if wait <= _MAX_RATE_LIMIT_WAIT:
                    attempt += 1
                    log.warning("search backend rate limited; waiting", backend=self._backend.name, wait=wait)
                    await asyncio.sleep(wait)
                    continue
            log.warning(
                "web search failed",
                backend=self._backend.name,
                status=answer.status,
                code=getattr(failure, "code", None),
            )
            raise failure

    async def _send(self, request: BackendRequest) -> _Answer:
        try:
            async with asyncio.timeout(self._config.timeout):
                async with self._client().stream(
                    request.method,
                    request.url,
                    params=request.params,
                    json=request.json,
                    headers=request.headers,
                ) as response:
                    body, capped = await read_capped(response, _MAX_ANSWER_BYTES)
                    return _Answer(response.status_code, response.headers, body, complete=not capped)
        except (TimeoutError, httpx.TimeoutException):
            raise ToolTemporarilyFailed(
                f"{self._where} did not answer within {self._config.timeout:g} s"
            ) from None
        except httpx.TransportError as err:
            # The exception is not chained: httpx keeps the request (and its key header) on it.
            raise ToolTemporarilyFailed(
                f"{self._where} could not be reached ({type(err).__name__})"
            ) from None
        except (UnsupportedEncoding, zlib.error):
            raise ToolFailed(
                "search_bad_response", f"{self._backend.name} sent an answer that cannot be decoded"
            ) from None

    def _payload(self, answer: _Answer) -> Any:
        if not answer.complete:
            raise ToolFailed(
                "search_bad_response",
                f"{self._backend.name} answered with more than {_MAX_ANSWER_BYTES // 2**20} MB",
            )
        try:
            return json.loads(answer.body)
        except (ValueError, RecursionError):
            raise ToolFailed(
                "search_bad_response", f"{self._backend.name} answered with something other than JSON"
            ) from None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                auth=self._auth,
                timeout=self._config.timeout,
                follow_redirects=False,
                # Proxies and netrc from the environment have no say in where the key goes.
                trust_env=False,
                # Uncompressed answers preferred; a compressed one is inflated within the cap anyway.
                headers={
                    "Accept": "application/json",
                    "Accept-Encoding": "identity",
                    "User-Agent": "durable-assistant web_search",
                },
            )
        return self._http

    def _redact(self, text: str) -> str:
        """Backend text with the key cut out, should a backend ever echo it."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def normalise(raw: list[RawResult], limit: int) -> list[dict[str, str]]:
    """At most `limit` results with an http(s) url, each url once, every field plain and short."""
    results: list[dict[str, str]] = []
    seen: set[str] = set()
    size = 0
    for item in raw:
        url = _web_url(item.url)
        if url is None or url in seen:
            continue
        seen.add(url)
        result = {
            "title": plain_text(item.title, _MAX_TITLE_CHARS) or _host(url),
            "url": url,
            "snippet": plain_text(item.snippet, _MAX_SNIPPET_CHARS),
        }
        published = _date(item.date)
        if published:
            result["date"] = published
        result["source"] = plain_text(item.source, _MAX_SOURCE_CHARS) or _host(url)
        image_url = _web_url(item.image_url)
        if image_url:
            result["image_url"] = image_url
        size += len(json.dumps(result, ensure_ascii=False))
        if size > _MAX_RESULTS_CHARS:
            break
        results.append(result)
        if len(results) == limit:
            break
    return results


def _web_url(value: Any) -> str | None:
    """The value if it is an absolute http(s) URL of sane length, else None (javascript:, data:, …)."""
    if not isinstance(value, str):
        return None
    url = value.strip()
    if not url or len(url) > _MAX_URL_CHARS or not url.isprintable() or " " in url:
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return url


def _host(url: str) -> str:
    host = urlsplit(url).hostname or ""
    return host.removeprefix("www.")


def _date(value: Any) -> str | None:
    """ISO 8601 when the backend's date parses as a date ("2024-05-02", "May 2, 2024"), else its text
    ("3 hours ago")."""
    text = plain_text(value, _MAX_DATE_CHARS)
    if not text:
        return None
    try:
        if len(text) == 10:
            return date.fromisoformat(text).isoformat()
        return datetime.fromisoformat(text).isoformat()
    except ValueError:
        pass
    for form in ("%b %d, %Y", "%d %b %Y", "%B %d, %Y"):
        try:
            return datetime.strptime(text, form).date().isoformat()
        except ValueError:
            continue
    return text


def _retry_after(answer: _Answer) -> float | None:
    """Seconds the backend asked to wait (`Retry-After` as seconds or an HTTP date)."""
    value = answer.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _check_url(url: str, *, has_key: bool, development: bool) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ConfigurationError("SEARCH_URL is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigurationError(
            "SEARCH_URL must be an http(s) base URL without query or fragment (e.g. https://searx.example.org)"
        )
    secret = has_key or bool(parts.password)
    if parts.scheme == "http" and secret and not development and not is_loopback_host(parts.hostname):
        raise ConfigurationError("SEARCH_URL uses http: the credentials would travel in clear; use https")
