"""Where the server listens: ``--port``/``--interface``, or ``--listen``/``--listen-tls``."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from signaling.logs import ServerLogger
from signaling.wire import compat
from signaling.wire.admission import Admission, AdmittingFactory, quiet_accept_errors
from signaling.wire.tls import INTERMEDIATE_CIPHERS, ReloadableServerTLS, select_alpn

_log = ServerLogger()


@dataclass(frozen=True)
class Listener:
    """One Twisted endpoint description, and whether to add TLS on top of it."""

    description: str
    tls: bool
    #: The option that asked for it (named in messages about it).
    option: str = field(default="--port", compare=False)

    @property
    def secure(self) -> bool:
        """Whether clients reach it over TLS (``--listen-tls``, or an ``ssl:`` endpoint)."""
        return self.tls or self.description.split(":", 1)[0] == "ssl"


def endpoint_arguments(description: str) -> tuple[str, list[str], dict[str, str]]:
    """The kind, positional and keyword arguments of an endpoint description,
    split at unescaped colons with the backslash escapes (``\\:``) resolved,
    as Twisted splits them."""
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
    kind, *args = fields
    positional = [arg for arg in args if "=" not in arg]
    keywords = dict(arg.split("=", 1) for arg in args if "=" in arg)
    return kind, positional, keywords


def unix_socket_path(description: str) -> str | None:
    """The file a ``unix:`` endpoint description listens on (None for
    other endpoints)."""
    kind, positional, keywords = endpoint_arguments(description)
    if kind != "unix":
        return None
    return keywords.get("address", positional[0] if positional else None)


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


def plan_listeners(
    options: Mapping[str, Any], simple_description: str, *, check: bool = True
) -> list[Listener]:
    """The listeners that the options ask for; UsageError for contradictions
    and (with ``check``) for endpoints that cannot be built.

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
    listeners = [Listener(d, tls=False, option="--listen") for d in plain] + [
        Listener(d, tls=True, option="--listen-tls") for d in secure
    ]
    for listener in listeners:
        if listener.tls and listener.description.split(":", 1)[0] == "ssl":
            raise usage.UsageError(
                f"--listen-tls {listener.description}: --listen-tls adds TLS itself; "
                "give a plain endpoint such as tcp:5443, or pass the ssl: one to --listen"
            )
        if check:
            check_endpoint(listener.option, listener.description)
    return listeners


class ListenError(Exception):
    """An endpoint could not listen; the message says which, why and what to do."""


#: Hints for the usual reasons a port cannot be had.
_HINTS = {
    errno.EADDRINUSE: "is another server running there?",
    errno.EACCES: "ports below 1024 need root or CAP_NET_BIND_SERVICE",
    errno.EADDRNOTAVAIL: "it is not an address of this machine",
}


def listen_failure_message(option: str, description: str, error: CannotListenError) -> str:
    """One line: where listening failed, why, and which option chooses another place."""
    where = error.port
    if isinstance(where, bytes):
        where = os.fsdecode(where)
    if error.interface is None and isinstance(where, str):
        place = f"unix socket {where}"
    else:
        place = f"{error.interface or 'every address'} port {where}"
    cause = error.socketError
    if isinstance(cause, OSError):
        why = cause.strerror or str(cause)
        hint = _HINTS.get(cause.errno or 0)
        if hint:
            why += f" ({hint})"
    elif cause == "Cannot acquire lock":
        why = "its lock file is held (is another server running there?)"
    else:
        why = str(cause)
    if option == "--port":
        return (
            f"cannot listen on {place}: {why}; "
            "choose another with --port and --interface, or endpoints with --listen"
        )
    return (
        f"{option} {description}: cannot listen on {place}: {why}; give {option} another endpoint"
    )


