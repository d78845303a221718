"""A kept-open IMAP session for search_emails, on aioimaplib's protocol.

aioimaplib parses responses (tagged, untagged, literals) well, but 2.0.3 has no STARTTLS,
quotes neither user names nor search keys, cannot send a literal except with APPEND, and
notices a dropped connection only when a command times out. So commands go through
`ImapSession.command`, which
- sends every untrusted value (the query, the password, odd mailbox names) as a
  synchronizing literal (`{n}` + the bytes after the server's `+`): the server reads exactly
  n bytes as data, so quotes, parentheses or CRLF in a query can never end the command and
  start another (RFC 3501 section 4.3); literals work on every IMAP4rev1 server, unlike
  LITERAL+ or UTF-8 in quoted strings;
- races each command against the connection's loss and the configured timeout;
- upgrades a plain connection with `loop.start_tls` after STARTTLS, then asks for the
  capabilities again (those sent before TLS could have been forged).
The protocol's own patches are in tools/imap_protocol.py.

`ImapClient` keeps one logged-in session per tool and lends it to one search at a time.
"""

import asyncio
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import structlog
from aioimaplib import aioimaplib
from pydantic import SecretStr

from core.config import Settings
from core.errors import ConfigurationError
from tools.imap_protocol import MAX_RESPONSE_BYTES, ImapProtocol, astring, wire
from tools.mail_parse import as_text, fetch_attributes, parse_internaldate, parse_records
from tools.netguard import is_loopback_host
from tools.tls import verifying_context

log = structlog.get_logger(__name__)

TlsMode = Literal["ssl", "starttls", "none"]
Folder = Literal["inbox", "sent", "drafts", "trash"]
_DEFAULT_PORTS: dict[str, int] = {"ssl": 993, "starttls": 143, "none": 143}
# A kept session idle longer than this is checked with NOOP (short timeout) before use.
_PROBE_AFTER_IDLE = 60.0
_PROBE_TIMEOUT = 5.0
# Every command has its own timeout, but a search runs a dozen or more: the whole search,
# waiting for the one before it included, ends before the tool activity's 2-minute limit.
SEARCH_DEADLINE = 100.0
_MAX_SERVER_TEXT = 300
# Response codes (RFC 5530) that mean "try again later", not "this is wrong".
_TRANSIENT_CODES = {"UNAVAILABLE", "INUSE", "LIMIT"}
# FETCH answers are asked for in batches: each gets the whole timeout, and aioimaplib scans a
# FETCH answer's lines again for every line it adds, so long ones cost quadratic time.
_FETCH_BATCH = 25

T = TypeVar("T")


class ImapError(Exception):
    """A search could not be done; `code` names why, `retryable` says whether later may work."""

    code = "imap_error"
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ImapUnavailable(ImapError):
    """The server cannot be reached, stopped answering, or says to come back later."""

    code = "imap_unavailable"
    retryable = True


class ImapAuthFailed(ImapError):
    """The server refused the login: IMAP_USER or IMAP_PASSWORD is wrong."""

    code = "imap_auth_failed"


class ImapTlsFailed(ImapError):
    """TLS could not be set up: an untrusted certificate, or no STARTTLS on the server."""

    code = "imap_tls_failed"


class ImapCommandFailed(ImapError):
    """The server answered a command with NO or BAD; the session is still usable."""

    code = "imap_command_failed"

    def __init__(self, message: str, server_text: str) -> None:
        super().__init__(message)
        self.server_text = server_text


class ImapResponseTooLarge(ImapError):
    """The server sent more in answer to one command than any search needs (MAX_RESPONSE_BYTES)."""

    code = "imap_response_too_large"


class FolderNotFound(ImapError):
    """The mailbox has no folder for the requested role (sent, drafts, trash)."""

    code = "folder_not_found"


