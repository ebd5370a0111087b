"""Where the server listens: ``--port``/``--interface``, or ``--listen``/``--listen-tls``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocolFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from .logs import ServerLogger
from .tls import INTERMEDIATE_CIPHERS, ReloadableServerTLS, select_alpn

_log = ServerLogger()


@dataclass(frozen=True)
class Listener:
    """One Twisted endpoint description, and whether to add TLS on top of it."""

    description: str
    tls: bool


def _fields(description: str) -> list[str]:
    """The colon-separated fields of an endpoint description, with the
    backslash escapes (``\\:``) resolved."""
    fields = [""]
    escaped = False
    for char in description:
        if escaped:
            fields[-1] += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append("")
        else:
            fields[-1] += char
    return fields


def unix_socket_path(description: str) -> str | None:
    """The file a ``unix:`` endpoint description listens on (None for
    other endpoints)."""
    kind, *args = _fields(description)
    if kind != "unix":
        return None
    positional = [arg for arg in args if "=" not in arg]
    named = dict(arg.split("=", 1) for arg in args if "=" in arg)
    return named.get("address", positional[0] if positional else None)


def _check_unix_directory(option: str, description: str) -> None:
    """UsageError, naming the path, if a unix socket cannot be made where
    ``description`` says: its directory is missing or not writable."""
    path = unix_socket_path(description)
    if not path or path.startswith("@"):  # none, or Linux's abstract namespace
        return
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise usage.UsageError(
            f"{option} {description}: directory {directory} does not exist; create it "
            "first (the server does not), e.g. install -d -m 0750 "
            f"{directory}, or let systemd's socket unit or RuntimeDirectory= make it"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise usage.UsageError(
            f"{option} {description}: directory {directory} is not writable by this user, "
            "so the socket cannot be made there"
        )


def check_endpoint(option: str, description: str) -> None:
    """Raise UsageError unless ``description`` is a server endpoint Twisted can
    build and, for a unix socket, its directory is there to make it in."""
    from twisted.internet import reactor

    try:
        serverFromString(reactor, description)
    except Exception as e:
        hint = ""
        if "::" in description:
            hint = (
                " (colons in values are escaped with a backslash, as in interface=\\:\\:; "
                "tcp6:PORT listens on all IPv6 and IPv4 addresses)"
            )
        elif description.startswith("systemd:"):
            hint = (
                " (is the process started by its .socket unit, with a matching "
                "FileDescriptorName=?)"
            )
        raise usage.UsageError(
            f"{option} {description}: not a usable endpoint: {type(e).__name__}: {e}{hint}"
        ) from None
    _check_unix_directory(option, description)


def plan_listeners(options: Mapping[str, Any], simple_description: str) -> list[Listener]:
    """The listeners that the options ask for; UsageError for contradictions.

    Without ``--listen``/``--listen-tls`` the server listens on
    ``simple_description`` (from ``--port``/``--interface``), with TLS when
    ``--tls-cert``/``--tls-key`` are given.  With them, those are the only
    endpoints: ``--port``/``--interface`` may not be given, and the TLS files
    serve the ``--listen-tls`` endpoints.
    """
    plain: list[str] = options["listen"]
    secure: list[str] = options["listen-tls"]
    has_tls_files = bool(options["tls-cert"])
    if has_tls_files != bool(options["tls-key"]):
        raise usage.UsageError("--tls-cert and --tls-key go together: give both or neither")
    if options["tls-min-version"] is not None and not has_tls_files:
        raise usage.UsageError("--tls-min-version needs --tls-cert and --tls-key")
    if options.get("tls-ciphers") is not None and not (
        has_tls_files or any(d.split(":", 1)[0] == "ssl" for d in plain)
    ):
        raise usage.UsageError(
            "--tls-ciphers needs a TLS listener: --tls-cert/--tls-key or an ssl: --listen"
        )
    if not plain and not secure:
        return [Listener(simple_description, tls=has_tls_files)]

    for name in ("port", "interface"):
        if options[name] is not None:
            raise usage.UsageError(
                f"--{name} cannot be combined with --listen or --listen-tls; "
                "give every endpoint as --listen (e.g. --listen tcp6:5000)"
            )
    if secure and not has_tls_files:
        raise usage.UsageError("--listen-tls needs --tls-cert and --tls-key")
    if has_tls_files and not secure:
        raise usage.UsageError(
            "--tls-cert/--tls-key serve --port or --listen-tls endpoints, and there is "
            "neither; add --listen-tls ENDPOINT (or use an ssl: endpoint with --listen)"
        )
    listeners = [Listener(d, tls=False) for d in plain] + [Listener(d, tls=True) for d in secure]
    for listener in listeners:
        option = "--listen-tls" if listener.tls else "--listen"
        if listener.tls and listener.description.split(":", 1)[0] == "ssl":
            raise usage.UsageError(
                f"--listen-tls {listener.description}: --listen-tls adds TLS itself; "
                "give a plain endpoint such as tcp:5443, or pass the ssl: one to --listen"
            )
        check_endpoint(option, listener.description)
    return listeners


def listening_service(
    listener: Listener,
    serving: IProtocolFactory,
    tls: ReloadableServerTLS | None,
    reactor: Any,
    ciphers: str = INTERMEDIATE_CIPHERS,
) -> StreamServerEndpointService:
    """A service serving ``serving`` on the listener's endpoint (wss with ``tls``).

    A failure to listen aborts start-up.  An ``ssl:`` endpoint gets the same
    ALPN answer and TLS 1.2 ``ciphers`` as ``tls`` has.
    """
    factory: Any = serving
    if listener.tls:
        assert tls is not None
        factory = TLSMemoryBIOFactory(tls, False, serving)
    service = strports.service(listener.description, factory, reactor=reactor)
    if listener.description.split(":", 1)[0] == "ssl":
        _apply_tls_policy(service, ciphers)
    return service


def _apply_tls_policy(service: StreamServerEndpointService, ciphers: str) -> None:
    """Give the context Twisted built for an ``ssl:`` endpoint our ALPN answer
    and cipher list.

    Twisted keeps that context in a private attribute of the endpoint (it
    builds one context per endpoint and reuses it for every connection).
    Without it, Twisted's own policy stays, and since Twisted 25 that fails
    every handshake in which the client offers ALPN (browsers, curl).
    """
    creator = getattr(service.endpoint, "_sslContextFactory", None)
    get_context = getattr(creator, "getContext", None)
    if get_context is None:
        _log.warn(
            "ssl: endpoint {endpoint}: cannot reach its TLS context in this Twisted, "
            "so it keeps Twisted's TLS policy, which may refuse browsers; "
            "use --listen-tls instead",
            endpoint=service.endpoint,
        )
        return
    context = get_context()
    context.set_alpn_select_callback(select_alpn)
    context.set_cipher_list(ciphers.encode("ascii"))
