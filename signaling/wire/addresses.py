"""Client addresses: the one form they are shown in, and the key that
``--max-connections-per-address`` counts them by.

Shown: ``tcp4:198.51.100.7:50412`` and ``tcp6:[2001:db8::7]:50412`` for a
socket peer, ``unix`` for a peer on a unix socket (it has no address), and
the bare address (``198.51.100.7``, ``2001:db8::7``) taken from
X-Forwarded-For under ``--trust-proxy``.  An IPv4-mapped IPv6 address
(``::ffff:198.51.100.7``) is the IPv4 address it maps.

Counted by: an IPv4 address, an IPv6 /64 (one subscriber's usual share, so
a client cannot multiply its allowance by picking addresses in it), or
nothing for a unix-socket peer: behind a proxy every client would share it.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address

#: How a peer on a unix socket is shown.
UNIX_PEER = "unix"


def _limit_key(ip: IPv4 | IPv6) -> str:
    if isinstance(ip, IPv4):
        return str(ip)
    return f"{IPv6(int(ip) >> 64 << 64)}/64"


def _unmapped(ip: IPv4 | IPv6) -> IPv4 | IPv6:
    if isinstance(ip, IPv6) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def socket_address(peer: IAddress) -> tuple[str, str | None]:
    """How the peer of a socket is shown, and its per-address limit key
    (None: not limited per address)."""
    if isinstance(peer, IPv4Address):
        return f"tcp4:{peer.host}:{peer.port}", peer.host
    if isinstance(peer, IPv6Address):
        try:
            ip = _unmapped(ipaddress.ip_address(peer.host))
        except ValueError:
            return f"tcp6:[{peer.host}]:{peer.port}", peer.host
        if isinstance(ip, IPv4):
            return f"tcp4:{ip}:{peer.port}", str(ip)
        return f"tcp6:[{peer.host}]:{peer.port}", _limit_key(ip)
    if isinstance(peer, UNIXAddress):
        return UNIX_PEER, None
    return str(peer), None


def forwarded_address(header: str, trusted: int) -> tuple[str, str] | None:
    """The client address in an X-Forwarded-For value that ``trusted``
    proxies appended to (the ``trusted``-th entry from the right, or the
    leftmost if there are fewer), shown and as a limit key; None if that
    entry is not an IP address (an optional port is allowed)."""
    entries = header.split(",")
    entry = entries[-trusted if trusted <= len(entries) else 0].strip()
    if entry.startswith("["):  # [2001:db8::7]:443
        entry = entry[1 : entry.find("]")]
    elif entry.count(":") == 1:  # 198.51.100.7:443
        entry = entry.partition(":")[0]
    try:
        ip = _unmapped(ipaddress.ip_address(entry))
    except ValueError:
        return None
    return str(ip), _limit_key(ip)
