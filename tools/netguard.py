"""Which addresses a web fetch may reach, and connections made only to addresses that were checked.

The check lives in the connection layer (an httpcore network backend), not before the request:
the host name is resolved once, every address it resolves to is checked, and the socket is
opened to one of those same addresses. Checking first and letting the HTTP library look the
name up again would let DNS answer differently the second time (DNS rebinding). Every
connection the client opens, for the first request and for each redirect, passes through here.

Spellings such as `2130706433`, `0x7f000001` or `0177.1` need no parser of ours: the resolver
(getaddrinfo, which reads them the way `inet_aton` does) turns them into the address they
stand for, and that address is what is checked. Any port is allowed; the address decides.

Even an intranet deployment (FETCH_ALLOW_PRIVATE_NETWORKS) keeps the cloud platform's own
services out of reach: instance metadata hands out the machine's credentials, and a page
the model reads could ask it to fetch them.
"""

import asyncio
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import httpcore
import httpx

IPAddress = IPv4Address | IPv6Address
# Why an address is refused (a phrase such as "a loopback address"), or None to allow it.
AddressPolicy = Callable[[IPAddress], str | None]
# Host and port → the addresses to connect to; raises OSError (socket.gaierror) for unknown names.
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

_SHARED = IPv4Network("100.64.0.0/10")  # carrier-grade NAT, RFC 6598
_RFC1918 = (IPv4Network("10.0.0.0/8"), IPv4Network("172.16.0.0/12"), IPv4Network("192.168.0.0/16"))
_NAT64 = IPv6Network("64:ff9b::/96")  # well-known prefix, RFC 6052: the last 32 bits are IPv4
_UNIQUE_LOCAL = IPv6Network("fc00::/7")
# Cloud metadata and platform services outside the link-local range.
_CLOUD_PLATFORM: frozenset[IPAddress] = frozenset(
    {
        IPv4Address("168.63.129.16"),  # Azure WireServer, on a public address
        IPv4Address("100.100.100.200"),  # Alibaba Cloud metadata
        IPv4Address("192.0.0.192"),  # Oracle Cloud metadata
        IPv6Address("fd00:ec2::254"),  # AWS instance metadata over IPv6
    }
)


class AddressNotAllowed(Exception):
    """A host resolved to an address the policy refuses; nothing was sent to it."""

    def __init__(self, host: str, address: IPAddress, reason: str) -> None:
        self.host = host
        self.address = address
        self.reason = reason
        where = host if host == str(address) else f"{host} resolves to {address}, which"
        super().__init__(f"{where} is {reason}")


class HostNotFound(Exception):
    """The host name does not resolve to any address."""

    def __init__(self, host: str) -> None:
        self.host = host
        super().__init__(f"the host {host} was not found")


class LookupFailed(Exception):
    """The name could not be looked up just now (no answer from DNS); another try may succeed."""

    def __init__(self, host: str) -> None:
        self.host = host
        super().__init__(f"could not look up {host}: the DNS server did not answer")


def public_only(ip: IPAddress) -> str | None:
    """Why `ip` is not a public internet address, or None when it is one."""
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        inner = public_only(embedded)
        return f"an IPv6 form of {embedded}, {inner}" if inner else None
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    platform = _cloud_platform(ip)
    if platform is not None:
        return platform
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, IPv4Address):
        if ip in _SHARED:
            return "a carrier-grade NAT (shared) address"
        if any(ip in network for network in _RFC1918):
            return "a private-network address"
    else:
        if ip in _UNIQUE_LOCAL:
            return "a unique-local (private) IPv6 address"
        if ip.is_site_local:
            return "a site-local IPv6 address"
        if ip.is_reserved:
            return "a reserved IPv6 address"
    if not ip.is_global:
        return "a reserved or special-purpose address"
    return None


def is_loopback_host(host: str) -> bool:
    """Whether a configured server host (not a URL the model gave) names this machine, so that
    cleartext to it stays on the host. Names other than `localhost` are not resolved here."""
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def private_networks(ip: IPAddress) -> str | None:
    """The policy for intranets and tests (FETCH_ALLOW_PRIVATE_NETWORKS): every address but the
    cloud platform's services."""
    embedded = _embedded_ipv4(ip)
    if embedded is not None:
        inner = private_networks(embedded)
        return f"an IPv6 form of {embedded}, {inner}" if inner else None
    return _cloud_platform(ip)


def _cloud_platform(ip: IPAddress) -> str | None:
    """Why `ip` reaches this machine's cloud platform (metadata, credentials), or None."""
    if ip.is_link_local:
        return "a link-local address (as used by cloud metadata services)"
    if ip in _CLOUD_PLATFORM:
        return "a cloud platform's metadata or control address"
    return None


def _embedded_ipv4(ip: IPAddress) -> IPv4Address | None:
    """The IPv4 address an IPv6 address carries and routes to (mapped, NAT64, 6to4)."""
    if isinstance(ip, IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The addresses getaddrinfo gives for `host`, without duplicates, in its order."""
    try:
        # getaddrinfo's own encoding, done first: its UnicodeError (a label over 63 characters,
        # an empty one) is no OSError, and such a name is in no DNS.
        host.encode("idna")
    except UnicodeError as err:
        raise socket.gaierror(socket.EAI_NONAME, f"{host!r} is not a valid host name") from err
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ip_address(info[4][0]) for info in infos))


class AddressGuard:
    """Resolves a host and hands back its addresses only if the policy allows every one."""

    def __init__(self, policy: AddressPolicy, resolver: Resolver = system_resolver) -> None:
        self._policy = policy
        self._resolver = resolver

    async def checked_addresses(self, host: str, port: int) -> list[IPAddress]:
        try:
            addresses = await self._resolver(host, port)
        except OSError as err:
            if err.errno == socket.EAI_AGAIN:
                raise LookupFailed(host) from err
            raise HostNotFound(host) from err
        if not addresses:
            raise HostNotFound(host)
        # One refused address refuses the host: which one a connection gets is not ours to pick.
        for address in addresses:
            reason = self._policy(address)
            if reason is not None:
                raise AddressNotAllowed(host, address, reason)
        return addresses


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Opens TCP connections only to addresses the guard checked; TLS still uses the host name.

    The `timeout` parameters are httpcore's interface, hence the ASYNC109 exemptions."""

    def __init__(self, guard: AddressGuard, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._guard = guard
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._guard.checked_addresses(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"looking up {host} took longer than {timeout}s") from None
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as err:
                failure = err
        assert failure is not None  # checked_addresses never returns an empty list
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not reachable through a guarded connection")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose connections all go through a GuardedBackend (no proxies)."""

    def __init__(self, guard: AddressGuard, *, ssl_context: ssl.SSLContext) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, network_backend=GuardedBackend(guard)
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


# httpcore's errors and the httpx errors callers catch, most specific first.
_HTTPX_ERRORS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


@contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except tuple(core for core, _ in _HTTPX_ERRORS) as err:
        mapped = next(public for core, public in _HTTPX_ERRORS if isinstance(err, core))
        raise mapped(str(err)) from err
