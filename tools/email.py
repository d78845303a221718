"""send_email over SMTP, exactly once: the configuration, and delivery through the outbox.

Why the SMTP dialogue is spelled out (`mail`, `rcpt`, `data`) instead of `send_message`:
the outbox row must say `data_sent` before the DATA command goes out. From then on a lost
connection or a missing reply means the server may have taken the message, so no attempt
sends it again (`DeliveryUncertain`); before it, every failure is safe to retry. A reply to
DATA other than 250 is an explicit refusal, so nothing was delivered then either.
"""

import contextlib
import ssl
from dataclasses import dataclass, field
from email.headerregistry import Address
from pathlib import Path
from typing import Any, Literal

import aiosmtplib
import structlog
from pydantic import SecretStr

from core.config import Settings
from core.errors import ConfigurationError
from store import outbox
from store.db import Connection, Pool
from tools.email_message import (
    SEND_EMAIL_DESCRIPTION,
    SEND_EMAIL_SCHEMA,
    DeliveryUncertain,
    EmailError,
    EmailInvalid,
    EmailPermanentError,
    EmailTransientError,
    message_id_for,
    parse_address,
    parse_send_email,
    render_message,
    validate_send_email,
)
from tools.netguard import is_loopback_host
from tools.tls import verifying_context

__all__ = [
    "SEND_EMAIL_DESCRIPTION",
    "SEND_EMAIL_SCHEMA",
    "DeliveryUncertain",
    "EmailError",
    "EmailInvalid",
    "EmailPermanentError",
    "EmailSender",
    "EmailTransientError",
    "SmtpConfig",
    "validate_send_email",
]

log = structlog.get_logger(__name__)

TlsMode = Literal["starttls", "ssl", "none"]
_DEFAULT_PORTS: dict[str, int] = {"starttls": 587, "ssl": 465, "none": 25}
# The wait for DATA's reply grows with the message (up to ~35 MB with base64 attachments),
# assuming an uplink of at least this many bytes per second.
_MIN_UPLOAD_RATE = 256 * 1024
_MAX_REPLY_CHARS = 300
_UNCERTAIN = (
    "the message may or may not have been delivered: the connection ended after it was sent,"
    " before the server confirmed it; it will not be sent again"
)


@dataclass(frozen=True)
class SmtpConfig:
    """Where and how to send mail (SMTP_* settings)."""

    host: str
    port: int
    sender: Address
    tls: TlsMode = "starttls"
    user: str | None = None
    password: SecretStr | None = field(default=None, repr=False)
    ca_file: Path | None = None
    timeout: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> "SmtpConfig | None":
        """The configuration, None while SMTP_HOST or SMTP_FROM is unset; `ConfigurationError` if unsafe."""
        if not settings.smtp_host or not settings.smtp_from:
            return None
        try:
            sender = parse_address(settings.smtp_from, "SMTP_FROM")
        except EmailInvalid as err:
            raise ConfigurationError(err.message) from None
        if bool(settings.smtp_user) != bool(settings.smtp_password):
            raise ConfigurationError("SMTP_USER and SMTP_PASSWORD must be set together")
        cleartext = settings.smtp_tls == "none" and not is_loopback_host(settings.smtp_host)
        if settings.smtp_user and cleartext and not settings.is_development:
            raise ConfigurationError(
                "SMTP_TLS=none with SMTP_USER would send the password in clear; use starttls or ssl"
            )
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port or _DEFAULT_PORTS[settings.smtp_tls],
            sender=sender,
            tls=settings.smtp_tls,
            user=settings.smtp_user,
            password=settings.smtp_password,
            ca_file=settings.smtp_ca_file,
            timeout=settings.smtp_timeout.total_seconds(),
        )

    @property
    def domain(self) -> str:
        return self.sender.domain.lower()

    def tls_context(self) -> ssl.SSLContext | None:
        """A context verifying the certificate and host name, trusting SMTP_CA_FILE or the system CAs."""
        if self.tls == "none":
            return None
        return verifying_context(self.ca_file, "SMTP_CA_FILE")


