"""Fetched messages as search results: decoded headers, addresses, a plain-text snippet.

Only a message's header fields, its BODYSTRUCTURE and the first bytes of one text part are
fetched, never the whole message: a 25 MB attachment costs nothing. BODYSTRUCTURE names the
part to read (the first text/plain that is not an attachment, else the first such
text/html), its transfer encoding and charset, and whether the message has attachments.

Everything here comes from strangers' mail: decoding never raises, control and invisible
formatting characters are dropped, and every string is bounded. Each header field is
fetched on its own, at most FIELD_WINDOW bytes (a huge To cannot push the Subject out), and
cut to FIELD_CHARS before the email package parses it, which takes seconds over a field of
thousands of addresses or encoded words.

The IMAP response data itself (FETCH and LIST answers as aioimaplib hands them over: lines,
with literal data apart) is read into token trees at the end of this module.
"""

import binascii
import codecs
import email.policy
import quopri
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

import lxml.html
from lxml.etree import ParserError

SNIPPET_CHARS = 200
SUBJECT_CHARS = 300
ADDRESS_CHARS = 120
ADDRESSES_PER_FIELD = 10
# How much of the chosen part to fetch: plain text needs little; HTML often opens with
# kilobytes of CSS before the first visible word.
PLAIN_WINDOW = 4096
HTML_WINDOW = 32768
HEADER_FIELDS = ("FROM", "TO", "CC", "SUBJECT", "DATE")
# Enough for ADDRESSES_PER_FIELD addresses or a subject of SUBJECT_CHARS, however encoded.
FIELD_CHARS = 4096
FIELD_WINDOW = 4 * FIELD_CHARS  # bytes: UTF-8 takes up to 4 a character

# Elements that start a new line when shown; their text must not run into the next one's.
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "br", "dd", "div", "dl", "dt", "figcaption",
        "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav",
        "ol", "p", "pre", "section", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
    }
)  # fmt: skip
_INVISIBLE_TAGS = ("head", "script", "style", "noscript", "template", "title", "svg")
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*>", re.IGNORECASE)
# Characters libxml2 refuses in a document (every C0 control but tab and line breaks).
_XML_INCOMPATIBLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
# An address as it appears in any header, for when no parser makes sense of the field.
_ADDR_SPEC = re.compile(r"[^\s<>()\[\],;:\"]+@[^\s<>()\[\],;:\"]+")


@dataclass(frozen=True)
class TextPart:
    """The body part a snippet is made from."""

    section: str  # IMAP part number: "1", "1.2", ...
    html: bool
    encoding: str
    charset: str

    @property
    def window(self) -> int:
        return HTML_WINDOW if self.html else PLAIN_WINDOW


@dataclass(frozen=True)
class Structure:
    body: TextPart | None
    has_attachments: bool


def read_structure(bodystructure: Any) -> Structure:
    """The snippet's part and whether there are attachments, from a parsed BODYSTRUCTURE."""
    try:
        return _read_structure(bodystructure)
    except (AttributeError, IndexError, TypeError, ValueError, RecursionError):  # one we cannot read
        return Structure(None, False)


def _read_structure(bodystructure: Any) -> Structure:
    leaves: list[tuple[str, list[Any], bool]] = []
    _collect_leaves(bodystructure, "", False, leaves)
    plain: TextPart | None = None
    html: TextPart | None = None
    attachments = False
    for section, leaf, inside_related in leaves:
        if _is_attachment(leaf, inside_related):
            attachments = True
            continue
        kind = (as_text(leaf[0]).lower(), as_text(leaf[1]).lower())
        part = TextPart(
            section, kind[1] == "html", as_text(leaf[5]).lower(), _params(leaf[2]).get("charset", "")
        )
        if kind == ("text", "plain") and plain is None:
            plain = part
        elif kind == ("text", "html") and html is None:
            html = part
    return Structure(plain or html, attachments)


def _collect_leaves(
    node: Any, prefix: str, inside_related: bool, out: list[tuple[str, list[Any], bool]]
) -> None:
    if not isinstance(node, list) or not node:
        return
    if isinstance(node[0], list):  # multipart: children first, then the subtype
        children = []
        for item in node:
            if not isinstance(item, list):
                break
            children.append(item)
        subtype = as_text(node[len(children)]).lower() if len(children) < len(node) else ""
        for number, child in enumerate(children, 1):
            section = f"{prefix}.{number}" if prefix else str(number)
            _collect_leaves(child, section, inside_related or subtype == "related", out)
    else:
        out.append((prefix or "1", node, inside_related))


