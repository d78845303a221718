"""send_email against real SMTP servers (aiosmtpd on loopback): content, TLS and login,
exactly-once delivery through the outbox, and every way a send can fail."""

import asyncio
import base64
import email
import email.policy
import os
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import SecretStr

from core.config import Settings
from core.errors import ConfigurationError
from devstack import free_port
from store import outbox
from store.db import Pool
from tools.email import (
    SEND_EMAIL_SCHEMA,
    DeliveryUncertain,
    EmailInvalid,
    EmailPermanentError,
    EmailSender,
    EmailTransientError,
    SmtpConfig,
    validate_send_email,
)
from tools.email_message import (
    MAX_ATTACHMENT_BYTES,
    Attachment,
    EmailRequest,
    html_to_text,
    message_id_for,
    render_message,
)

SENDER = "Assistant <bot@example.com>"
USER, PASSWORD = "mailer", "s3cret-Pa55word-xyz"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    auth: str | None

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Handler:
    """Records messages; RCPT and DATA replies are scriptable per test."""

    received: list[Received] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    # "ok", "drop" (close without a reply), "hang" (never reply) or an SMTP reply such as "554 …".
    data_mode: str = "ok"
    auth_mechanisms: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        reply = self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(
            Received(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                server.transport.get_extra_info("cipher") is not None,
                session.auth_data.login.decode() if session.authenticated else None,
            )
        )
        if self.data_mode == "drop":
            server.transport.abort()
        elif self.data_mode == "hang":
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 10)
        elif self.data_mode != "ok":
            return self.data_mode
        return "250 2.0.0 queued"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        self.auth_mechanisms.append(mechanism)
        ok = isinstance(data, LoginPassword) and data == (USER.encode(), PASSWORD.encode())
        # handled=False: aiosmtpd itself answers a failure with 535.
        return AuthResult(success=ok, handled=False, auth_data=data if ok else None)


class Servers:
    """Starts aiosmtpd servers on 127.0.0.1 for one test and stops them after it."""

    def __init__(self) -> None:
        self._controllers: list[Controller] = []

    def start(
        self, handler: Handler | None = None, *, port: int | None = None, **smtp: Any
    ) -> tuple[int, Handler]:
        handler = handler or Handler()
        port = port or free_port()
        if "authenticator" in smtp and smtp["authenticator"] is True:
            smtp["authenticator"] = handler.authenticate
        controller = Controller(handler, hostname="127.0.0.1", port=port, server_hostname="mail.test", **smtp)
        controller.start()
        self._controllers.append(controller)
        return port, handler

    def stop(self) -> None:
        for controller in self._controllers:
            controller.stop()


@pytest.fixture
def servers() -> Iterator[Servers]:
    started = Servers()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA), made with the openssl CLI."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=mail.test"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


def config(port: int, **overrides: Any) -> SmtpConfig:
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_from": SENDER,
        "smtp_tls": "none",
        "smtp_user": None,
        "smtp_password": None,
        "smtp_ca_file": None,
        "smtp_timeout": timedelta(seconds=5),
    }
    values.update(overrides)
    smtp = SmtpConfig.from_settings(Settings(**values))
    assert smtp is not None
    return smtp


def body(msg: EmailMessage, kind: str) -> str:
    """The text/<kind> part's content, with the wire's CRLF line ends as \\n."""
    part = msg.get_body((kind,))
    assert isinstance(part, EmailMessage)
    content: str = part.get_content()
    return content.replace("\r\n", "\n")


def key() -> str:
    return f"test-{uuid.uuid4().hex}"


def args(**extra: Any) -> dict[str, Any]:
    return {"to": "ann@example.com", "subject": "Hello", "body": "<p>Hi</p>", **extra}