class EmailSender:
    """Sends send_email messages, each at most once per idempotency key; built once per worker."""

    def __init__(self, config: SmtpConfig, pool: Pool) -> None:
        self._config = config
        self._pool = pool
        self._tls_context = config.tls_context()

    async def send(
        self,
        *,
        idempotency_key: str,
        arguments: dict[str, Any],
        turn_id: str | None = None,
        tool_call_id: str | None = None,
    ) -> dict[str, Any]:
        """`{message_id, accepted, rejected}`; the recorded result when this key was sent before.

        Raises `EmailInvalid`, `EmailTransientError` (retry later), `EmailPermanentError` or
        `DeliveryUncertain` (never retried: the message may have gone out).
        """
        request = parse_send_email(arguments)
        message_id = message_id_for(idempotency_key, domain=self._config.domain)
        data = render_message(request, sender=self._config.sender, message_id=message_id)
        recipients = request.envelope_recipients()
        bound = log.bind(message_id=message_id, turn_id=turn_id, tool_call_id=tool_call_id)
        async with self._pool.acquire() as conn:
            if not await outbox.try_lock(conn, key=idempotency_key):
                raise EmailTransientError("another attempt to send this email is still running")
            try:
                record = await outbox.claim(
                    conn,
                    key=idempotency_key,
                    message_id=message_id,
                    recipients=recipients,
                    turn_id=turn_id,
                    tool_call_id=tool_call_id,
                )
                if record.status == "accepted" and record.result is not None:
                    bound.info("email already sent; returning the recorded result")
                    return record.result
                if record.status in ("data_sent", "uncertain"):
                    await outbox.mark_uncertain(conn, key=idempotency_key)
                    bound.warning("email delivery uncertain; not sending again", status=record.status)
                    raise DeliveryUncertain(_UNCERTAIN, message_id=message_id)
                bound = bound.bind(attempt=record.attempts, recipients=len(recipients))
                delivery = _Delivery(
                    self._config, self._tls_context, conn, idempotency_key, message_id, bound
                )
                return await delivery.run(recipients, data)
            finally:
                await _unlock(conn, idempotency_key)