def _is_attachment(leaf: list[Any], inside_related: bool) -> bool:
    """Attached files and forwarded messages; not the images an HTML body shows inline."""
    kind = (as_text(leaf[0]).lower(), as_text(leaf[1]).lower())
    disposition = _disposition(leaf, kind)
    if disposition[0] == "attachment" or kind == ("message", "rfc822"):
        return True
    if inside_related:
        return False
    named = any(key.startswith(("filename", "name")) for key in {**_params(leaf[2]), **disposition[1]})
    return named or kind[0] != "text"


def _disposition(leaf: list[Any], kind: tuple[str, str]) -> tuple[str, dict[str, str]]:
    # The extension data (MD5, then the disposition) starts after the basic fields: at 8 for
    # text (after its line count), 10 for message/rfc822 (envelope, body, lines), else 7.
    md5 = 8 if kind[0] == "text" else 10 if kind == ("message", "rfc822") else 7
    value = leaf[md5 + 1] if len(leaf) > md5 + 1 else None
    if isinstance(value, list) and value:
        return as_text(value[0]).lower(), _params(value[1] if len(value) > 1 else None)
    return "", {}


def _params(value: Any) -> dict[str, str]:
    if not isinstance(value, list):
        return {}
    return {as_text(value[i]).lower(): as_text(value[i + 1]) for i in range(0, len(value) - 1, 2)}