async def test_plain_smtp_message_content(servers: Servers, pool: Pool) -> None:
    port, handler = servers.start()
    sender = EmailSender(config(port), pool)
    attachment = os.urandom(5000) + b"\r\n.\r\n\x00"
    html = (
        "<h1>Report</h1><p>Hello&nbsp;<b>world</b> &amp; co.<br>second line</p>"
        "<ul><li>one</li><li>two</li></ul>"
    )
    k = key()
    result = await sender.send(
        idempotency_key=k,
        arguments={
            "to": ["Ann Example <ann@example.com>", "bob@example.com"],
            "cc": "carol@example.com",
            "bcc": ["dave@example.com"],
            "reply_to": "Replies <replies@example.com>",
            "subject": "Quarterly report — Q3",
            "body": html,
            "attachments": [
                {
                    "filename": "data.bin",
                    "content_type": "application/x-custom",
                    "content_base64": base64.b64encode(attachment).decode(),
                },
                {"filename": "notes.txt", "content_base64": base64.b64encode(b"plain notes").decode()},
            ],
        },
        turn_id="turn_1",
        tool_call_id="call_1",
    )
    everyone = ["ann@example.com", "bob@example.com", "carol@example.com", "dave@example.com"]
    assert result == {
        "message_id": message_id_for(k, domain="example.com"),
        "accepted": everyone,
        "rejected": [],
    }
    assert result["message_id"].startswith("<") and result["message_id"].endswith("@example.com>")

    [got] = handler.received
    assert got.mail_from == "bot@example.com"
    assert got.rcpt_tos == everyone
    assert b"dave@example.com" not in got.data  # Bcc is envelope only
    msg = got.message
    assert "Bcc" not in msg
    assert msg["From"] == SENDER
    assert msg["To"] == "Ann Example <ann@example.com>, bob@example.com"
    assert msg["Cc"] == "carol@example.com"
    assert msg["Reply-To"] == "Replies <replies@example.com>"
    assert msg["Subject"] == "Quarterly report — Q3"
    assert msg["Message-ID"] == result["message_id"]
    assert msg["Date"] is not None
    assert body(msg, "plain") == "Report\n\nHello world & co.\nsecond line\n\n- one\n- two\n"
    assert body(msg, "html").strip() == html
    files = {part.get_filename(): part for part in msg.iter_attachments()}
    assert files["data.bin"].get_content_type() == "application/x-custom"
    assert files["data.bin"].get_payload(decode=True) == attachment
    assert files["notes.txt"].get_content_type() == "application/octet-stream"
    assert files["notes.txt"].get_payload(decode=True) == b"plain notes"

    row = await outbox.get(pool, key=k)
    assert row is not None
    assert (row.status, row.attempts, row.result) == ("accepted", 1, result)
    assert (row.turn_id, row.tool_call_id, row.recipients) == ("turn_1", "call_1", everyone)
    assert row.data_sent_at is not None and row.finished_at is not None


async def test_plain_text_body_keeps_its_lines(servers: Servers, pool: Pool) -> None:
    port, handler = servers.start()
    await EmailSender(config(port), pool).send(
        idempotency_key=key(), arguments=args(body="Hi Ann,\n.\n..\nSee you.\n")
    )
    msg = handler.received[0].message
    assert body(msg, "plain") == "Hi Ann,\n.\n..\nSee you.\n"  # lines of dots survive SMTP's dot-stuffing
    assert "Hi Ann,<br>" in body(msg, "html")


async def test_same_key_sends_once_and_returns_the_same_result(servers: Servers, pool: Pool) -> None:
    port, handler = servers.start()
    sender = EmailSender(config(port), pool)
    k = key()
    first = await sender.send(idempotency_key=k, arguments=args())
    again = await sender.send(idempotency_key=k, arguments=args())
    assert again == first
    assert len(handler.received) == 1
    other = await sender.send(idempotency_key=key(), arguments=args())
    assert other["message_id"] != first["message_id"]
    assert len(handler.received) == 2
    # The Message-ID depends only on the key (and the sender's domain).
    assert first["message_id"] == message_id_for(k, domain="example.com")


