"""send_email without I/O: its errors, argument schema and validation, and the MIME message.

The errors live here, not in `tools.email`, because this is the lower layer (validation
raises `EmailInvalid`); import them from `tools.email`.

Header injection is refused three times over: every string that reaches a header is checked
for control characters, addresses are parsed to exactly one mailbox and rebuilt as `Address`
objects, and the rendered header block is checked against the headers we meant to write.
"""

import base64
import binascii
import email.policy
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import parseaddr
from html import escape
from html.parser import HTMLParser
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from jsonschema.exceptions import best_match

from core.errors import RuntimeFailure, UsageError

MAX_RECIPIENTS_PER_FIELD = 50
# Decoded bytes of all attachments together (API.md: 25 MB).
MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024
# Bounds memory and the Temporal payload; far beyond any real message body.
MAX_BODY_CHARS = 2_000_000
MAX_SUBJECT_CHARS = 998


class EmailError(RuntimeFailure):
    """Base of send_email's errors; `code` is stable, `retryable` says whether a later attempt may succeed."""

    retryable = False


class EmailInvalid(EmailError, UsageError):
    """The arguments cannot make a safe, valid message; `field` names the culprit."""

    code = "email_invalid"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", field=field)
        self.field = field


class EmailTransientError(EmailError):
    """Nothing was delivered and a later attempt may succeed (network, timeout, 4xx before DATA)."""

    code = "email_transient"
    retryable = True


class EmailPermanentError(EmailError):
    """The server refused for good (5xx, authentication, every recipient, too large); nothing was sent."""

    code = "email_rejected"

    def __init__(self, message: str, *, smtp_code: int | None = None) -> None:
        super().__init__(message, smtp_code=smtp_code)
        self.smtp_code = smtp_code


class DeliveryUncertain(EmailError):
    """DATA went out but its reply never came: the mail may have been sent, so it is never re-sent."""

    code = "delivery_uncertain"

    def __init__(self, message: str, *, message_id: str) -> None:
        super().__init__(message, message_id=message_id)
        self.message_id = message_id


# Header fields: no control characters (CR/LF above all), so whoever validates against the
# schema alone (the API, for edited approvals) refuses a header injection too.
_NO_CONTROLS = "^[^\\x00-\\x1f\\x7f]*$"

_ADDRESS: dict[str, Any] = {
    "type": "string",
    "format": "email",
    "pattern": _NO_CONTROLS,
    "minLength": 3,
    "maxLength": 320,
    "description": "An email address, optionally with a display name: `Name <user@example.com>`.",
}


def _address_list(min_items: int) -> dict[str, Any]:
    return {"type": "array", "items": _ADDRESS, "minItems": min_items, "maxItems": MAX_RECIPIENTS_PER_FIELD}


# JSON Schema draft 2020-12 (no `$schema` key: it is also sent to the model as function parameters).
SEND_EMAIL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["to", "subject", "body"],
    "properties": {
        "to": {"anyOf": [_ADDRESS, _address_list(1)], "description": "Recipient address, or a list of 1-50."},
        "subject": {"type": "string", "maxLength": MAX_SUBJECT_CHARS, "pattern": _NO_CONTROLS},
        "body": {
            "type": "string",
            "maxLength": MAX_BODY_CHARS,
            "description": "The message as HTML; a plain-text alternative is derived from it.",
        },
        "cc": {"anyOf": [_ADDRESS, _address_list(0)]},
        "bcc": {"anyOf": [_ADDRESS, _address_list(0)], "description": "Hidden recipients (never a header)."},
        "reply_to": _ADDRESS,
        "attachments": {
            "type": "array",
            "description": "Files to attach, 25 MB in all (decoded).",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["filename", "content_base64"],
                "properties": {
                    "filename": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": _NO_CONTROLS},
                    "content_type": {
                        "type": "string",
                        "maxLength": 255,
                        "pattern": _NO_CONTROLS,
                        "default": "application/octet-stream",
                    },
                    "content_base64": {"type": "string", "contentEncoding": "base64"},
                },
            },
        },
    },
}
SEND_EMAIL_DESCRIPTION = (
    "Send an email (HTML body, optional cc, bcc, reply-to and attachments). "
    "A person must approve each message before it is sent."
)

