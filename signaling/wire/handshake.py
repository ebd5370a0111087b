"""Recognising the plain WebSocket opening handshake in one pass.

Autobahn's handshake serves every case (subprotocols, compression, older
protocol versions, status pages) through a general header parser, a
Deferred and a dozen debug-log calls: a sixth of the server's work per new
connection. Nearly every real request is the same plain upgrade.
``plain_upgrade`` recognises exactly that and answers None for anything
else, which Autobahn then reads, answers and, where it must, refuses as
before. The checks here are Autobahn's own, in the same order, so a
request it would refuse is never accepted here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: The WebSocket endpoint.
CONNECT_PATH = "/connect"
#: What Autobahn refuses anywhere in a request's head (it then answers
#: 400): control characters other than HTAB and CRLF pairs, and CR or LF
#: alone. str.splitlines() would split at several of them (and at NEL),
#: so a header could hide inside another.
_INVALID_HEAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")
#: A header name (RFC 9110 token), as Autobahn requires it.
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_KEY_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/")


@dataclass(frozen=True, slots=True)
class PlainUpgrade:
    """A valid RFC 6455 upgrade request for ``/connect``, as Autobahn would
    have parsed it; ``origin`` and ``extensions`` still need the factory's
    policies to be checked."""

    status_line: str
    headers: dict[str, str]
    uri: str
    query: str
    host: str
    key: str
    origin: str
    extensions: str | None


def _has_token(value: str | None, token: str) -> bool:
    return value is not None and any(part.strip().lower() == token for part in value.split(","))


def plain_upgrade(head: bytes) -> PlainUpgrade | None:
    """The request whose line and headers are ``head`` (up to, not
    including, the blank line), if it is a plain upgrade; otherwise None."""
    if not head.isascii():
        # Browsers send ASCII; how NEL, NBSP and the like are split and
        # stripped differs between Autobahn releases: theirs to answer.
        return None
    text = head.decode("ascii")
    if _INVALID_HEAD.search(text):
        return None
    lines = text.split("\r\n")
    status_line = lines[0].strip(" ")
    if "\t" in status_line:
        return None
    parts = status_line.split()
    if len(parts) != 3 or parts[0] != "GET" or parts[2] != "HTTP/1.1":
        return None
    uri = parts[1]
    path, _, query = uri.partition("?")
    if path != CONNECT_PATH or "#" in query:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        colon = line.find(":")
        if colon <= 0 or not _FIELD_NAME.fullmatch(line, 0, colon):
            return None  # Autobahn refuses it
        name = line[:colon].lower()
        if name in headers:
            return None  # repeated headers: Autobahn counts and joins them
        headers[name] = line[colon + 1 :].strip(" \t")
    host = headers.get("host")
    if host is None:
        return None
    host = host.strip()
    if ":" in host and not host.endswith("]"):
        host, _, port = host.rpartition(":")
        port = port.strip()
        if not (0 < len(port) <= 5 and port.isascii() and port.isdigit()):
            return None
    if not (
        _has_token(headers.get("upgrade"), "websocket")
        and _has_token(headers.get("connection"), "upgrade")
        and headers.get("sec-websocket-version") == "13"
        and "sec-websocket-protocol" not in headers
    ):
        return None
    origin = headers.get("origin", "").strip()  # Autobahn's strip(): NBSP, NEL too
    if origin == "" and "origin" in headers:
        return None  # Autobahn refuses an empty Origin
    key = headers.get("sec-websocket-key", "")
    if len(key) != 24 or key[-2:] != "==" or not _KEY_ALPHABET.issuperset(key[:-2]):
        return None
    return PlainUpgrade(
        status_line=status_line,
        headers=headers,
        uri=uri,
        query=query,
        host=host,
        key=key,
        origin=origin,
        extensions=headers.get("sec-websocket-extensions"),
    )