async def test_concurrent_attempts_of_one_key_send_once(servers: Servers, pool: Pool) -> None:
    port, handler = servers.start()
    sender = EmailSender(config(port), pool)
    k = key()
    outcomes = await asyncio.gather(
        *(sender.send(idempotency_key=k, arguments=args()) for _ in range(4)), return_exceptions=True
    )
    results = [o for o in outcomes if isinstance(o, dict)]
    assert results and all(r == results[0] for r in results)
    assert all(isinstance(o, dict | EmailTransientError) for o in outcomes)
    assert len(handler.received) == 1


@pytest.mark.parametrize(
    ("tls", "mechanism"), [("starttls", "LOGIN"), ("starttls", "PLAIN"), ("ssl", "LOGIN"), ("ssl", "PLAIN")]
)
async def test_tls_and_login(
    servers: Servers, pool: Pool, certificate: tuple[Path, Path], tls: str, mechanism: str
) -> None:
    other = {"LOGIN": "PLAIN", "PLAIN": "LOGIN"}[mechanism]
    context = server_tls(certificate)
    tls_options: dict[str, Any] = (
        {"tls_context": context, "require_starttls": True}
        if tls == "starttls"
        else {"ssl_context": context, "auth_require_tls": False}  # aiosmtpd only knows STARTTLS as TLS
    )
    port, handler = servers.start(authenticator=True, auth_exclude_mechanism=[other], **tls_options)
    smtp = config(port, smtp_tls=tls, smtp_user=USER, smtp_password=PASSWORD, smtp_ca_file=certificate[0])
    result = await EmailSender(smtp, pool).send(idempotency_key=key(), arguments=args())
    assert result["accepted"] == ["ann@example.com"]
    [got] = handler.received
    assert got.tls and got.auth == USER
    assert handler.auth_mechanisms == [mechanism]


async def test_wrong_password_is_permanent_and_never_shown(
    servers: Servers, pool: Pool, certificate: tuple[Path, Path]
) -> None:
    port, handler = servers.start(tls_context=server_tls(certificate), authenticator=True)
    wrong = "Wr0ng-secret-passw0rd"
    smtp = config(port, smtp_tls="starttls", smtp_user=USER, smtp_password=wrong, smtp_ca_file=certificate[0])
    k = key()
    with pytest.raises(EmailPermanentError) as caught:
        await EmailSender(smtp, pool).send(idempotency_key=k, arguments=args())
    err = caught.value
    assert err.code == "email_rejected" and err.smtp_code == 535 and not err.retryable
    assert "authentication" in str(err)
    assert wrong not in f"{err} {err.context} {err!r} {err.__cause__!r} {smtp!r}"
    assert handler.received == []
    row = await outbox.get(pool, key=k)
    assert row is not None and row.status == "failed" and row.error and wrong not in row.error


async def test_untrusted_certificate_is_refused(
    servers: Servers, pool: Pool, certificate: tuple[Path, Path]
) -> None:
    port, handler = servers.start(tls_context=server_tls(certificate))
    with pytest.raises(EmailPermanentError, match="certificate"):
        await EmailSender(config(port, smtp_tls="starttls"), pool).send(
            idempotency_key=key(), arguments=args()
        )
    port, handler = servers.start(ssl_context=server_tls(certificate))
    with pytest.raises(EmailPermanentError, match="certificate"):
        await EmailSender(config(port, smtp_tls="ssl"), pool).send(idempotency_key=key(), arguments=args())
    assert handler.received == []


async def test_starttls_required_but_not_offered(servers: Servers, pool: Pool) -> None:
    port, handler = servers.start()
    with pytest.raises(EmailPermanentError, match="STARTTLS"):
        await EmailSender(config(port, smtp_tls="starttls"), pool).send(
            idempotency_key=key(), arguments=args()
        )
    assert handler.received == []