def _is_local(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return address.is_unspecified or address.is_loopback


def address_url(address: IAddress, scheme: str, path: str, *, browser: bool = False) -> str:
    """``scheme://host:port/path`` on a TCP listener bound to ``address``;
    ``scheme://localhost/path over the unix socket FILE`` on a unix one.

    With ``browser``, an address on every interface or on loopback is shown
    as ``localhost``: browsers give the camera to plain-HTTP pages there only.
    """
    if isinstance(address, (IPv4Address, IPv6Address)):
        host = address.host
        if browser and _is_local(host):
            host = "localhost"
        elif ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{address.port}{path}"
    if isinstance(address, UNIXAddress) and address.name is not None:
        return f"{scheme}://localhost{path} over the unix socket {os.fsdecode(address.name)}"
    return f"{scheme}://localhost{path} over {address}"


def where_clients_connect(address: IAddress, secure: bool, demo: bool) -> str:
    """The log line saying where clients connect on a listener bound to ``address``."""
    ws, http = ("wss", "https") if secure else ("ws", "http")
    line = f"clients connect to {address_url(address, ws, '/connect')}"
    if demo and isinstance(address, (IPv4Address, IPv6Address)):
        line += f"; demo page at {address_url(address, http, '/', browser=True)}"
    elif demo:
        line += "; demo page at /"
    return line


def _end_without_traceback(error: BaseException) -> None:
    """Let ``error`` end the process without Python printing its traceback.

    twistd removes its pid file and re-raises a start-up error; the error
    itself has been logged as one line already, so the traceback would only
    bury it.
    """
    previous = sys.excepthook

    def hook(
        kind: type[BaseException], value: BaseException, traceback: TracebackType | None
    ) -> None:
        if value is not error:
            previous(kind, value, traceback)

    sys.excepthook = hook


@implementer(IStreamServerEndpoint)
class _ReportingEndpoint:
    """An endpoint that tells its service how listening went."""

    def __init__(self, endpoint: IStreamServerEndpoint, service: ListeningService) -> None:
        self.endpoint = endpoint
        self.service = service

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        listening: Deferred[Any] = self.endpoint.listen(protocolFactory)
        return listening.addCallbacks(self.service.listening, self.service.not_listening)


class ListeningService(StreamServerEndpointService):
    """Serves a factory on one endpoint description (as ``strports.service``).

    Once listening it logs ``describe(address)``. A failure to listen
    aborts start-up: it is logged as one line naming ``option`` (the option
    that chooses another place) and raised as :class:`ListenError`, which
    ends twistd without a traceback.
    """

    def __init__(
        self,
        option: str,
        description: str,
        factory: IProtocolFactory,
        reactor: Any,
        describe: Callable[[IAddress], str],
        *,
        endpoint: IStreamServerEndpoint | None = None,
        on_listening: Callable[[IListeningPort], object] | None = None,
    ) -> None:
        if endpoint is None:
            endpoint = _systemd_unix_socket_as_made(reactor, serverFromString(reactor, description))
        super().__init__(_ReportingEndpoint(endpoint, self), factory)
        self.option = option
        self.description = description
        self.describe = describe
        self.on_listening = on_listening
        self._error: ListenError | None = None

    def listening(self, port: IListeningPort) -> IListeningPort:
        _log.info("{listening}", listening=self.describe(port.getHost()))
        if self.on_listening is not None:
            self.on_listening(port)
        return port

    def not_listening(self, failure: Failure) -> Failure | None:
        if failure.check(CancelledError):
            return failure  # stopped before it listened
        if isinstance(failure.value, CannotListenError):
            message = listen_failure_message(self.option, self.description, failure.value)
        else:
            message = f"{self.option} {self.description}: cannot listen: {failure.value}"
        _log.error("{problem}", problem=message)
        self._error = ListenError(message)
        return None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        error, self._error = self._error, None
        if error is not None:
            _end_without_traceback(error)
            raise error


def listening_service(
    listener: Listener,
    serving: IProtocolFactory,
    tls: ReloadableServerTLS | None,
    reactor: Any,
    admission: Admission | None = None,
    *,
    demo: bool = True,
    ciphers: str = INTERMEDIATE_CIPHERS,
    shared_fd: int | None = None,
) -> ListeningService:
    """A service serving ``serving`` on the listener's endpoint (wss with ``tls``).

    A failure to listen aborts start-up; once listening it logs the URL
    clients connect to (and the demo page's, with ``demo``).  An ``ssl:``
    endpoint gets the same ALPN answer and TLS 1.2 ``ciphers`` as ``tls`` has.
    With ``admission``, it decides which accepted connections stay, and the
    port's accept errors are counted and seldom logged.  With ``shared_fd``
    it binds nothing: it accepts on that inherited listening socket (a
    worker's, from ``--workers``), which the endpoint made elsewhere.
    """
    factory: Any = serving
    if listener.tls:
        assert tls is not None
        factory = TLSMemoryBIOFactory(tls, False, serving)
    if admission is not None:
        factory = AdmittingFactory(factory, admission)
    secure = listener.secure
    ssl_endpoint = None
    if listener.description.split(":", 1)[0] == "ssl":
        ssl_endpoint = serverFromString(reactor, listener.description)
        _apply_tls_policy(ssl_endpoint, ciphers)
    endpoint = ssl_endpoint
    if shared_fd is not None:
        context = None
        if ssl_endpoint is not None:
            context = compat.ssl_context_factory(ssl_endpoint)
            if context is None:  # Options refuses --workers then
                raise ListenError(
                    f"{listener.option} {listener.description}: this Twisted keeps the TLS "
                    "context of ssl: endpoints out of reach, so a worker cannot serve it"
                )
        endpoint = SharedSocketEndpoint(reactor, shared_fd, context)
    service = ListeningService(
        listener.option,
        listener.description,
        factory,
        reactor,
        lambda address: where_clients_connect(address, secure, demo),
        endpoint=endpoint,
    )
    reporting = service.endpoint  # the endpoint, wrapped to report on listening
    if admission is not None:

        def count_accept_error() -> None:
            admission.shed["accept_error"] += 1

        reporting.endpoint = _OnListening(
            reporting.endpoint, lambda port: quiet_accept_errors(port, reactor, count_accept_error)
        )
    return service


def _apply_tls_policy(endpoint: IStreamServerEndpoint, ciphers: str) -> None:
    """Give the context Twisted built for an ``ssl:`` endpoint our ALPN answer
    and cipher list.

    Twisted keeps that context in a private attribute of the endpoint (it
    builds one context per endpoint and reuses it for every connection).
    Without it, Twisted's own policy stays, and since Twisted 25 that fails
    every handshake in which the client offers ALPN (browsers, curl).
    """
    creator = compat.ssl_context_factory(endpoint)
    get_context = getattr(creator, "getContext", None)
    if get_context is None:
        _log.warn(
            "ssl: endpoint {endpoint}: cannot reach its TLS context in this Twisted, "
            "so it keeps Twisted's TLS policy, which may refuse browsers; "
            "use --listen-tls instead",
            endpoint=endpoint,
        )
        return
    context = get_context()
    context.set_alpn_select_callback(select_alpn)
    context.set_cipher_list(ciphers.encode("ascii"))


@implementer(IStreamServerEndpoint)
class _OnListening:
    """An endpoint that passes the port it listens on through ``prepare``."""

    def __init__(self, endpoint: IStreamServerEndpoint, prepare: Callable[[Any], Any]) -> None:
        self.endpoint = endpoint
        self.prepare = prepare

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self.endpoint.listen(protocolFactory).addCallback(self.prepare)


def _systemd_unix_socket_as_made(
    reactor: Any, endpoint: IStreamServerEndpoint
) -> IStreamServerEndpoint:
    """A unix socket from systemd (``systemd:domain=UNIX``) served as its
    socket unit made it: Twisted would adopt it as one of its own, chmod its
    file to 0666 (over ``SocketMode=``), listen again with a backlog of 50
    (over ``Backlog=``) and remove the file on stop, leaving the unit's
    socket unreachable for the next start."""
    if isinstance(endpoint, AdoptedStreamServerEndpoint) and (
        endpoint.addressFamily == socket.AF_UNIX
    ):
        return SharedSocketEndpoint(reactor, endpoint.fileno)
    return endpoint


@implementer(IStreamServerEndpoint)
class SharedSocketEndpoint:
    """Accepts on a listening socket this process inherited as descriptor
    ``fd``, which another process (the ``--workers`` supervisor) made and
    keeps: nothing is bound, and closing it leaves the socket listening for
    the others (and a unix socket's file and mode as they are). With
    ``context`` (a TLS context factory), connections speak TLS first, as on
    an ``ssl:`` endpoint. It takes over ``fd``.
    """

    def __init__(self, reactor: Any, fd: int, context: Any = None) -> None:
        self.reactor = reactor
        self.fd = fd
        self.context = context

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        factory: Any = protocolFactory
        if self.context is not None:
            factory = TLSMemoryBIOFactory(self.context, False, factory)
        try:
            sock = socket.socket(fileno=self.fd)
        except OSError as e:
            return fail(ListenError(f"inherited descriptor {self.fd}: {e}"))
        try:
            if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_ACCEPTCONN
            ):
                raise ListenError(
                    f"inherited descriptor {self.fd} is not a listening stream socket"
                )
            if sock.family == socket.AF_UNIX:
                return succeed(compat.adopt_unix_socket(self.reactor, sock, factory))
            port = self.reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
            sock.close()  # the port has its own descriptor of it
            return succeed(port)
        except BaseException:
            sock.close()
            return fail()
