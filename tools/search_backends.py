"""The two web_search backends: the request each expects, and its answer read defensively.

Wire formats, from the backends' own documentation and code:

- SearxNG (https://docs.searxng.org/dev/search_api.html): `GET /search?q=…&format=json&
  categories=general|news|images&pageno=1`. The answer is `searx/webutils.py:get_json_response`:
  `{query, number_of_results, results: [{url, title, content, engine, engines, category,
  publishedDate (ISO 8601 or null), img_src?, thumbnail_src?, …}], answers, corrections,
  infoboxes, suggestions, unresponsive_engines: [[engine, reason]]}`, about 20 results a page.
  An instance whose `search.formats` lacks `json` answers 403; SearxNG has no API keys of its
  own, so SEARCH_API_KEY is sent as `Authorization: Bearer …` for a proxy in front of it.
- Serper (https://serper.dev, API playground): `POST https://google.serper.dev/{search,news,
  images}` with JSON `{q, num}` and the `X-API-KEY` header. Answers `{searchParameters,
  organic: [{title, link, snippet, date?, position}] | news: [{title, link, snippet, date,
  source, imageUrl}] | images: [{title, imageUrl, link, source, domain, …}], credits}`. A bad
  key answers 403 `{"message": "Unauthorized.", "statusCode": 403}`, spent credits 400
  `{"message": "Not enough credits", "statusCode": 400}`.

Answers are untrusted: a backend result is read field by field and anything unexpected is
dropped (tools/web_search.py normalises what is left).
"""

import html
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urljoin, urlsplit, urlunsplit

from pydantic import SecretStr

from tools.base import ToolFailed, ToolTemporarilyFailed

SearchType = Literal["web", "news", "images"]

_SEARXNG_CATEGORIES: dict[SearchType, str] = {"web": "general", "news": "news", "images": "images"}
_SERPER_ENDPOINTS: dict[SearchType, tuple[str, str]] = {
    "web": ("/search", "organic"),
    "news": ("/news", "news"),
    "images": ("/images", "images"),
}
# SearxNG's JSON carries what its engines scraped; some keep highlight markup or entities.
_TAG = re.compile(r"<[^<>]*>")
_INVISIBLE_BLOCK = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
# Serper tells of spent credits only in the message of a 400 (or 403/429 at other providers'
# gateways), so the text is the one signal there is.
_QUOTA_WORDS = ("credit", "quota")
_MAX_MESSAGE_CHARS = 200
# Characters that have no place in a snippet and that PostgreSQL's jsonb (NUL) or UTF-8
# (lone surrogates) cannot store; whitespace is collapsed separately.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True)
class BackendRequest:
    """One HTTP request to a backend; `headers` may hold the key, so it is never shown."""

    method: Literal["GET", "POST"]
    url: str
    params: dict[str, str] | None = None
    json: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class RawResult:
    """A result as the backend gave it: any field may be missing, of any type, or hostile."""

    title: Any
    url: Any
    snippet: Any
    date: Any = None
    source: Any = None
    image_url: Any = None


class SearchBackend(Protocol):
    name: str
    # What a 401/403 most likely means for this backend, for the operator reading the error.
    auth_hint: str

    def request(self, query: str, search_type: SearchType, num_results: int) -> BackendRequest: ...

    def results(self, payload: Any, search_type: SearchType) -> list[RawResult]:
        """The results of a 2xx answer; ToolFailed("search_bad_response") for another shape."""
        ...


class SearxngBackend:
    """A SearxNG instance's JSON API."""

    name = "SearxNG"
    auth_hint = (
        "the instance may not allow format=json (search.formats in its settings.yml) or a proxy in "
        "front of it may need SEARCH_API_KEY"
    )

    def __init__(self, base_url: str, api_key: SecretStr | None) -> None:
        self._base_url = without_userinfo(base_url).rstrip("/")
        # Relative image links (SearxNG's image proxy) are resolved against this.
        self._public_base = self._base_url + "/"
        self._headers = {"Authorization": f"Bearer {api_key.get_secret_value()}"} if api_key else {}

    def request(self, query: str, search_type: SearchType, num_results: int) -> BackendRequest:
        # One page holds ~20 results, enough for num_results ≤ 20.
        params = {"q": query, "format": "json", "categories": _SEARXNG_CATEGORIES[search_type], "pageno": "1"}
        return BackendRequest("GET", f"{self._base_url}/search", params=params, headers=self._headers)

    def results(self, payload: Any, search_type: SearchType) -> list[RawResult]:
        items = payload.get("results") if isinstance(payload, dict) else None
        if not isinstance(items, list):
            raise _bad_response(self.name, "it has no `results` list")
        found = [self._result(item, search_type) for item in items if isinstance(item, dict)]
        if not found:
            _raise_if_engines_failed(payload.get("unresponsive_engines"))
        return found

    def _result(self, item: dict[str, Any], search_type: SearchType) -> RawResult:
        image = (item.get("img_src") or item.get("thumbnail_src")) if search_type == "images" else None
        return RawResult(
            title=_html_text(item.get("title")),
            url=item.get("url"),
            snippet=_html_text(item.get("content")),
            date=item.get("publishedDate"),
            image_url=urljoin(self._public_base, image) if isinstance(image, str) else None,
        )