@pytest.mark.parametrize("mode", ["drop", "hang"])
async def test_lost_reply_to_data_is_uncertain_and_never_resent(
    servers: Servers, pool: Pool, mode: str
) -> None:
    port, handler = servers.start(Handler(data_mode=mode))
    sender = EmailSender(config(port, smtp_timeout=timedelta(seconds=0.5)), pool)
    k = key()
    try:
        with pytest.raises(DeliveryUncertain) as caught:
            await sender.send(idempotency_key=k, arguments=args())
        assert caught.value.code == "delivery_uncertain" and not caught.value.retryable
        assert caught.value.message_id == message_id_for(k, domain="example.com")
        handler.data_mode = "ok"
        with pytest.raises(DeliveryUncertain):
            await sender.send(idempotency_key=k, arguments=args())
    finally:
        handler.release.set()
    assert len(handler.received) == 1
    row = await outbox.get(pool, key=k)
    assert row is not None and row.status == "uncertain" and row.attempts == 1


async def test_crash_after_data_sent_is_uncertain(servers: Servers, pool: Pool) -> None:
    """A row left in `data_sent` (the worker died during DATA) is never sent again."""
    port, handler = servers.start()
    k = key()
    await outbox.claim(pool, key=k, message_id="<x@example.com>", recipients=["ann@example.com"])
    assert await outbox.mark_data_sent(pool, key=k)
    with pytest.raises(DeliveryUncertain):
        await EmailSender(config(port), pool).send(idempotency_key=k, arguments=args())
    assert handler.received == []
    row = await outbox.get(pool, key=k)
    assert row is not None and row.status == "uncertain"


async def test_server_down_is_transient_then_sends_once(servers: Servers, pool: Pool) -> None:
    port = free_port()
    sender = EmailSender(config(port), pool)
    k = key()
    with pytest.raises(EmailTransientError) as caught:
        await sender.send(idempotency_key=k, arguments=args())
    assert caught.value.code == "email_transient" and caught.value.retryable
    row = await outbox.get(pool, key=k)
    assert row is not None and (row.status, row.attempts) == ("pending", 1) and row.error

    _, handler = servers.start(port=port)
    result = await sender.send(idempotency_key=k, arguments=args())
    assert result["accepted"] == ["ann@example.com"]
    assert len(handler.received) == 1
    row = await outbox.get(pool, key=k)
    assert row is not None and (row.status, row.attempts) == ("accepted", 2)


async def test_recipients_refused(servers: Servers, pool: Pool) -> None:
    refuse = {"nobody@example.com": "550 5.1.1 no such user", "gone@example.com": "550 5.1.1 gone"}
    port, handler = servers.start(Handler(rcpt_replies=refuse))
    sender = EmailSender(config(port), pool)
    k = key()
    with pytest.raises(EmailPermanentError, match="every recipient") as caught:
        await sender.send(
            idempotency_key=k, arguments=args(to=["nobody@example.com"], bcc="gone@example.com")
        )
    assert caught.value.code == "email_rejected"
    assert handler.received == []
    row = await outbox.get(pool, key=k)
    assert row is not None and row.status == "failed" and row.data_sent_at is None

    result = await sender.send(
        idempotency_key=key(), arguments=args(to=["ann@example.com", "nobody@example.com"])
    )
    assert (result["accepted"], result["rejected"]) == (["ann@example.com"], ["nobody@example.com"])
    assert handler.received[0].rcpt_tos == ["ann@example.com"]


async def test_deferred_recipient_is_transient(servers: Servers, pool: Pool) -> None:
    port, handler = servers.start(Handler(rcpt_replies={"busy@example.com": "450 4.2.1 try later"}))
    sender = EmailSender(config(port), pool)
    k = key()
    with pytest.raises(EmailTransientError, match="450"):
        await sender.send(idempotency_key=k, arguments=args(to=["ann@example.com", "busy@example.com"]))
    assert handler.received == []
    handler.rcpt_replies.clear()
    await sender.send(idempotency_key=k, arguments=args(to=["ann@example.com", "busy@example.com"]))
    assert len(handler.received) == 1


