"""The suite's network fence itself: lookups that would reach a DNS server are refused before
they are made; only names /etc/hosts answers and numeric spellings are looked up."""

import socket

import pytest

from tests.loopback_only import NonLoopbackAccess, _is_local_lookup, is_loopback_target


@pytest.mark.parametrize("name", ["localhost", "ip6-localhost", "127.1", "2130706433", "::1", None])
def test_lookups_answered_on_this_machine_are_allowed(name):
    assert _is_local_lookup(name)


@pytest.mark.parametrize("name", ["localhost.", "app.localhost", "example.test", "10.0.0.1.nip.io"])
def test_names_glibc_would_send_to_a_dns_server_are_refused(name):
    assert not _is_local_lookup(name)


def test_a_refused_lookup_never_reaches_the_resolver(loopback_only):
    with pytest.raises(NonLoopbackAccess):
        socket.getaddrinfo("localhost.", 80)
    assert loopback_only.attempts == [("DNS lookup", "'localhost.'")]
    loopback_only.attempts.clear()  # expected here; the teardown check stays for everything else


@pytest.mark.parametrize(
    ("family", "address", "allowed"),
    [
        (socket.AF_INET, ("127.0.0.1", 80), True),
        (socket.AF_INET, ("127.255.0.9", 80), True),
        (socket.AF_INET6, ("::1", 80, 0, 0), True),
        (socket.AF_INET, ("10.0.0.1", 80), False),
        (socket.AF_INET6, ("::ffff:127.0.0.1", 80, 0, 0), False),
        (socket.AF_INET, ("169.254.169.254", 80), False),
    ],
)
def test_connect_targets(family, address, allowed):
    assert is_loopback_target(family, address) is allowed
