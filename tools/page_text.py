"""A fetched HTTP body as text: read within a cap, decoded, and HTML reduced to its main text.

- The body is read raw and decompressed here in bounded steps, so that a cap counts what the
  body expands to and not only what crosses the wire (kilobytes of gzip can hold gigabytes).
- Extraction is CPU-bound and its cost grows with the markup, so it is bounded twice:
  trafilatura runs without its fallback extractors (jusText's paragraph revision is quadratic:
  minutes for 5 MB of nested blocks), and it reads at most `MAX_MARKUP_CHARS` of markup,
  scripts and styles of a longer page dropped first. Callers run `page_text` in a thread.
- Every string that leaves here can be stored: PostgreSQL's jsonb takes no NUL, and UTF-8 no
  lone surrogate (which codecs a page may name, such as utf-7, produce).
"""

import codecs
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import charset_normalizer
import httpx
import structlog
import trafilatura
from trafilatura.settings import Document

log = structlog.get_logger(__name__)

# About three seconds of extraction on a slow machine, and far more than `max_length` of text.
MAX_MARKUP_CHARS = 1_000_000
_MAX_TITLE = 500
_MAX_DESCRIPTION = 1000
# What a page labelled Latin-1 or ASCII really is, as browsers read it (WHATWG Encoding).
_BROWSER_CHARSETS = {"iso8859-1": "cp1252", "ascii": "cp1252"}
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-z0-9_.:-]+)""", re.IGNORECASE)
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATES = re.compile(r"[\ud800-\udfff]")
_INVISIBLE_OPENING = re.compile(r"<(script|style)\b", re.IGNORECASE)
_INVISIBLE_CLOSING = {
    "script": re.compile(r"</script\s*>", re.IGNORECASE),
    "style": re.compile(r"</style\s*>", re.IGNORECASE),
}


class UnsupportedEncoding(Exception):
    """The body's Content-Encoding is one `read_capped` does not undo."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        super().__init__(f"the body is encoded as {encoding!r}, which is not supported")


@dataclass(frozen=True)
class PageText:
    """What a body says, as text that can be stored."""

    title: str | None
    description: str | None
    text: str
    # Markup beyond MAX_MARKUP_CHARS was not read.
    partial: bool


async def read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the decoded body, and whether there was more.

    Raises UnsupportedEncoding, and zlib.error for a corrupt compressed body."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        inflate = None
    elif encoding in ("gzip", "x-gzip", "deflate"):
        inflate = zlib.decompressobj(zlib.MAX_WBITS | (16 if "gzip" in encoding else 0))
    else:
        raise UnsupportedEncoding(encoding)
    body = bytearray()
    async for chunk in response.aiter_raw():
        # A bounded step: a small compressed chunk must not expand past the cap in memory.
        data = chunk if inflate is None else inflate.decompress(chunk, limit + 1 - len(body))
        body += data
        if len(body) > limit:
            return bytes(body[:limit]), True
        if inflate is not None and inflate.eof:
            break  # what follows the compressed stream is not the body (httpx reads it the same way)
    return bytes(body), False


def page_text(body: bytes, *, html: bool, charset: str | None, url: str) -> PageText:
    """Title, description and text of a body (CPU-bound: run it in a thread)."""
    text = _decode(body, charset, html)
    title = description = None
    partial = False
    if html:
        markup, partial = _bounded_markup(text)
        title, description, text = _html_text(markup, url)
    return PageText(
        _clean(title, _MAX_TITLE), _clean(description, _MAX_DESCRIPTION), _clean(text) or "", partial
    )


def _decode(body: bytes, charset: str | None, html: bool) -> str:
    if body.startswith(codecs.BOM_UTF8):
        return body[len(codecs.BOM_UTF8) :].decode("utf-8", "replace")
    known = _known_charset(charset)
    if known is None and html:
        declared = _META_CHARSET.search(body[:4096])
        known = _known_charset(declared[1].decode("ascii") if declared else None)
    if known is None:
        try:
            # Not final: a body cut by the cap may end inside a character.
            return codecs.getincrementaldecoder("utf-8")().decode(body, final=False)
        except UnicodeDecodeError:
            guess = charset_normalizer.from_bytes(body).best()
            known = guess.encoding if guess is not None else "utf-8"
    try:
        return body.decode(known, "replace")
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


def _bounded_markup(html: str) -> tuple[str, bool]:
    """The markup the extractor reads, and whether some was left out: a page longer than
    MAX_MARKUP_CHARS loses its scripts and styles first (often most of it), then its end."""
    if len(html) <= MAX_MARKUP_CHARS:
        return html, False
    visible = _without_scripts_and_styles(html)
    return visible[:MAX_MARKUP_CHARS], len(visible) > MAX_MARKUP_CHARS


def _without_scripts_and_styles(html: str) -> str:
    """`html` without its <script> and <style> elements, in one pass over it."""
    kept: list[str] = []
    position = 0
    while (opening := _INVISIBLE_OPENING.search(html, position)) is not None:
        kept.append(html[position : opening.start()])
        closing = _INVISIBLE_CLOSING[opening[1].lower()].search(html, opening.end())
        if closing is None:  # unclosed: a browser hides the rest too
            return "".join(kept)
        position = closing.end()
    kept.append(html[position:])
    return "".join(kept)


def _html_text(html: str, url: str) -> tuple[str | None, str | None, str]:
    """trafilatura's main text and metadata; all visible text when it finds no main content."""
    if not html.strip():
        return None, None, ""
    document = _unless_it_fails(
        trafilatura.bare_extraction, html, url=url, with_metadata=True, include_comments=False, fast=True
    )
    if isinstance(document, Document) and document.text:
        return document.title, document.description, document.text
    metadata = _unless_it_fails(trafilatura.extract_metadata, html)
    text = _unless_it_fails(trafilatura.html2txt, html) or ""
    return (metadata.title, metadata.description, text) if metadata else (None, None, text)


def _unless_it_fails(extract: Callable[..., Any], html: str, **options: Any) -> Any:
    """`extract(html)`, or None: hostile markup trips assertions deep in lxml and htmldate, and
    must not fail the call."""
    try:
        return extract(html, **options)
    except Exception:
        log.warning("page extraction failed", step=extract.__name__, exc_info=True)
        return None


def _clean(text: str | None, limit: int | None = None) -> str | None:
    """Text without control characters (jsonb and terminals refuse them) or lone surrogates
    (UTF-8 cannot hold them), cut to `limit`."""
    if text is None:
        return None
    cleaned = _SURROGATES.sub("\ufffd", _CONTROL_CHARS.sub("", text.replace("\r\n", "\n")))
    return cleaned[:limit] if limit else cleaned