@dataclass(frozen=True)
class ImapConfig:
    """Where and how to reach the mailbox (IMAP_* settings)."""

    host: str
    port: int
    user: str
    password: SecretStr = field(repr=False)
    tls: TlsMode = "ssl"
    ca_file: Path | None = None
    timeout: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> "ImapConfig | None":
        """None until IMAP_HOST, IMAP_USER and IMAP_PASSWORD are set; `ConfigurationError` if unsafe."""
        if not (settings.imap_host and settings.imap_user and settings.imap_password):
            return None
        if (
            settings.imap_tls == "none"
            and not is_loopback_host(settings.imap_host)
            and not settings.is_development
        ):
            raise ConfigurationError("IMAP_TLS=none would send the password in clear; use ssl or starttls")
        return cls(
            host=settings.imap_host,
            port=settings.imap_port or _DEFAULT_PORTS[settings.imap_tls],
            user=settings.imap_user,
            password=settings.imap_password,
            tls=settings.imap_tls,
            ca_file=settings.imap_ca_file,
            timeout=settings.imap_timeout.total_seconds(),
        )

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def tls_context(self) -> ssl.SSLContext | None:
        """A context verifying the certificate and host name, trusting IMAP_CA_FILE or the system CAs."""
        if self.tls == "none":
            return None
        return verifying_context(self.ca_file, "IMAP_CA_FILE")


@dataclass(frozen=True)
class Mailbox:
    """A LIST entry."""

    name: str
    flags: frozenset[str]
    delimiter: str | None


# Special-use flag (RFC 6154) and the names mail systems give the folder when they set no flag,
# most common first; matched case-insensitively against the whole name or its last level.
FOLDER_ROLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "sent": ("\\SENT", ("Sent", "Sent Items", "Sent Messages", "Sent Mail")),
    "drafts": ("\\DRAFTS", ("Drafts", "Draft")),
    "trash": ("\\TRASH", ("Trash", "Deleted Items", "Deleted Messages", "Bin", "Deleted")),
}


def resolve_folder(folder: str, mailboxes: Sequence[Mailbox]) -> str:
    """The mailbox name for a folder role: INBOX, else the special-use folder, else a usual name."""
    if folder == "inbox":
        return "INBOX"
    flag, names = FOLDER_ROLES[folder]
    usable = [m for m in mailboxes if not {"\\NOSELECT", "\\NONEXISTENT"} & m.flags]
    for mailbox in usable:
        if flag in mailbox.flags:
            return mailbox.name
    for wanted in names:
        candidates = [m for m in usable if wanted.lower() in (m.name.lower(), _leaf(m).lower())]
        if candidates:
            return min(candidates, key=lambda m: len(m.name)).name
    raise FolderNotFound(
        f"the mailbox has no {folder} folder: none is marked {flag.title()} and none is named "
        + ", ".join(names)
    )


def _leaf(mailbox: Mailbox) -> str:
    return mailbox.name.rsplit(mailbox.delimiter, 1)[-1] if mailbox.delimiter else mailbox.name