_VALIDATOR = Draft202012Validator(SEND_EMAIL_SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# ASCII dot-atom mailboxes only: what every server takes without SMTPUTF8, and nothing that
# could end an SMTP command line early (no quotes, spaces or brackets).
_ADDR_SPEC = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*")
_MIME_TYPE = re.compile(r"([a-z0-9][a-z0-9!#$&^_.+-]*)/([a-z0-9][a-z0-9!#$&^_.+-]*)")
_TYPE_WORDS = {"string": "a string", "array": "a list", "object": "an object"}
# The headers a rendered message may have: anything else means something slipped through.
_EXPECTED_HEADERS = {
    "from",
    "to",
    "cc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
}
# Bodies are encoded quoted-printable/base64 when not ASCII, so the message never needs 8BITMIME.
_BUILD_POLICY = email.policy.SMTP.clone(cte_type="7bit")


@dataclass(frozen=True)
class Attachment:
    filename: str
    maintype: str
    subtype: str
    data: bytes


@dataclass(frozen=True)
class EmailRequest:
    """Validated send_email arguments: single addresses, checked header text, decoded files."""

    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    reply_to: Address | None
    subject: str
    body: str
    attachments: tuple[Attachment, ...]

    def envelope_recipients(self) -> list[str]:
        """To, Cc and Bcc mailboxes for RCPT TO, each once (case-insensitively), in order."""
        seen: dict[str, str] = {}
        for address in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(address.addr_spec.lower(), address.addr_spec)
        return list(seen.values())


def validate_send_email(arguments: Any) -> None:
    """Raise `EmailInvalid` naming the field unless the arguments make a valid message."""
    parse_send_email(arguments)


def parse_send_email(arguments: Any) -> EmailRequest:
    """The arguments checked against the schema and in code, or `EmailInvalid`."""
    error = best_match(_VALIDATOR.iter_errors(arguments))
    if error is not None:
        raise _schema_error(error)
    return EmailRequest(
        to=_addresses(arguments["to"], "to"),
        cc=_addresses(arguments.get("cc", []), "cc"),
        bcc=_addresses(arguments.get("bcc", []), "bcc"),
        reply_to=parse_address(arguments["reply_to"], "reply_to") if "reply_to" in arguments else None,
        subject=_header_text(arguments["subject"], "subject"),
        body=_body(arguments["body"]),
        attachments=_attachments(arguments.get("attachments", [])),
    )


def parse_address(value: Any, field: str) -> Address:
    """Exactly one mailbox (`user@host` or `Name <user@host>`), or `EmailInvalid`."""
    if not isinstance(value, str):
        raise EmailInvalid(field, "must be an email address")
    text = _header_text(value, field).strip()
    header = email.policy.default.header_factory("to", text)
    groups = header.groups
    if (
        header.defects
        or len(groups) != 1
        or groups[0].display_name is not None
        or len(groups[0].addresses) != 1
    ):
        raise EmailInvalid(field, "must be exactly one email address")
    parsed: Address = groups[0].addresses[0]
    addr_spec = parsed.addr_spec
    # parseaddr must agree: a string the two parsers read differently is refused as ambiguous.
    if not _ADDR_SPEC.fullmatch(addr_spec) or parseaddr(text)[1] != addr_spec or len(addr_spec) > 254:
        raise EmailInvalid(field, "must be exactly one email address (ASCII user@domain)")
    try:
        return Address(display_name=parsed.display_name, addr_spec=addr_spec)
    except (ValueError, IndexError) as err:
        raise EmailInvalid(field, "must be exactly one email address") from err


def message_id_for(idempotency_key: str, *, domain: str) -> str:
    """The `Message-ID` of the call with this key, angle brackets included: the same on every retry."""
    return f"<{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}@{domain}>"


def render_message(
    request: EmailRequest, *, sender: Address, message_id: str, date: datetime | None = None
) -> bytes:
    """The message as sent in DATA (CRLF, 7-bit); `EmailInvalid` rather than a dubious message."""
    try:
        data = _build(request, sender=sender, message_id=message_id, date=date).as_bytes(
            policy=email.policy.SMTP
        )
    except (ValueError, TypeError, UnicodeError) as err:
        raise EmailInvalid("message", f"cannot be built safely: {err}") from err
    headers = BytesHeaderParser(policy=email.policy.default).parsebytes(data)
    unexpected = {name.lower() for name in headers} - _EXPECTED_HEADERS
    if unexpected:
        raise EmailInvalid("message", f"unexpected headers {sorted(unexpected)}")
    return data


def _build(request: EmailRequest, *, sender: Address, message_id: str, date: datetime | None) -> EmailMessage:
    msg = EmailMessage(policy=_BUILD_POLICY)
    msg["From"] = sender
    msg["To"] = request.to
    if request.cc:
        msg["Cc"] = request.cc
    if request.reply_to is not None:
        msg["Reply-To"] = request.reply_to
    msg["Subject"] = request.subject
    msg["Date"] = date or datetime.now(UTC)
    msg["Message-ID"] = message_id
    text, html = body_parts(request.body)
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    for item in request.attachments:
        msg.add_attachment(item.data, maintype=item.maintype, subtype=item.subtype, filename=item.filename)
    return msg


def _schema_error(error: ValidationError) -> EmailInvalid:
    """A short message naming the field (never the value: it may be megabytes of base64)."""
    field = _field_name(error.absolute_path)
    instance, schema = error.instance, error.schema
    value: Any = error.validator_value
    assert isinstance(schema, dict)
    if error.validator == "required" and isinstance(instance, dict):
        missing = [name for name in schema["required"] if name not in instance]
        return EmailInvalid(_join(field, missing[0]), "is required")
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = schema.get("properties", {})
        extra = [name for name in instance if name not in known]
        return EmailInvalid(_join(field, str(extra[0])), "is not a known field")
    if error.validator == "type":
        types = [value] if isinstance(value, str) else list(value)
        return EmailInvalid(field, f"must be {' or '.join(_TYPE_WORDS.get(t, t) for t in types)}")
    problems = {
        "maxItems": f"must have at most {value} items",
        "minItems": f"must have at least {value} item(s)",
        "maxLength": f"must be at most {value} characters",
        "minLength": f"must be at least {value} characters",
        "format": "must be an email address",
        "anyOf": "must be an email address or a list of them",
    }
    return EmailInvalid(field, problems.get(str(error.validator), f"is invalid ({error.validator})"))


def _field_name(path: Any) -> str:
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "arguments"


def _join(prefix: str, name: str) -> str:
    return name if prefix == "arguments" else f"{prefix}.{name}"


def _addresses(value: Any, field: str) -> tuple[Address, ...]:
    if isinstance(value, str):
        return (parse_address(value, field),)
    return tuple(parse_address(item, f"{field}[{i}]") for i, item in enumerate(value))


def _header_text(value: str, field: str) -> str:
    """`value` unless it has a character that could end a header line (CR, LF, any control)."""
    for char in value:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            raise EmailInvalid(field, f"must not contain control characters or line breaks ({char!r})")
    return value


def _body(value: str) -> str:
    if "\x00" in value:
        raise EmailInvalid("body", "must not contain NUL characters")
    return value


def _attachments(items: list[dict[str, Any]]) -> tuple[Attachment, ...]:
    # Checked on the encoded sizes first, so 100 MB of base64 is refused before it is decoded.
    compact = ["".join(item["content_base64"].split()) for item in items]
    if sum(len(text) // 4 * 3 for text in compact) > MAX_ATTACHMENT_BYTES + 3 * len(items):
        raise EmailInvalid("attachments", f"must total at most {MAX_ATTACHMENT_BYTES} bytes")
    result, total = [], 0
    for i, (item, text) in enumerate(zip(items, compact, strict=True)):
        field = f"attachments[{i}]"
        filename = _header_text(item["filename"], f"{field}.filename").strip()
        if not filename or "/" in filename or "\\" in filename:
            raise EmailInvalid(f"{field}.filename", "must be a file name without directories")
        maintype, subtype = _mime_type(item.get("content_type"), f"{field}.content_type")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as err:
            raise EmailInvalid(f"{field}.content_base64", "is not valid base64") from err
        total += len(data)
        result.append(Attachment(filename, maintype, subtype, data))
    if total > MAX_ATTACHMENT_BYTES:
        raise EmailInvalid("attachments", f"must total at most {MAX_ATTACHMENT_BYTES} bytes")
    return tuple(result)


def _mime_type(value: str | None, field: str) -> tuple[str, str]:
    # Parameters (`; charset=…`) are dropped: the part is sent as base64 bytes either way.
    match = _MIME_TYPE.fullmatch((value or "application/octet-stream").split(";")[0].strip().lower())
    if match is None:
        raise EmailInvalid(field, "must be a MIME type such as application/pdf")
    if match[1] in ("multipart", "message"):
        raise EmailInvalid(
            field, "multipart/* and message/* cannot be attached; use application/octet-stream"
        )
    return match[1], match[2]


# HTML → plain text, for the text/plain alternative. Browsers' rules, roughly: whitespace
# collapses, block elements and <br> break lines, <pre> is kept, scripts and styles vanish.
_PARAGRAPHS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table", "ul", "ol", "dl", "hr"}
_LINES = {"div", "section", "article", "header", "footer", "main", "aside", "nav", "tr", "li", "dt", "dd"}
_LINES |= {"address", "figure", "figcaption", "form", "fieldset", "details", "summary"}
_HIDDEN = {"script", "style", "head", "template", "noscript"}
_HTML_HINT = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^>]*)?/?>|&(?:[a-zA-Z]+|#[0-9]+|#x[0-9a-fA-F]+);")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0
        self._pre = 0
        self._links: list[tuple[str | None, int]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self._hidden += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag == "img":
            self._text(dict(attrs).get("alt") or "")
        elif tag == "a":
            self._links.append((dict(attrs).get("href"), len(self.parts)))
        elif tag in ("td", "th"):
            self._text(" ")
        self._block(tag, start=True)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            label = "".join(self.parts[start:]).strip()
            # Keep a link's target when its text does not already show it.
            if (
                href
                and href.startswith(("http:", "https:", "mailto:"))
                and href.removeprefix("mailto:") != label
            ):
                self.parts.append(f" ({href})")
        self._block(tag, start=False)

    def handle_data(self, data: str) -> None:
        self._text(data)

    def _text(self, data: str) -> None:
        if self._hidden:
            return
        if not self._pre:
            data = re.sub(r"\s+", " ", data)
            if not self.parts or self.parts[-1].endswith("\n"):
                data = data.lstrip()
        self.parts.append(data)

    def _block(self, tag: str, *, start: bool) -> None:
        if tag == "pre":
            self._pre = self._pre + 1 if start else max(0, self._pre - 1)
        if tag in _PARAGRAPHS:
            self._break(2)
        elif tag in _LINES:
            self._break(1)
        if tag == "li" and start:
            self.parts.append("- ")

    def _break(self, lines: int) -> None:
        """End the output with at least `lines` line breaks (nested blocks do not add up)."""
        tail = "".join(self.parts[-4:])
        have = len(tail) - len(tail.rstrip("\n"))
        if self.parts and have < lines:
            self.parts.append("\n" * (lines - have))


def html_to_text(html: str) -> str:
    """A readable plain-text rendering of an HTML body."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = [line.rstrip() for line in "".join(parser.parts).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def body_parts(body: str) -> tuple[str, str]:
    """The plain-text and HTML parts a body is sent as: one of them is derived from the other."""
    if looks_like_html(body):
        return html_to_text(body), body
    return body, text_to_html(body)


def looks_like_html(body: str) -> bool:
    """Whether the body has any tag or entity (a model sometimes sends plain text)."""
    return _HTML_HINT.search(body) is not None


def text_to_html(text: str) -> str:
    """A plain-text body as HTML that shows the same lines."""
    return "<html><body>" + escape(text).replace("\n", "<br>\n") + "</body></html>\n"
