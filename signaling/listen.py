"""Where the server listens: ``--port``/``--interface``, or ``--listen``/``--listen-tls``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from zope.interface import implementer

from .admission import Admission, AdmittingFactory, quiet_accept_errors
from .tls import ReloadableServerTLS


@dataclass(frozen=True)
class Listener:
    """One Twisted endpoint description, and whether to add TLS on top of it."""

    description: str
    tls: bool


def check_endpoint(option: str, description: str) -> None:
    """Raise UsageError unless ``description`` is a server endpoint Twisted can build."""
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
    admission: Admission | None = None,
) -> StreamServerEndpointService:
    """A service serving ``serving`` on the listener's endpoint (wss with ``tls``).

    With ``admission``, it decides which accepted connections stay, and
    the port's accept errors are counted and seldom logged.
    A failure to listen aborts start-up.
    """
    factory: Any = serving
    if listener.tls:
        assert tls is not None
        factory = TLSMemoryBIOFactory(tls, False, serving)
    if admission is None:
        return strports.service(listener.description, factory, reactor=reactor)
    service = strports.service(
        listener.description, AdmittingFactory(factory, admission), reactor=reactor
    )

    def count_accept_error() -> None:
        admission.shed["accept_error"] += 1

    service.endpoint = _OnListening(
        service.endpoint, lambda port: quiet_accept_errors(port, reactor, count_accept_error)
    )
    return service


@implementer(IStreamServerEndpoint)
class _OnListening:
    """An endpoint that passes the port it listens on through ``prepare``."""

    def __init__(self, endpoint: IStreamServerEndpoint, prepare: Callable[[Any], Any]) -> None:
        self.endpoint = endpoint
        self.prepare = prepare

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self.endpoint.listen(protocolFactory).addCallback(self.prepare)