class SerperBackend:
    """Serper's Google search API."""

    name = "Serper"
    auth_hint = "check SEARCH_API_KEY"

    def __init__(self, base_url: str, api_key: SecretStr) -> None:
        self._base_url = without_userinfo(base_url).rstrip("/")
        self._headers = {"X-API-KEY": api_key.get_secret_value()}

    def request(self, query: str, search_type: SearchType, num_results: int) -> BackendRequest:
        path, _ = _SERPER_ENDPOINTS[search_type]
        body = {"q": query, "num": num_results}
        return BackendRequest("POST", f"{self._base_url}{path}", json=body, headers=self._headers)

    def results(self, payload: Any, search_type: SearchType) -> list[RawResult]:
        if not isinstance(payload, dict):
            raise _bad_response(self.name, "it is not a JSON object")
        _, key = _SERPER_ENDPOINTS[search_type]
        # Serper leaves a section out when it has nothing in it.
        items = payload.get(key, [])
        if not isinstance(items, list):
            raise _bad_response(self.name, f"`{key}` is not a list")
        return [self._result(item, search_type) for item in items if isinstance(item, dict)]

    @staticmethod
    def _result(item: dict[str, Any], search_type: SearchType) -> RawResult:
        return RawResult(
            title=item.get("title"),
            url=item.get("link"),
            snippet=item.get("snippet"),
            date=item.get("date"),
            source=item.get("source"),
            image_url=item.get("imageUrl") if search_type == "images" else None,
        )


class RateLimited(ToolTemporarilyFailed):
    """A 429 that is not about credits: worth another request after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def answer_error(backend: SearchBackend, status: int, message: str, retry_after: float | None) -> Exception:
    """What a non-2xx answer means: ToolFailed (never retried) or ToolTemporarilyFailed."""
    said = f"HTTP {status}: {message}" if message else f"HTTP {status}"
    if status == 402 or (status in (400, 403, 429) and any(w in message.lower() for w in _QUOTA_WORDS)):
        return ToolFailed(
            "search_quota_exceeded",
            f"the {backend.name} account has no searches left ({said}); an operator must add credits "
            "or wait for the quota to renew",
        )
    if status in (401, 403):
        return ToolFailed(
            "search_auth_failed", f"{backend.name} refused the request ({said}): {backend.auth_hint}"
        )
    if status == 429:
        return RateLimited(f"{backend.name} is rate limiting searches ({said})", retry_after)
    if status == 408 or status >= 500:
        return ToolTemporarilyFailed(f"{backend.name} failed to answer the search ({said})")
    if 300 <= status < 400:
        return ToolFailed(
            "search_failed",
            f"{backend.name} answered with a redirect (HTTP {status}); SEARCH_URL must be the service's "
            "final address",
        )
    return ToolFailed("search_failed", f"{backend.name} refused the search ({said})")


def error_message(body: bytes) -> str:
    """The backend's own words in an error answer (JSON `message`/`error`, or the page's text), short."""
    text = body[: 64 * 1024].decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        said = parsed.get("message") or parsed.get("error") or parsed.get("detail")
        if isinstance(said, dict):
            said = said.get("message")
        if isinstance(said, str):
            text = said
    return plain_text(html.unescape(_TAG.sub(" ", _INVISIBLE_BLOCK.sub(" ", text))), _MAX_MESSAGE_CHARS)


def plain_text(value: Any, limit: int) -> str:
    """One line of printable text of at most `limit` characters; "" for anything but a string."""
    if not isinstance(value, str):
        return ""
    text = " ".join(_UNPRINTABLE.sub(" ", value).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _raise_if_engines_failed(unresponsive: Any) -> None:
    """No results while some engines failed is not "nothing found", nor worth retrying: engines
    time out or hit CAPTCHAs all the time, so the model is told which did not answer."""
    if not isinstance(unresponsive, list) or not unresponsive:
        return
    reasons = []
    for entry in unresponsive[:5]:
        if isinstance(entry, list) and entry:
            reasons.append(" ".join(plain_text(str(part), 60) for part in entry[:2]))
    raise ToolFailed(
        "search_failed",
        "the SearxNG instance found nothing, and some of its engines did not answer: "
        + "; ".join(reasons)
        + "; try again later or with other words",
    )


def _html_text(value: Any) -> Any:
    """Markup removed and entities decoded; anything but a string is left for normalisation to drop."""
    if not isinstance(value, str):
        return value
    return html.unescape(_TAG.sub("", value))


def without_userinfo(url: str) -> str:
    """The URL without user and password: they travel as an Authorization header instead, which
    httpx, unlike the URL, does not write to its log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def public_origin(url: str) -> str:
    """`scheme://host[:port]` of a backend URL, for messages (no credentials, no path)."""
    parts = urlsplit(without_userinfo(url))
    return f"{parts.scheme}://{parts.netloc}"


def _bad_response(backend: str, why: str) -> ToolFailed:
    return ToolFailed("search_bad_response", f"{backend} answered with an unexpected response: {why}")