async def test_data_refused(servers: Servers, pool: Pool) -> None:
    port, handler = servers.start(Handler(data_mode="451 4.3.0 try again later"))
    sender = EmailSender(config(port), pool)
    k = key()
    with pytest.raises(EmailTransientError, match="451"):
        await sender.send(idempotency_key=k, arguments=args())
    row = await outbox.get(pool, key=k)
    assert row is not None and row.status == "pending"  # the server answered: nothing was delivered

    handler.data_mode = "554 5.7.1 looks like spam"
    with pytest.raises(EmailPermanentError, match="554") as caught:
        await sender.send(idempotency_key=k, arguments=args())
    assert caught.value.smtp_code == 554
    row = await outbox.get(pool, key=k)
    assert row is not None and (row.status, row.attempts) == ("failed", 2)


async def test_message_too_large_is_refused_before_data(servers: Servers, pool: Pool) -> None:
    port, handler = servers.start(data_size_limit=5000)
    k = key()
    with pytest.raises(EmailPermanentError, match="at most 5000") as caught:
        await EmailSender(config(port), pool).send(
            idempotency_key=k, arguments=args(body="<p>" + "x" * 10_000)
        )
    assert caught.value.smtp_code == 552
    assert handler.received == []
    row = await outbox.get(pool, key=k)
    assert row is not None and row.status == "failed" and row.data_sent_at is None


INJECTIONS = [
    ("subject", args(subject="Hi\r\nBcc: evil@example.net")),
    ("subject", args(subject="Hi\nX-Injected: 1")),
    ("to", args(to="ann@example.com\r\nBcc: evil@example.net")),
    ("to", args(to="ann@example.com, evil@example.net")),
    ("to", args(to="ann@example.com>\r\nRCPT TO:<evil@example.net")),
    ("to[1]", args(to=["ann@example.com", "evil@example.net\nX: y"])),
    ("cc[0]", args(cc=["carol@example.com\r\nBcc: evil@example.net"])),
    ("cc", args(cc="carol@example.com; evil@example.net")),
    ("bcc[0]", args(bcc=["Evil <evil@example.net>, other@example.net"])),
    ("reply_to", args(reply_to="r@example.com\r\nBcc: evil@example.net")),
    (
        "attachments[0].filename",
        args(attachments=[{"filename": "a.txt\r\nX-Injected: 1", "content_base64": "aGk="}]),
    ),
]


@pytest.mark.parametrize(("field_name", "arguments"), INJECTIONS)
async def test_header_injection_is_refused(
    servers: Servers, pool: Pool, field_name: str, arguments: dict[str, Any]
) -> None:
    port, handler = servers.start()
    k = key()
    with pytest.raises(EmailInvalid) as caught:
        await EmailSender(config(port), pool).send(idempotency_key=k, arguments=arguments)
    assert caught.value.field == field_name and caught.value.code == "email_invalid"
    assert handler.received == []
    assert await outbox.get(pool, key=k) is None


def test_message_building_refuses_line_breaks_on_its_own() -> None:
    """Even arguments that skipped validation cannot add a header."""
    request = EmailRequest(
        to=(Address(addr_spec="ann@example.com"),),
        cc=(),
        bcc=(),
        reply_to=None,
        subject="Hi\r\nBcc: evil@example.net",
        body="<p>x</p>",
        attachments=(),
    )
    sender = Address("Assistant", "bot", "example.com")
    with pytest.raises(EmailInvalid):
        render_message(request, sender=sender, message_id="<a@example.com>")
    named = EmailRequest(
        to=request.to,
        cc=(),
        bcc=(),
        reply_to=None,
        subject="ok",
        body="<p>x</p>",
        attachments=(Attachment("a.txt\r\nX-Injected: 1", "text", "plain", b"x"),),
    )
    with pytest.raises(EmailInvalid, match="line"):
        render_message(named, sender=sender, message_id="<a@example.com>")


def big_attachment(size: int) -> dict[str, str]:
    return {"filename": "big.bin", "content_base64": base64.b64encode(b"\0" * size).decode()}


