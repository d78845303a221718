"""A fixture that fails a test on any attempt to reach the network beyond loopback.

`loopback_only` patches, for the test's duration, the calls through which Python code opens
connections or sends datagrams (`socket.socket.connect`, `connect_ex`, `sendto`; asyncio's
`sock_connect` and `create_connection` end in `connect`) and the name lookups that would ask a
DNS server (`socket.getaddrinfo`, `gethostbyname`). An attempt to reach anything other than
127.0.0.0/8, ::1, `localhost` or a unix socket raises `NonLoopbackAccess` and is recorded;
teardown fails the test if anything was recorded, even if the code under test swallowed the
error. Numeric host spellings (`2130706433`, `0x7f000001`) are looked up locally and allowed:
the connection to what they denote is judged instead.

Native code that opens its own sockets (Temporal's Rust core, libpq) is not seen.
"""

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Address, ip_address
from typing import Any

import pytest

_LOOPBACK_V4 = IPv4Network("127.0.0.0/8")
_LOOPBACK_V6 = IPv6Address("::1")
_LOCAL_NAMES = ("localhost", "ip6-localhost")
# Taken at import, so a lookup the fixture allows is not itself judged again.
_REAL_GETADDRINFO = socket.getaddrinfo


class NonLoopbackAccess(PermissionError):
    """A test tried to reach an address beyond loopback."""


@dataclass
class AccessLog:
    """Every refused attempt, as `(operation, target)`."""

    attempts: list[tuple[str, str]] = field(default_factory=list)

    def refuse(self, operation: str, target: Any) -> None:
        self.attempts.append((operation, repr(target)))
        raise NonLoopbackAccess(f"tests may only reach loopback; refused {operation} to {target!r}")


def is_loopback_target(family: int, address: Any) -> bool:
    """Whether a socket address stays on this machine."""
    if family == getattr(socket, "AF_UNIX", None):
        return True
    if not isinstance(address, tuple) or not address:
        return False
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host in _LOCAL_NAMES:
        return True
    try:
        ip = ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return False
    return ip == _LOOPBACK_V6 or (ip.version == 4 and ip in _LOOPBACK_V4)


def _is_local_lookup(host: Any) -> bool:
    """A lookup that needs no DNS server: no host, a numeric spelling, or localhost."""
    if host is None:
        return True
    name = host.decode("ascii", "replace") if isinstance(host, bytes) else str(host)
    # Exactly these names: /etc/hosts answers them. glibc sends `localhost.` and `*.localhost`
    # to the DNS server like any other name.
    if name.lower() in _LOCAL_NAMES:
        return True
    try:
        _REAL_GETADDRINFO(name, None, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return False
    return True


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[AccessLog]:
    log = AccessLog()
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_sendto = socket.socket.sendto
    real_gethostbyname = socket.gethostbyname

    def connect(self: socket.socket, address: Any) -> None:
        if not is_loopback_target(self.family, address):
            log.refuse("connect", address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not is_loopback_target(self.family, address):
            log.refuse("connect", address)
        return real_connect_ex(self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> int:
        address = args[-1]
        if not is_loopback_target(self.family, address):
            log.refuse("sendto", address)
        return real_sendto(self, data, *args)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_local_lookup(host):
            log.refuse("DNS lookup", host)
        return _REAL_GETADDRINFO(host, *args, **kwargs)

    def gethostbyname(host: str) -> str:
        if not _is_local_lookup(host):
            log.refuse("DNS lookup", host)
        return real_gethostbyname(host)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket.socket, "sendto", sendto)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "gethostbyname", gethostbyname)
    yield log
    assert not log.attempts, f"the test tried to reach beyond loopback: {log.attempts}"