def as_text(value: Any) -> str:
    """A parsed IMAP string (bytes), atom (str) or NIL (None) as text."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


def decode_part(data: bytes, part: TextPart) -> str:
    """A (possibly cut-off) fetched part as text: transfer encoding, then charset, leniently."""
    complete = len(data) < part.window
    if part.encoding == "base64":
        compact = re.sub(rb"[^A-Za-z0-9+/=]", b"", data)
        try:
            raw = binascii.a2b_base64(compact[: len(compact) // 4 * 4])
        except binascii.Error:
            raw = b""
    elif part.encoding == "quoted-printable":
        raw = quopri.decodestring(data)
    else:
        raw = data
    # Not final when cut off: a character split at the end is left out rather than mangled.
    return _decode_text(raw, part.charset, final=complete)


def _decode_text(raw: bytes, charset: str, *, final: bool) -> str:
    """`raw` in `charset` when that names a text encoding which can decode it, else as UTF-8."""
    try:
        # LookupError for unknown names, and for codecs that are no text encodings (bz2, zlib,
        # rot13), which would decompress or transform instead of decoding.
        b"".decode(charset or "utf-8")
        decoder = codecs.getincrementaldecoder(charset or "utf-8")(errors="replace")
        return str(decoder.decode(raw, final=final))
    except Exception:  # codecs raise as they like: idna refuses "replace", "undefined" always fails
        return str(codecs.getincrementaldecoder("utf-8")(errors="replace").decode(raw, final=final))


def snippet(text: str, *, html: bool) -> str:
    """At most SNIPPET_CHARS of visible text, whitespace collapsed."""
    if html:
        text = html_to_text(text)
    return clean(text, SNIPPET_CHARS)


def html_to_text(markup: str) -> str:
    """The text a reader would see: no tags, scripts, styles or head; blocks separated."""
    # huge_tree lifts libxml2's nesting limit (256), under which a deeper page reads as empty;
    # the input is a fetched window of at most HTML_WINDOW bytes, so nothing grows unbounded.
    parser = lxml.html.HTMLParser(huge_tree=True)
    markup = _XML_INCOMPATIBLE.sub(" ", _XML_DECLARATION.sub("", markup, count=1))
    try:
        root = lxml.html.document_fromstring(markup, parser=parser)
    except (ParserError, ValueError):
        return ""
    for element in list(root.iter(*_INVISIBLE_TAGS)):
        element.drop_tree()
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag.lower() in _BLOCK_TAGS:
            element.text = " " + (element.text or "")
            element.tail = " " + (element.tail or "")
    return str(root.text_content())


def clean(text: str, limit: int) -> str:
    """Printable text on one line, at most `limit` characters (cut at a word, with "…")."""
    text = " ".join(text.split())[: limit * 4]
    text = "".join(_visible(char) for char in text)
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit * 0.6:
        cut = cut[:space]
    return cut.rstrip() + "…"


def _visible(char: str) -> str:
    category = unicodedata.category(char)
    if category == "Cc":
        return " "
    if category in ("Cf", "Cs", "Co", "Cn"):
        return ""  # zero-width and direction marks, surrogates, private use, unassigned
    return char


@dataclass(frozen=True)
class Headers:
    sender: str
    to: list[str]
    cc: list[str]
    subject: str
    date: datetime | None


def header_fetch_items() -> str:
    """The FETCH items that read HEADER_FIELDS: a partial BODY.PEEK of each field alone."""
    return " ".join(f"BODY.PEEK[HEADER.FIELDS ({name})]<0.{FIELD_WINDOW}>" for name in HEADER_FIELDS)


def header_block(fields: Sequence[bytes]) -> bytes:
    """The fields fetched one by one, as one header block for parse_headers."""
    lines = (field.rstrip(b"\r\n") for field in fields)  # each ends with the blank line ending a header
    return b"".join(line + b"\r\n" for line in lines if line)


def parse_headers(raw: bytes) -> Headers:
    """The fetched FROM/TO/CC/SUBJECT/DATE fields, RFC 2047 words decoded."""
    # Raw 8-bit header text is taken as UTF-8 (RFC 6532); anything else cannot be known.
    # compat32 only splits the fields; each is parsed below, once cut to FIELD_CHARS.
    message = HeaderParser(policy=email.policy.compat32).parsestr(raw.decode("utf-8", "replace"))
    senders = _addresses(message, "from")
    return Headers(
        sender=senders[0] if senders else "",
        to=_addresses(message, "to"),
        cc=_addresses(message, "cc"),
        subject=clean(_subject(message), SUBJECT_CHARS),
        date=_date(message),
    )


def _raw(message: Message, name: str, *, cut_at: str = " ") -> list[str]:
    """A header's values as sent, unfolded and cut to FIELD_CHARS (at the last `cut_at`)."""
    values = []
    for key, value in message.raw_items():
        if key.lower() == name:
            text = re.sub(r"\r?\n(?=[ \t])", "", str(value))
            if len(text) > FIELD_CHARS:
                text = text[:FIELD_CHARS]
                text = text[: text.rfind(cut_at)] if cut_at in text else text
            values.append(text)
    return values


def _parsed(name: str, value: str) -> Any:
    """The email package's structured header for one value (may raise on odd input)."""
    return email.policy.default.header_factory(name, value)


