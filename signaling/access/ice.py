"""The ICE servers each client gets in ``joined``: ``--stun`` URLs, and
``--turn`` URLs with time-limited credentials in coturn's ``use-auth-secret``
scheme (the "TURN REST API"): username ``EXPIRY:CLIENT_ID``, credential
``base64(HMAC-SHA1(secret, username))``, where ``EXPIRY`` is the Unix time
after which coturn refuses the credential."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_TURN_TTL = 86400

#: ``host[:port]``: a name or IPv4 address, or an IPv6 address in brackets.
_HOST_PORT = r"(?:\[[0-9A-Fa-f:.]+\]|[^\s:/?#@\[\]]+)(?::(?P<port>[0-9]{1,5}))?"
_URL = {
    "stun": re.compile(rf"(stuns?):{_HOST_PORT}"),
    "turn": re.compile(rf"(turns?):{_HOST_PORT}(?:\?transport=(?:udp|tcp))?"),
}


def check_url(kind: str, url: str) -> None:
    """ValueError, saying what is expected, unless ``url`` is a ``kind``
    ("stun" or "turn") URL that browsers accept (RFC 7064, RFC 7065)."""
    match = _URL[kind].fullmatch(url)
    if match is None or not 0 < int(match.group("port") or 1) < 65536:
        if kind == "stun":
            expected = "stun:HOST[:PORT] or stuns:HOST[:PORT], e.g. stun:stun.example.com:3478"
        else:
            expected = (
                "turn:HOST[:PORT] or turns:HOST[:PORT], optionally ending in ?transport=udp "
                "or ?transport=tcp, e.g. turn:turn.example.com:3478?transport=udp"
            )
        raise ValueError(f"{url!r} is not a {kind.upper()} URL like {expected}")


def read_secret(path: str) -> bytes:
    """The shared secret in the file ``path`` (coturn's ``static-auth-secret``),
    without the line break that ends the file; ValueError if unreadable or empty."""
    try:
        secret = Path(path).read_bytes().rstrip(b"\r\n")
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    if not secret:
        raise ValueError(f"{path} is empty: it must hold the secret (coturn's static-auth-secret)")
    return secret


def turn_credential(secret: bytes, username: str) -> str:
    """coturn's password for ``username`` under ``use-auth-secret``."""
    digest = hmac.new(secret, username.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


class IceServers:
    """``client_id -> [RTCIceServer, ...]`` for ``Hub.ice_servers``: one entry
    with the STUN URLs (if any), one with the TURN URLs and a username and
    credential valid for ``ttl`` seconds from now (if any)."""

    def __init__(
        self,
        seconds: Callable[[], float],
        stun: Sequence[str] = (),
        turn: Sequence[str] = (),
        secret: bytes | None = None,
        ttl: int = DEFAULT_TURN_TTL,
    ) -> None:
        if turn and not secret:
            raise ValueError("TURN URLs need the shared secret")
        self._seconds = seconds
        self._stun = list(stun)
        self._turn = list(turn)
        self._secret = secret or b""
        self._ttl = ttl

    def __call__(self, client_id: str) -> list[dict[str, Any]]:
        servers: list[dict[str, Any]] = []
        if self._stun:
            servers.append({"urls": list(self._stun)})
        if self._turn:
            username = f"{int(self._seconds()) + self._ttl}:{client_id}"
            servers.append(
                {
                    "urls": list(self._turn),
                    "username": username,
                    "credential": turn_credential(self._secret, username),
                }
            )
        return servers