class ImapSession:
    """One connected, logged-in IMAP session; callers run one command at a time."""

    def __init__(self, config: ImapConfig, protocol: ImapProtocol) -> None:
        self.config = config
        self.capabilities: frozenset[str] = frozenset()
        self._protocol = protocol
        self._mailboxes: list[Mailbox] | None = None
        self.last_used = time.monotonic()

    @classmethod
    async def open(cls, config: ImapConfig, tls_context: ssl.SSLContext | None) -> "ImapSession":
        """Connect, greet, STARTTLS if configured, log in; raises ImapError."""
        loop = asyncio.get_running_loop()
        session: ImapSession | None = None
        try:
            async with asyncio.timeout(config.timeout):
                _, protocol = await loop.create_connection(
                    lambda: ImapProtocol(loop),
                    config.host,
                    config.port,
                    ssl=tls_context if config.tls == "ssl" else None,
                )
            session = cls(config, protocol)
            await session._race(protocol.wait("AUTH|NONAUTH"), "the greeting")
            if config.tls == "starttls":
                assert tls_context is not None
                await session._starttls(tls_context)
            if protocol.state == aioimaplib.NONAUTH:
                await session._login()
            await session._read_capabilities()
            return session
        except (ImapError, asyncio.CancelledError):
            if session is not None:
                session.close()
            raise
        except Exception as err:
            if session is not None:
                session.close()
            raise _connect_error(config, err) from None

    @property
    def alive(self) -> bool:
        transport = self._protocol.transport
        return not self._protocol.lost.is_set() and transport is not None and not transport.is_closing()

    def close(self) -> None:
        transport = self._protocol.transport
        if transport is not None and not transport.is_closing():
            transport.close()

    async def logout(self) -> None:
        """Say goodbye politely when the server is there, and close."""
        try:
            if self.alive:
                await self.command("LOGOUT", within=min(self.config.timeout, _PROBE_TIMEOUT))
        except ImapError:
            pass
        finally:
            self.close()

    async def noop(self) -> None:
        await self.command("NOOP", within=min(self.config.timeout, _PROBE_TIMEOUT))

    async def command(
        self, name: str, *args: str | bytes, uid: bool = False, within: float | None = None
    ) -> aioimaplib.Response:
        """Run one command: `str` arguments are sent as they are, `bytes` as literals.

        NO and BAD answers raise ImapCommandFailed (ImapUnavailable for "try later" codes).
        """
        protocol = self._protocol
        line, continuations = wire(args)
        line_args = (line,) if line else ()
        prefix = "UID" if uid else None
        command = (
            aioimaplib.FetchCommand(protocol.new_tag(), *line_args, prefix=prefix, loop=protocol.loop)
            if name == "FETCH"
            else aioimaplib.Command(name, protocol.new_tag(), *line_args, prefix=prefix, loop=protocol.loop)
        )
        protocol.start_command(continuations)
        try:
            response = await self._race(protocol.execute(command), name, within=within)
        finally:
            protocol.continuations = []
        self.last_used = time.monotonic()
        if response.result != "OK":
            text = self._server_text(response)
            match = re.match(r"\[([A-Z-]+)", text)
            if match and match.group(1) in _TRANSIENT_CODES:
                raise ImapUnavailable(f"the IMAP server at {self.config.where} is busy ({name}): {text}")
            raise ImapCommandFailed(f"the IMAP server refused {name}: {response.result} {text}", text)
        return response

    async def mailbox_for(self, folder: str) -> str:
        """The mailbox holding `folder` (inbox, sent, drafts, trash); the LIST is kept per session
        and asked again when it has no such folder (it may have been created since)."""
        if folder == "inbox":
            return "INBOX"
        if self._mailboxes is not None:
            try:
                return resolve_folder(folder, self._mailboxes)
            except FolderNotFound:
                pass
        self._mailboxes = await self._list()
        return resolve_folder(folder, self._mailboxes)

    async def examine(self, mailbox: str) -> int:
        """Select the mailbox read-only (nothing can change it); its UIDVALIDITY."""
        try:
            response = await self.command("EXAMINE", astring(mailbox))
        except ImapCommandFailed:
            self._protocol.state = aioimaplib.AUTH  # a failed EXAMINE leaves no mailbox selected
            self._mailboxes = None  # it may have been deleted or renamed: list again next time
            raise
        self._protocol.state = aioimaplib.SELECTED
        for line in response.lines:
            match = re.search(rb"\[UIDVALIDITY (\d+)\]", bytes(line))
            if match:
                return int(match.group(1))
        return 0

    async def newest(self, query: str, *, limit: int, window: int) -> list[int]:
        """UIDs of the selected mailbox's messages containing `query` (all if empty), newest first.

        Newest = latest arrival (INTERNALDATE). Servers with SORT order them; otherwise the
        arrival dates of the `window` most recently added matches are fetched and sorted here.
        """
        criteria: list[str | bytes] = ["TEXT", query.encode()] if query else ["ALL"]
        if "SORT" in self.capabilities:
            response = await self.command("SORT", "(REVERSE ARRIVAL)", "UTF-8", *criteria, uid=True)
            return _numbers(response)[:limit]
        charset = [] if query.isascii() else ["CHARSET", "UTF-8"]
        response = await self.command("SEARCH", *charset, *criteria, uid=True)
        candidates = sorted(set(_numbers(response)))[-window:]
        arrived = await self.fetch(candidates, "(UID INTERNALDATE)", batch=200)
        dates = {uid: _internaldate_key(item.get("INTERNALDATE")) for uid, item in arrived.items()}
        return sorted(dates, key=lambda uid: (dates[uid], uid), reverse=True)[:limit]

    async def fetch(
        self, uids: Sequence[int], items: str, *, batch: int = _FETCH_BATCH
    ) -> dict[int, dict[str, Any]]:
        """UID → FETCH attributes (upper-case names) of the messages that still exist."""
        found: dict[int, dict[str, Any]] = {}
        wanted = set(uids)
        for start in range(0, len(uids), batch):
            uid_set = ",".join(str(uid) for uid in uids[start : start + batch])
            response = await self.command("FETCH", uid_set, items, uid=True)
            for record in parse_records(response.lines[:-1]):
                attributes = fetch_attributes(record)
                uid = attributes.get("UID")
                if isinstance(uid, str) and uid.isdigit() and int(uid) in wanted:
                    found.setdefault(int(uid), {}).update(attributes)
        return found

    async def _race(self, awaitable: Awaitable[T], what: str, *, within: float | None = None) -> T:
        """The awaitable's result, unless the connection is lost or the timeout passes first."""
        timeout = self.config.timeout if within is None else within
        task = asyncio.ensure_future(awaitable)
        lost = asyncio.ensure_future(self._protocol.lost.wait())
        try:
            done, _ = await asyncio.wait({task, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.close()  # cut off mid-command: the session's state is unknown
            raise
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
        if task in done:
            return task.result()
        self.close()
        if self._protocol.oversized:
            raise ImapResponseTooLarge(
                f"the IMAP server at {self.config.where} answered {what} with more than"
                f" {MAX_RESPONSE_BYTES // (1024 * 1024)} MiB; the connection was closed"
            )
        if lost in done:
            raise ImapUnavailable(f"the IMAP server at {self.config.where} closed the connection ({what})")
        raise ImapUnavailable(
            f"the IMAP server at {self.config.where} did not answer {what} within {timeout:g}s"
        )

    async def _starttls(self, context: ssl.SSLContext) -> None:
        if "STARTTLS" not in self._protocol.capabilities:
            raise ImapTlsFailed(
                f"the IMAP server at {self.config.where} does not offer STARTTLS; use IMAP_TLS=ssl"
            )
        await self.command("STARTTLS")
        loop = asyncio.get_running_loop()
        protocol = self._protocol
        assert protocol.transport is not None
        upgrade = loop.start_tls(protocol.transport, protocol, context, server_hostname=self.config.host)
        protocol.transport = await self._race(upgrade, "the TLS handshake")
        await self._read_capabilities()

    async def _login(self) -> None:
        if "LOGINDISABLED" in self._protocol.capabilities:
            raise ImapAuthFailed(
                f"the IMAP server at {self.config.where} refuses to log in on an unencrypted connection;"
                " use IMAP_TLS=ssl or starttls"
            )
        password = self.config.password.get_secret_value().encode()
        try:
            await self.command("LOGIN", astring(self.config.user), password)
        except ImapCommandFailed as err:
            raise ImapAuthFailed(
                f"the IMAP server at {self.config.where} refused the login of {self.config.user!r}:"
                f" {err.server_text}"
            ) from None
        self._protocol.state = aioimaplib.AUTH

    async def _read_capabilities(self) -> None:
        response = await self.command("CAPABILITY")
        words = b" ".join(bytes(line) for line in response.lines[:-1]).decode("ascii", "replace").split()
        self.capabilities = frozenset(word.upper() for word in words)
        self._protocol.capabilities = set(self.capabilities)

    async def _list(self) -> list[Mailbox]:
        special = {"SPECIAL-USE", "LIST-EXTENDED"} <= self.capabilities
        response = await self.command("LIST", '""', '"*"', *(["RETURN (SPECIAL-USE)"] if special else []))
        mailboxes = []
        for record in parse_records(response.lines[:-1]):
            if len(record) >= 3 and isinstance(record[0], list):
                flags = frozenset(str(flag).upper() for flag in record[0] if isinstance(flag, str))
                delimiter = as_text(record[1]) or None
                mailboxes.append(Mailbox(as_text(record[2]), flags, delimiter))
        return mailboxes

    def _server_text(self, response: aioimaplib.Response) -> str:
        last = response.lines[-1] if response.lines else b""
        text = bytes(last).decode("utf-8", "replace").strip()
        secret = self.config.password.get_secret_value()
        if secret:
            text = text.replace(secret, "***")
        return text[:_MAX_SERVER_TEXT]


class ImapClient:
    """The tool's IMAP session, opened on first use and reused; one search at a time on it.

    A kept session can die unnoticed (server restart, NAT timeout): one idle for a while is
    probed with NOOP first, and an operation that loses a kept session is run once more on a
    new one (searching is read-only, so running it again is harmless).
    """

    def __init__(self, config: ImapConfig) -> None:
        self.config = config
        self._tls_context = config.tls_context()
        self._session: ImapSession | None = None
        self._lock = asyncio.Lock()

    async def run(self, operation: Callable[[ImapSession], Awaitable[T]]) -> T:
        """`operation` on the kept session, waiting for the one before; within SEARCH_DEADLINE."""
        deadline = asyncio.timeout(SEARCH_DEADLINE)
        try:
            async with deadline:
                return await self._run(operation)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise ImapUnavailable(
                f"the search on the IMAP server at {self.config.where} took longer than"
                f" {SEARCH_DEADLINE:g}s (a slow or busy server) and was abandoned"
            ) from None

    async def _run(self, operation: Callable[[ImapSession], Awaitable[T]]) -> T:
        async with self._lock:
            session, reused = await self._ready_session()
            try:
                return await self._attempt(session, operation)
            except ImapUnavailable:
                if not reused:
                    raise
                log.info("kept IMAP session lost; retrying on a new one", server=self.config.where)
            session, _ = await self._ready_session()
            return await self._attempt(session, operation)

    async def aclose(self) -> None:
        async with self._lock:
            if self._session is not None:
                session, self._session = self._session, None
                await session.logout()

    async def _ready_session(self) -> tuple[ImapSession, bool]:
        """A usable session, and whether it is a kept one (True) or was just opened."""
        session = self._session
        if session is not None and session.alive and time.monotonic() - session.last_used > _PROBE_AFTER_IDLE:
            try:
                await session.noop()
            except ImapError:
                session.close()
        if session is not None and session.alive:
            return session, True
        self._session = None
        self._session = await ImapSession.open(self.config, self._tls_context)
        return self._session, False

    async def _attempt(self, session: ImapSession, operation: Callable[[ImapSession], Awaitable[T]]) -> T:
        try:
            return await operation(session)
        except (ImapCommandFailed, FolderNotFound):
            raise  # the server answered: the session is fine
        except BaseException:
            # Lost, timed out or cancelled mid-command: nothing more can be read from it.
            session.close()
            self._session = None
            raise


def _connect_error(config: ImapConfig, err: BaseException) -> ImapError:
    """An exception raised while connecting as the ImapError it means."""
    where = config.where
    if isinstance(err, ssl.SSLCertVerificationError):
        return ImapTlsFailed(
            f"the TLS certificate of the IMAP server at {where} is not trusted: {err.verify_message}"
        )
    if isinstance(err, ssl.SSLError):
        return ImapTlsFailed(f"TLS with the IMAP server at {where} failed: {err.reason or err}")
    if isinstance(err, TimeoutError):
        return ImapUnavailable(f"the IMAP server at {where} did not answer within {config.timeout:g}s")
    if isinstance(err, OSError):
        return ImapUnavailable(f"cannot connect to the IMAP server at {where}: {err.strerror or err}")
    return ImapUnavailable(f"the IMAP server at {where} failed: {type(err).__name__}: {err}")


def _numbers(response: aioimaplib.Response) -> list[int]:
    """The numbers of SEARCH/SORT answers, in the server's order."""
    data = b" ".join(bytes(line) for line in response.lines[:-1])
    return [int(word) for word in data.split() if word.isdigit()]


def _internaldate_key(value: Any) -> float:
    """INTERNALDATE as a timestamp for sorting; unknown dates sort last."""
    parsed = parse_internaldate(value)
    return parsed.timestamp() if parsed else float("-inf")