class _Delivery:
    """One SMTP session delivering one message, recording each step in the outbox."""

    def __init__(
        self,
        config: SmtpConfig,
        tls_context: ssl.SSLContext | None,
        conn: Connection,
        key: str,
        message_id: str,
        bound: Any,
    ) -> None:
        self.config, self.conn, self.key, self.message_id, self.log = config, conn, key, message_id, bound
        self.smtp = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            use_tls=config.tls == "ssl",
            start_tls=config.tls == "starttls",
            tls_context=tls_context,
            timeout=config.timeout,
        )
        self.stage = "connect"

    async def run(self, recipients: list[str], data: bytes) -> dict[str, Any]:
        try:
            try:
                accepted, rejected = await self._envelope(recipients, len(data))
            except EmailError as err:
                await self._record_failure(err)
                raise
            if not await outbox.mark_data_sent(self.conn, key=self.key):
                raise EmailTransientError("the outbox record changed during this attempt; nothing was sent")
            try:
                await self.smtp.data(data, timeout=self.config.timeout + len(data) / _MIN_UPLOAD_RATE)
            except aiosmtplib.SMTPResponseException as err:
                # The server answered DATA with a refusal: it did not take the message.
                self.stage = "DATA"
                mapped = self._map(err)
                await self._record_failure(mapped)
                raise mapped from None
            except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as err:
                await outbox.mark_uncertain(self.conn, key=self.key, error=self._redact(str(err)))
                self.log.error("email delivery uncertain", error=self._redact(str(err)))
                raise DeliveryUncertain(_UNCERTAIN, message_id=self.message_id) from None
            result = {"message_id": self.message_id, "accepted": accepted, "rejected": rejected}
            try:
                await outbox.mark_accepted(self.conn, key=self.key, result=result)
            except Exception:
                # The server has the message: report it sent; a retry would only say "uncertain".
                self.log.exception("email sent but not recorded as accepted")
            self.log.info("email sent", accepted=len(accepted), rejected=len(rejected))
            return result
        finally:
            await self._close()

    async def _envelope(self, recipients: list[str], size: int) -> tuple[list[str], list[str]]:
        """Connect, greet, log in, MAIL FROM and RCPT TO: everything before DATA."""
        accepted: list[str] = []
        rejected: list[str] = []
        deferred: list[str] = []
        refusals: list[str] = []
        try:
            await self.smtp.connect()
            self.stage = "EHLO"
            await self.smtp.ehlo()
            limit = self.smtp.esmtp_extensions.get("size", "")
            if limit.isdigit() and 0 < int(limit) < size:
                raise EmailPermanentError(
                    f"the message is {size} bytes; the server accepts at most {limit}", smtp_code=552
                )
            if self.config.user and self.config.password:
                self.stage = f"authentication as {self.config.user}"
                await self.smtp.login(self.config.user, self.config.password.get_secret_value())
            self.stage = "MAIL FROM"
            await self.smtp.mail(self.config.sender.addr_spec)
            self.stage = "RCPT TO"
            for recipient in recipients:
                try:
                    await self.smtp.rcpt(recipient)
                except aiosmtplib.SMTPRecipientRefused as err:
                    (deferred if 400 <= err.code < 500 else rejected).append(recipient)
                    refusals.append(f"{recipient}: {err.code} {self._redact(err.message)}")
                else:
                    accepted.append(recipient)
        except EmailError:
            raise
        except Exception as err:
            raise self._map(err) from None
        if deferred:
            # Sending to the others now would leave no safe way to reach these later.
            raise EmailTransientError(f"recipients deferred by the server: {'; '.join(refusals)}")
        if not accepted:
            raise EmailPermanentError(f"the server refused every recipient: {'; '.join(refusals)}")
        if rejected:
            self.log.warning("some recipients refused", refusals=len(rejected))
        return accepted, rejected

    def _map(self, err: Exception) -> EmailError:
        """An exception before (or a refusal of) DATA as the error the caller acts on."""
        where = f"SMTP {self.stage} at {self.config.host}:{self.config.port}"
        if isinstance(err, ssl.SSLError) or isinstance(err.__cause__, ssl.SSLError):
            # A certificate or protocol mismatch is a configuration problem: retrying cannot help.
            return EmailPermanentError(f"{where}: TLS failed: {self._redact(str(err.__cause__ or err))}")
        if isinstance(err, aiosmtplib.SMTPResponseException):
            reply = f"{err.code} {self._redact(err.message)}"
            if 400 <= err.code < 500:
                return EmailTransientError(f"{where}: temporarily refused: {reply}")
            return EmailPermanentError(f"{where}: refused: {reply}", smtp_code=err.code)
        if isinstance(err, aiosmtplib.SMTPTimeoutError | aiosmtplib.SMTPServerDisconnected | OSError):
            return EmailTransientError(f"{where}: {self._redact(str(err)) or type(err).__name__}")
        if isinstance(err, aiosmtplib.SMTPException):
            # The server lacks what the configuration needs (STARTTLS, AUTH).
            return EmailPermanentError(f"{where}: {self._redact(str(err))}")
        return EmailTransientError(f"{where}: unexpected {type(err).__name__}")

    async def _record_failure(self, err: EmailError) -> None:
        try:
            if err.retryable:
                await outbox.mark_retryable(self.conn, key=self.key, error=err.message)
            else:
                await outbox.mark_failed(self.conn, key=self.key, error=err.message)
        except Exception:
            self.log.exception("email failure not recorded")
        self.log.warning("email not sent", code=err.code, retryable=err.retryable, error=err.message)

    def _redact(self, text: str) -> str:
        """Server text, shortened, with the password cut out should a server ever echo it."""
        if self.config.password and self.config.password.get_secret_value():
            text = text.replace(self.config.password.get_secret_value(), "***")
        return text[:_MAX_REPLY_CHARS]

    async def _close(self) -> None:
        if self.smtp.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await self.smtp.quit(timeout=min(5.0, self.config.timeout))
        self.smtp.close()


async def _unlock(conn: Connection, key: str) -> None:
    try:
        await outbox.unlock(conn, key=key)
    except Exception:
        # Releasing the connection to the pool resets it, which drops the lock anyway.
        log.warning("outbox lock not released", exc_info=True)
