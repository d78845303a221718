"""A real SMTP server (aiosmtpd) on loopback that records what it receives."""

import email
import email.policy
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from devstack import free_port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class _Handler:
    received: list[Received] = field(default_factory=list)
    refuse_rcpt: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Called (in the server's thread) after a message is stored, before the 250 reply.
    on_data: Any = None
    # Called (in the server's thread) when a client sends QUIT, before the 221 reply.
    on_quit: Any = None

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse_rcpt:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.received.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
            )
        if self.on_data is not None:
            self.on_data()
        return "250 2.0.0 queued"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        if self.on_quit is not None:
            self.on_quit()
        return "221 Bye"  # aiosmtpd's own reply


class MailServer:
    """Start/stop-able SMTP server; restarts on the same port (to test an outage)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.handler = _Handler()
        self._controller: Controller | None = None

    def start(self) -> "MailServer":
        self._controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def messages(self, containing: str) -> list[Received]:
        """Messages whose subject contains `containing`."""
        with self.handler.lock:
            found = list(self.handler.received)
        return [m for m in found if containing in str(m.message["Subject"])]
