"""aioimaplib's IMAP protocol, patched where search_emails needs more than 2.0.3 gives.

- Literal data: aioimaplib sends literals only with APPEND; `wire` splits a command into
  its first line and what follows each `+` continuation, which the protocol sends.
- Connection loss: aioimaplib notices it only when a command times out; `lost` is set at once.
- Bounded answers: one command's answer is cut off past MAX_RESPONSE_BYTES (a server could
  otherwise send a literal or a line of any size, held whole in memory).
- aioimaplib's line loop recurses once per line and overflows the stack on an answer of a
  thousand lines in one read; `_handle_responses` is the same loop, iterative.
"""

import asyncio
from collections.abc import Callable, Sequence

from aioimaplib import aioimaplib

# Far above any answer search_emails asks for (a SEARCH of a million UIDs is about 7 MB).
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


class ImapProtocol(aioimaplib.IMAP4ClientProtocol):
    """aioimaplib's protocol, telling when the connection is gone or an answer grew too large,
    and sending literal data."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.lost = asyncio.Event()
        # Set when the connection was cut because an answer passed MAX_RESPONSE_BYTES.
        self.oversized = False
        # What to send after each `+` continuation of the running command (see `wire`).
        self.continuations: list[bytes] = []
        self._received = 0

    def start_command(self, continuations: list[bytes]) -> None:
        """Begin counting the bytes of a new command's answer; its literal data to send."""
        self.continuations = continuations
        self._received = 0

    def data_received(self, d: bytes) -> None:
        self._received += len(d)
        if self._received > MAX_RESPONSE_BYTES:
            if self.transport is not None and not self.oversized:
                self.oversized = True
                self.transport.abort()  # connection_lost follows: the running command ends
            return
        super().data_received(d)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()
        super().connection_lost(exc)

    def _continuation(self, line: bytes) -> None:
        if self.continuations and self.transport is not None:
            self.transport.write(self.continuations.pop(0))
        else:
            super()._continuation(line)

    def _handle_responses(
        self,
        data: bytes,
        line_handler: Callable[[bytes, aioimaplib.Command | None], aioimaplib.Command | None],
        current_cmd: aioimaplib.Command | None = None,
    ) -> None:
        """aioimaplib's own loop over the received lines, without its recursion per line: that
        overflows Python's stack (RecursionError, connection lost) when one read from the socket
        holds about a thousand lines, as a LIST of a big account can. Same steps, same order."""
        pos = 0
        while True:
            if pos >= len(data):
                if self.pending_sync_command is not None:
                    self.pending_sync_command.flush()
                if current_cmd is not None and current_cmd.wait_data():
                    raise aioimaplib.IncompleteRead(current_cmd)
                return
            if current_cmd is not None and current_cmd.wait_literal_data():
                data, pos = current_cmd.append_literal_data(data[pos:]), 0
                if current_cmd.wait_literal_data():
                    raise aioimaplib.IncompleteRead(current_cmd)
            end = data.find(aioimaplib.CRLF, pos)
            if end < 0:
                raise aioimaplib.IncompleteRead(current_cmd, data[pos:])
            line, pos = data[pos:end], end + len(aioimaplib.CRLF)
            cmd = line_handler(line, current_cmd)
            begin_literal = aioimaplib.literal_data_re.match(line)
            if begin_literal:
                if cmd is None:
                    cmd = aioimaplib.Command("NIL", "unused")
                cmd.begin_literal_data(int(begin_literal.group("size")))
                current_cmd = cmd
            elif cmd is not None and cmd.wait_data():
                current_cmd = cmd
            else:
                current_cmd = None


def wire(args: Sequence[str | bytes]) -> tuple[str, list[bytes]]:
    """The command line up to the first literal, and what follows each `+` continuation.

    `("TEXT", b"x y", "ALL")` → `"TEXT {3}"` and `[b"x y ALL\\r\\n"]`.
    """
    line = ""
    continuations: list[bytes] = []
    pending: bytes | None = None
    for arg in args:
        text = f"{{{len(arg)}}}" if isinstance(arg, bytes) else arg
        if pending is None:
            line = f"{line} {text}" if line else text
        else:
            pending += b" " + text.encode()
        if isinstance(arg, bytes):
            if pending is not None:
                continuations.append(pending + b"\r\n")
            pending = arg
    if pending is not None:
        continuations.append(pending + b"\r\n")
    return line, continuations


def astring(value: str) -> str | bytes:
    """A quoted string when safe, else a literal (non-ASCII or control characters)."""
    if value.isascii() and value.isprintable():
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value.encode()