@pytest.mark.parametrize(
    ("field_name", "arguments"),
    [
        ("to", {"subject": "s", "body": "b"}),
        ("subject", {"to": "ann@example.com", "body": "b"}),
        ("to", args(to=[f"user{i}@example.com" for i in range(51)])),
        ("to", args(to=[])),
        ("to", args(to="not an address")),
        ("to", args(to=42)),
        ("cc[0]", args(cc=["nobody"])),
        ("subject", args(subject="x" * 999)),
        ("colour", args(colour="red")),
        ("attachments[0].content_base64", args(attachments=[{"filename": "a", "content_base64": "%%%"}])),
        ("attachments[0].content_base64", args(attachments=[{"filename": "a", "content_base64": "aGk"}])),
        ("attachments[0].content_base64", args(attachments=[{"filename": "a"}])),
        (
            "attachments[0].content_type",
            args(attachments=[{**big_attachment(1), "content_type": "nonsense"}]),
        ),
        ("attachments[0].filename", args(attachments=[{**big_attachment(1), "filename": "../etc/passwd"}])),
        ("attachments", args(attachments=[big_attachment(MAX_ATTACHMENT_BYTES + 1)])),
        ("attachments", args(attachments=[big_attachment(MAX_ATTACHMENT_BYTES // 2 + 1)] * 2)),
        ("arguments", ["ann@example.com"]),
    ],
)
def test_invalid_arguments_name_the_field(field_name: str, arguments: Any) -> None:
    with pytest.raises(EmailInvalid) as caught:
        validate_send_email(arguments)
    assert caught.value.field == field_name
    assert str(caught.value).startswith(f"{field_name}: ")
    assert len(str(caught.value)) < 200  # never echoes a large value


def test_valid_arguments_and_schema() -> None:
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(SEND_EMAIL_SCHEMA)
    validate_send_email(args(to=[f"user{i}@example.com" for i in range(50)]))
    validate_send_email(args(to='"Doe, Jane" <jane@example.com>', cc=[], bcc="x@example.com"))
    validate_send_email(args(attachments=[big_attachment(MAX_ATTACHMENT_BYTES)]))


def test_html_to_text() -> None:
    html = (
        "<html><head><style>p {color: red}</style><title>T</title></head><body>"
        "<p>Dear  Ann,</p><p>See <a href='https://example.com/r'>the report</a>.<br>Thanks</p>"
        "<table><tr><td>a</td><td>b</td></tr></table><script>alert(1)</script>"
        "<pre>  keep\n  this</pre>&lt;end&gt;</body></html>"
    )
    assert html_to_text(html) == (
        "Dear Ann,\n\nSee the report (https://example.com/r).\nThanks\n\na b\n\n  keep\n  this\n\n<end>\n"
    )


def test_config_from_settings(tmp_path: Path) -> None:
    base: dict[str, Any] = {"smtp_host": "smtp.example.com", "smtp_from": SENDER, "smtp_port": None}
    assert SmtpConfig.from_settings(Settings(**{**base, "smtp_host": None})) is None
    assert SmtpConfig.from_settings(Settings(**{**base, "smtp_from": None})) is None
    ports = {
        tls: SmtpConfig.from_settings(Settings(**base, smtp_tls=tls)) for tls in ("starttls", "ssl", "none")
    }
    assert {tls: c.port for tls, c in ports.items() if c} == {"starttls": 587, "ssl": 465, "none": 25}
    with pytest.raises(ConfigurationError, match="SMTP_FROM"):
        SmtpConfig.from_settings(Settings(**{**base, "smtp_from": "a@example.com, b@example.com"}))
    with pytest.raises(ConfigurationError, match="in clear"):
        SmtpConfig.from_settings(
            Settings(
                **base,
                smtp_tls="none",
                smtp_user=USER,
                smtp_password=SecretStr(PASSWORD),
                assistant_env="production",
            )
        )
    smtp = SmtpConfig.from_settings(Settings(**base, smtp_user=USER, smtp_password=SecretStr(PASSWORD)))
    assert smtp is not None and PASSWORD not in repr(smtp)
    missing = SmtpConfig.from_settings(Settings(**base, smtp_ca_file=tmp_path / "missing.pem"))
    assert missing is not None
    with pytest.raises(ConfigurationError, match="SMTP_CA_FILE"):
        missing.tls_context()
