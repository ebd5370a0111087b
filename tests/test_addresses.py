"""How client addresses are shown and counted (signaling.wire.addresses)."""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from signaling.wire.addresses import forwarded_address, socket_address


@pytest.mark.parametrize(
    ("peer", "shown", "key"),
    [
        (IPv4Address("TCP", "198.51.100.7", 50412), "tcp4:198.51.100.7:50412", "198.51.100.7"),
        (
            IPv6Address("TCP", "2001:db8:1:2:3:4:5:6", 50412),
            "tcp6:[2001:db8:1:2:3:4:5:6]:50412",
            "2001:db8:1:2::/64",
        ),
        (IPv6Address("TCP", "::1", 50412), "tcp6:[::1]:50412", "::/64"),
        (
            IPv6Address("TCP", "::ffff:198.51.100.7", 50412),
            "tcp4:198.51.100.7:50412",
            "198.51.100.7",
        ),
        (UNIXAddress(None), "unix", None),
        (UNIXAddress(b"/run/signaling/signaling.sock"), "unix", None),
    ],
)
def test_socket_peers(peer: object, shown: str, key: str | None) -> None:
    assert socket_address(peer) == (shown, key)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("header", "trusted", "expected"),
    [
        ("198.51.100.1, 203.0.113.7", 1, ("203.0.113.7", "203.0.113.7")),
        ("198.51.100.1, 203.0.113.7", 2, ("198.51.100.1", "198.51.100.1")),
        ("198.51.100.1, 203.0.113.7", 5, ("198.51.100.1", "198.51.100.1")),
        ("203.0.113.7:8080", 1, ("203.0.113.7", "203.0.113.7")),
        ("::ffff:203.0.113.7", 1, ("203.0.113.7", "203.0.113.7")),
        ("2001:db8:0:1::7", 1, ("2001:db8:0:1::7", "2001:db8:0:1::/64")),
        ("[2001:db8:0:1::7]:443", 1, ("2001:db8:0:1::7", "2001:db8:0:1::/64")),
        ("2001:DB8:0:1:0:0:0:7", 1, ("2001:db8:0:1::7", "2001:db8:0:1::/64")),
        ("unknown", 1, None),
        ("", 1, None),
        ("203.0.113.7, <script>", 1, None),
    ],
)
def test_forwarded(header: str, trusted: int, expected: tuple[str, str] | None) -> None:
    assert forwarded_address(header, trusted) == expected