def _decode_words(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # an unknown charset or broken encoded word: keep the text as it came
        return value


def _subject(message: Message) -> str:
    parts = []
    for value in _raw(message, "subject"):
        try:
            parts.append(str(_parsed("subject", value)))
        except Exception:
            parts.append(_decode_words(value))
    return " ".join(parts)


def _addresses(message: Message, name: str) -> list[str]:
    """`Name <addr>` (or just `addr`) strings, at most ADDRESSES_PER_FIELD."""
    pairs: list[tuple[str, str]] = []
    for value in _raw(message, name, cut_at=","):
        pairs.extend(_address_pairs(name, value))
    found = [_format_address(display, spec) for display, spec in pairs]
    return [address for address in found if address][:ADDRESSES_PER_FIELD]


def _address_pairs(name: str, value: str) -> list[tuple[str, str]]:
    """(display name, addr-spec) pairs of one field by the strictest parser that copes with it;
    both of the email package's recurse into nested comments and can exhaust the stack."""
    try:
        return [(a.display_name, a.addr_spec) for a in _parsed(name, value).addresses]
    except Exception:
        pass
    try:
        return [(_decode_words(display), spec) for display, spec in getaddresses([value])]
    except Exception:
        return [("", spec) for spec in _ADDR_SPEC.findall(value)]


def _format_address(display: str, spec: str) -> str:
    display, spec = clean(display, ADDRESS_CHARS), clean(spec, ADDRESS_CHARS)
    if not spec:
        return display
    if not display:
        return spec
    try:
        return str(Address(display_name=display, addr_spec=spec))
    except Exception:  # an addr-spec the email package will not take: keep it as it is
        return f"{display} <{spec}>"


def _date(message: Message) -> datetime | None:
    values = _raw(message, "date")
    if not values:
        return None
    try:
        parsed = parsedate_to_datetime(values[0])
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    # "-0000" means "zone unknown": UTC is the usual reading.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# ---- IMAP response data -----------------------------------------------------------------------


def parse_internaldate(value: Any) -> datetime | None:
    """`"14-Nov-2023 22:13:20 +0000"` as an aware datetime, or None."""
    text = as_text(value).strip()
    try:
        return datetime.strptime(text, "%d-%b-%Y %H:%M:%S %z")
    except ValueError:
        return None


def fetch_attributes(record: list[Any]) -> dict[str, Any]:
    """`["1", "FETCH", [name, value, ...]]` as {NAME: value}."""
    if len(record) < 3 or not isinstance(record[1], str) or record[1].upper() != "FETCH":
        return {}
    items = record[2] if isinstance(record[2], list) else []
    return {str(items[i]).upper(): items[i + 1] for i in range(0, len(items) - 1, 2)}


def parse_records(lines: Sequence[bytes | bytearray]) -> list[list[Any]]:
    """Untagged response data as aioimaplib returns it (lines and, as bytearrays, the literal
    data after a line ending in `{n}`) as one token tree per response.

    Tokens: `str` for atoms (NIL → None; `BODY[HEADER.FIELDS (A B)]<0>` is one atom), `bytes`
    for quoted strings and literals, lists for parenthesised lists.
    """
    records: list[list[Any]] = []
    text = bytearray()
    literals: list[bytes] = []
    after_literal = False
    for item in lines:
        if isinstance(item, bytearray):
            literals.append(bytes(item))
            text += b"\x00%d\x00" % (len(literals) - 1)
            after_literal = True
            continue
        line = bytes(item)
        if not after_literal:
            if text or literals:
                records.append(_tokens(bytes(text), literals))
            text, literals = bytearray(), []
            if line.startswith(b"* "):
                line = line[2:]
        after_literal = False
        # NUL marks literals in `text`; a server's own NUL (RFC 3501 forbids them) is dropped.
        text += re.sub(rb"\{\d+\}$", b"", line.replace(b"\x00", b""))
    if text or literals:
        records.append(_tokens(bytes(text), literals))
    return records


_ATOM_END = frozenset(b' ()"\x00')


def _tokens(data: bytes, literals: list[bytes]) -> list[Any]:
    stack: list[list[Any]] = [[]]
    pos, size = 0, len(data)
    while pos < size:
        char = data[pos]
        if char in b" \t\r\n":
            pos += 1
        elif char == ord("("):
            stack.append([])
            pos += 1
        elif char == ord(")"):
            if len(stack) > 1:
                done = stack.pop()
                stack[-1].append(done)
            pos += 1
        elif char == ord('"'):
            value, pos = _quoted(data, pos + 1)
            stack[-1].append(value)
        elif char == 0:
            end = data.find(b"\x00", pos + 1)
            end = size if end < 0 else end
            stack[-1].append(literals[int(data[pos + 1 : end] or b"0")])
            pos = end + 1
        else:
            start = pos
            while pos < size and data[pos] not in _ATOM_END:
                if data[pos] == ord("["):
                    close = data.find(b"]", pos)
                    pos = size if close < 0 else close
                pos += 1
            atom = data[start:pos].decode("ascii", "replace")
            stack[-1].append(None if atom.upper() == "NIL" else atom)
    while len(stack) > 1:  # unbalanced: keep what was read
        done = stack.pop()
        stack[-1].append(done)
    return stack[0]


def _quoted(data: bytes, pos: int) -> tuple[bytes, int]:
    value = bytearray()
    while pos < len(data):
        char = data[pos]
        if char == ord("\\") and pos + 1 < len(data):
            value.append(data[pos + 1])
            pos += 2
        elif char == ord('"'):
            return bytes(value), pos + 1
        else:
            value.append(char)
            pos += 1
    return bytes(value), pos
