"""Everything the server uses of Autobahn's and Twisted's internals, in one place.

The server does some of Autobahn's work itself, faster (:class:`FastPaths`),
and reaches into both libraries where they offer no public way: each such
reach is a small function here, named for what it does. No other module of
the package uses a private name of either library (``tests/test_compat.py``
holds them to that).

:func:`check` verifies, at start-up, that the installed releases still have
what these functions rely on and still behave as expected; what is missing
turns the fast path that needs it off, so that Autobahn's public path does
that work instead, and is named in one warning. ``setup.cfg`` bounds both
libraries to the releases CI has run; ``.ci/run`` also checks the newest
releases (beyond the bound) with :func:`check` and the tests that compare
the fast paths with Autobahn's.

A few public but undocumented attributes of Autobahn's protocol are read
where they are needed, on the per-message path of the read fast path, to
cost no call: ``state``, ``data`` (Autobahn's receive buffer),
``current_frame`` and ``inside_message`` (whether Autobahn is in the middle
of a frame or a message). :func:`check` verifies those too, and turns that
path off without them. Autobahn's own path needs none of them but
``current_frame``, for counting fragments (:func:`frame_opcode`).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar, cast

import autobahn.twisted.websocket as autobahn_twisted
import autobahn.websocket.protocol as autobahn_protocol
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import abstract, tcp, unix
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python import log as twisted_log
from twisted.python.failure import Failure

from signaling.logs import ServerLogger

_log = ServerLogger()
_Class = TypeVar("_Class", bound=type)


@dataclass(frozen=True)
class FastPaths:
    """Which of the server's own versions of Autobahn's work a factory uses;
    each one off leaves that work to Autobahn's public path.

    ``handshake``: plain opening handshakes are read in one pass
    (signaling.wire.handshake) instead of by Autobahn's ``processHandshake``.
    ``read``: whole data frames are read directly
    (``signaling.wire.framing.next_frame``) instead of by Autobahn's
    ``dataReceived`` and ``onMessage``.
    ``write``: messages are framed by ``text_frame`` and, on a plain TCP or
    Unix connection with nothing queued, written straight to its socket,
    instead of sent with Autobahn's ``sendMessage``.
    """

    handshake: bool = True
    read: bool = True
    write: bool = True

    def off(self) -> list[str]:
        """The names of the fast paths that are off."""
        return [f.name for f in fields(self) if not getattr(self, f.name)]


#: Every fast path on.
ALL_FAST_PATHS = FastPaths()
#: Every fast path off: Autobahn does all the WebSocket work.
NO_FAST_PATHS = FastPaths(handshake=False, read=False, write=False)


# -- Autobahn: settings --------------------------------------------------------

#: RFC 6455's close codes (7.4.1), should Autobahn stop listing them.
_RFC_CLOSE_CODES = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013)

#: Close codes a peer may send: Autobahn's list, and the range for
#: applications and libraries (RFC 6455 section 7.4.2).
CLOSE_CODES_ALLOWED = frozenset(
    getattr(WebSocketServerProtocol, "CLOSE_STATUS_CODES_ALLOWED", _RFC_CLOSE_CODES)
) | frozenset(range(3000, 5000))


def protocol_settings(factory: WebSocketServerFactory) -> dict[str, Any]:
    """The settings Autobahn copies from ``factory`` onto each connection
    as it connects (``CONFIG_ATTRS``), with their values; empty should
    Autobahn stop listing them (each connection then copies them itself)."""
    names = getattr(WebSocketServerProtocol, "CONFIG_ATTRS", ())
    return {name: getattr(factory, name) for name in names if hasattr(factory, name)}


# -- Autobahn: reading ---------------------------------------------------------


def frame_opcode(protocol: Any) -> int | None:
    """The opcode of the frame Autobahn is reading (from ``onFrameBegin``),
    or None should this Autobahn not say (fragments then go uncounted)."""
    return getattr(getattr(protocol, "current_frame", None), "opcode", None)


# -- Autobahn: the opening handshake -------------------------------------------


def origin_allowed(protocol: Any, origin: str, secure: bool, port: int | None) -> bool:
    """Whether Autobahn's ``processHandshake`` would accept a request with
    this ``Origin`` header; raises where it would fail the handshake."""
    origin_tuple = autobahn_protocol._url_to_origin(origin)
    return bool(
        (origin_tuple == "null" and protocol.allowNullOrigin)
        or autobahn_protocol._is_same_origin(
            origin_tuple, "https" if secure else "http", port, protocol.allowedOriginsPatterns
        )
    )


def parse_extensions(protocol: Any, header: str) -> list[tuple[str, dict[str, list[Any]]]]:
    """A ``Sec-WebSocket-Extensions`` header, parsed as Autobahn parses it."""
    return protocol._parseExtensionsHeader(header)  # type: ignore[no-any-return]


def accept_request(
    protocol: Any,
    *,
    request: bytes,
    rest: bytes,
    status_line: str,
    headers: dict[str, str],
    uri: str,
    path: str,
    params: dict[str, list[str]],
    host: str,
    origin: str | None,
    extensions: list[tuple[str, dict[str, list[Any]]]],
    key: str,
) -> None:
    """Record an opening request read without Autobahn as Autobahn's
    ``processHandshake`` records it: the request, what the connection knows
    of it, and ``rest``, the bytes that came after it (still to be read)."""
    protocol.http_request_data = request
    protocol.data = rest
    protocol.http_status_line = status_line
    protocol.http_headers = headers
    protocol.http_request_uri = uri
    protocol.http_request_path = path
    protocol.http_request_params = params
    protocol.http_request_host = host
    protocol.websocket_version = 13
    protocol.websocket_protocols = []
    protocol.websocket_origin = origin
    protocol.websocket_extensions = extensions
    protocol._wskey = key


def open_connection(protocol: Any, response: str) -> None:
    """What Autobahn's ``succeedHandshake`` does once it has sent
    ``response`` (no subprotocol, no extension): the connection is OPEN,
    ``onOpen`` runs, ``is_open`` fires, and bytes that came after the
    request are read."""
    protocol.websocket_protocol_in_use = None
    protocol.websocket_extensions_in_use = []
    protocol.http_response_data = response
    protocol.state = protocol.STATE_OPEN
    protocol.inside_message = False
    protocol.current_frame = None
    protocol._onOpen()
    protocol.is_open.callback(None)  # as Autobahn's txaio.resolve
    if protocol.data:
        protocol.consumeData()


def abandon(protocol: Any) -> bytes:
    """Let go of a connection whose transport another protocol takes over:
    Autobahn stops counting and reading it. Returns the bytes it had
    received and not read."""
    protocol.factory.countConnections -= 1
    data, protocol.data = protocol.data, b""
    protocol.state = protocol.STATE_CLOSED
    return data  # type: ignore[no-any-return]


def free_handshake_state(protocol: Any) -> None:
    """Drop what an open connection no longer needs: the texts of its
    handshake and the incremental UTF-8 validator (the server validates
    UTF-8 as it parses a message)."""
    protocol.http_request_data = b""
    protocol.http_response_data = ""
    protocol.utf8validator = None


# -- Autobahn: the end of a connection -----------------------------------------


def discard_input(protocol: Any) -> None:
    """Forget what Autobahn has received and not read yet."""
    protocol.data = b""


def mark_dropped(protocol: Any) -> None:
    """Record that the server itself is dropping the connection, as
    Autobahn's ``dropConnection`` does: Autobahn reads nothing more and
    reports the end as the server's doing."""
    protocol.droppedByMe = True
    protocol.state = protocol.STATE_CLOSED


def mark_unclean(
    protocol: Any, reason: str, *, open_timeout: bool = False, close_timeout: bool = False
) -> None:
    """Record why the connection does not end cleanly (what Autobahn reports
    in ``onClose``), and whether an opening or closing handshake timed out."""
    protocol.wasClean = False
    protocol.wasNotCleanReason = reason
    if open_timeout:
        protocol.wasOpenHandshakeTimeout = True
    if close_timeout:
        protocol.wasCloseHandshakeTimeout = True


def record_peer_close(protocol: Any, code: int | None, reason: str | None) -> None:
    """Record a valid close frame that the peer sent first: the connection
    will end cleanly, with the peer's code and reason."""
    protocol.remoteCloseCode = code
    protocol.remoteCloseReason = reason
    protocol.wasClean = True


def record_close_reply(protocol: Any, code: int | None) -> None:
    """Record the peer's answer to the server's close frame: the end is
    clean unless the server failed the connection."""
    protocol.wasClean = not protocol.failedByMe
    if code in CLOSE_CODES_ALLOWED:
        protocol.remoteCloseCode = code


def cancel_close_timer(protocol: Any) -> None:
    """Stop Autobahn's closing-handshake timer, if it runs. Autobahn leaves
    it running when the connection ends first, and it keeps the
    connection in memory until it fires."""
    timer = getattr(protocol, "closeHandshakeTimeoutCall", None)
    if timer is not None:
        protocol.closeHandshakeTimeoutCall = None
        active = getattr(timer, "active", None)  # txaio's batched timers have cancel() alone
        if active is None or active():
            timer.cancel()


def close_timer_fired(protocol: Any) -> None:
    """Forget Autobahn's closing-handshake timer, which just fired."""
    protocol.closeHandshakeTimeoutCall = None


def connection_lost_unopened(protocol: Any, reason: Failure) -> None:
    """Autobahn's bookkeeping for a connection that ends before it opened,
    without its Twisted adapter's log lines (which report a failed TLS
    handshake, routine from scanners, as an error)."""
    lost = getattr(protocol, "_connectionLost", None)
    if lost is None:
        WebSocketServerProtocol.connectionLost(protocol, reason)
    else:
        lost(reason)


def resolve_closed(protocol: Any) -> None:
    """Fire ``is_closed`` with the protocol, as Autobahn does as it drops a
    connection."""
    protocol.is_closed.callback(protocol)  # as Autobahn's txaio.resolve


def release_closed(protocol: Any) -> None:
    """Replace the fired ``is_closed`` of a closed connection: Autobahn fires
    it with the protocol itself, a reference cycle that only a full garbage
    collection would free (rare, see signaling.wire.tuning)."""
    protocol.is_closed = succeed(None)


# -- Autobahn: module globals --------------------------------------------------


def _unformatted(value: Any) -> Any:
    return value


#: Autobahn's formatting helpers, called for debug lines whether or not
#: debug logging is on.
_DEBUG_FORMATTERS = (
    (autobahn_protocol, "pformat"),
    (autobahn_protocol, "hltype"),
    (autobahn_protocol, "hlval"),
    (autobahn_twisted, "hltype"),
    (autobahn_twisted, "hlval"),
)


def skip_debug_formatting() -> bool:
    """Stop Autobahn formatting debug lines that are not logged; returns
    whether it could (False: this Autobahn lacks some of them).

    ``WebSocketProtocol._connectionMade`` passes ``pformat(...)`` of about
    forty settings to a debug log call, so the formatting runs even when
    debug logging is off; it was a third of the server's cost per
    connection. The debug line, if enabled, shows the unformatted list.
    (The module's only other use of pformat is timing reports, which the
    server never turns on.) ``hltype`` and ``hlval``, which colour names
    and values for debug lines, get the same treatment: each connection
    called them a dozen times for lines nobody saw.

    This replaces globals of Autobahn's modules for the whole process:
    ``makeService`` calls it, never an import.
    """
    present = [(m, name) for m, name in _DEBUG_FORMATTERS if callable(getattr(m, name, None))]
    for module, name in present:
        setattr(module, name, _unformatted)
    return len(present) == len(_DEBUG_FORMATTERS)


# -- Twisted: plain stream transports ------------------------------------------


def _plain_stream_types() -> tuple[type, ...]:
    return tuple(
        server for server in (getattr(tcp, "Server", None), getattr(unix, "Server", None)) if server
    )


def direct_socket(transport: Any) -> socket.socket | None:
    """The socket of a plain TCP or Unix server connection (not TLS), which
    :func:`write_frame` may send to itself; None for any other."""
    if type(transport) in _plain_stream_types() and not getattr(transport, "TLS", False):
        return transport.socket  # type: ignore[no-any-return]
    return None


def queued_bytes(transport: Any) -> int:
    """The bytes a plain TCP or Unix transport (see :func:`direct_socket`)
    holds that its socket has not taken yet."""
    return transport._tempDataLen + len(transport.dataBuffer) - transport.offset  # type: ignore[no-any-return]


def write_frame(protocol: Any, frame: bytes) -> None:
    """Write ``frame`` to ``protocol.transport``; a method of the protocol
    (``SignalingProtocol._write``), for no call more per message.

    When the protocol's ``_direct_socket`` is set (from :func:`direct_socket`),
    its factory's ``write_through`` is true and the transport has nothing
    queued, the frame goes to the socket at once, rather than the transport
    registering for writability and sending in the next reactor turn (two
    epoll_ctl calls and a loop pass per message when traffic is not bursty).
    """
    transport = protocol.transport
    sock = protocol._direct_socket
    if (
        sock is not None
        and protocol.factory.write_through
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
    ):
        try:
            sent = sock.send(frame)
        except OSError:
            sent = 0  # the transport's own write sees to errors
        if sent == len(frame):
            return
        frame = frame[sent:]
    transport.write(frame)


# -- Twisted: listening sockets shared between processes -----------------------


def share_listening_port(port: Any) -> None:
    """Make closing ``port`` (a TCP or unix port listening on a socket that
    other processes accept on too) close this process's descriptor only.

    Twisted calls ``shutdown()`` on a listening socket it made before
    closing it; on a shared socket that would stop every process accepting
    on it (it leaves sockets it adopted alone, through the same attribute).
    """
    port._shouldShutdown = False


class _SharedUNIXPort(unix.Port):
    """A unix port on a listening socket that another process made and
    keeps (``sock``, which the port takes over).

    Unlike ``reactor.adoptStreamPort``, it does not chmod the socket's file
    to 0666 (it may not own it, and the mode is the maker's choice), does
    not call ``listen()`` again (which would reset the backlog to 50) and,
    when closed, neither removes the file nor shuts the socket down.
    """

    _shouldShutdown = False

    def __init__(self, sock: socket.socket, factory: Any, reactor: Any) -> None:
        super().__init__(sock.getsockname(), factory, reactor=reactor)
        self.shared_socket = sock

    def startListening(self) -> None:
        tcp._reservedFD.reserve()  # as every Twisted port does, for EMFILE
        sock = self.shared_socket
        sock.setblocking(False)
        twisted_log.msg(f"{type(self.factory).__name__} starting on {sock.getsockname()!r}")
        cast(Any, self.factory).doStart()
        self.connected = True
        self.socket = sock
        cast(Any, self).fileno = sock.fileno  # as Twisted's ports do
        self.numberAccepts = 100
        self.startReading()

    def connectionLost(self, reason: Failure) -> None:
        # tcp.Port's: unix.Port's would remove the socket's file.
        tcp.Port.connectionLost(self, reason)


def adopt_unix_socket(reactor: Any, sock: socket.socket, factory: Any) -> Any:
    """Accept connections for ``factory`` on ``sock``, a listening unix
    socket made by another process, leaving the socket and its file as they
    are (see :class:`_SharedUNIXPort`); returns the listening port."""
    port = _SharedUNIXPort(sock, factory, reactor)
    port.startListening()
    return port


# -- Twisted: elsewhere --------------------------------------------------------


def ssl_context_factory(endpoint: Any) -> Any | None:
    """The context factory of Twisted's ``ssl:`` server endpoint, which
    builds one context for the endpoint and reuses it for every connection
    (None if it has none where Twisted keeps it)."""
    return getattr(endpoint, "_sslContextFactory", None)


def port_logger(port: Any) -> Logger | None:
    """The logger a listening port reports accept errors to, if Twisted's."""
    logger = getattr(port, "_logger", None)
    return logger if isinstance(logger, Logger) else None


def set_port_logger(port: Any, logger: Logger) -> None:
    """Make ``port`` alone log through ``logger`` (Twisted's TCP port logs
    through a class attribute; an instance attribute replaces it)."""
    port._logger = logger


def http_channel(protocol: Any) -> Any:
    """The HTTP channel in what twisted.web's ``Site.buildProtocol`` returns
    (a wrapper that becomes HTTP/1.1 or HTTP/2), or the protocol itself if
    it is not wrapped."""
    return getattr(protocol, "_channel", protocol)


def conch_logger(logger: Logger) -> Callable[[_Class], _Class]:
    """Class decorator: a twisted.conch class logs through ``logger`` (they
    log through a private class attribute, ``_log``, since Twisted 16)."""

    def apply(cls: _Class) -> _Class:
        cast(Any, cls)._log = logger
        return cls

    return apply


def conch_classes_without_logger(classes: Iterable[type]) -> list[str]:
    """The names of those twisted.conch ``classes`` that no longer log
    through a ``_log`` Logger (:func:`conch_logger` cannot quiet them)."""
    return [
        cls.__qualname__ for cls in classes if not isinstance(getattr(cls, "_log", None), Logger)
    ]


# -- the start-up check --------------------------------------------------------

_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
_ORIGIN = "http://app.example"
_REQUEST = (
    "GET /connect?x=1 HTTP/1.1\r\nHost: probe.example\r\nUpgrade: websocket\r\n"
    f"Connection: Upgrade\r\nSec-WebSocket-Key: {_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
).encode()
#: The same, from a browser (what only the handshake fast path relies on).
_BROWSER_REQUEST = (
    _REQUEST[:-2]
    + (
        f"Origin: {_ORIGIN}\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"
        "\r\n\r\n"
    ).encode()
)
#: What a connection knows of its opening request (signaling.wire.protocol
#: records them through accept_request and open_connection).
_HANDSHAKE_STATE = (
    "http_request_data",
    "http_status_line",
    "http_headers",
    "http_request_uri",
    "http_request_path",
    "http_request_params",
    "http_request_host",
    "http_response_data",
    "websocket_version",
    "websocket_protocols",
    "websocket_origin",
    "websocket_extensions",
    "websocket_protocol_in_use",
    "websocket_extensions_in_use",
    "_wskey",
)
#: What the end of a connection is recorded in.
_CLOSE_STATE = (
    "closeHandshakeTimeoutCall",
    "droppedByMe",
    "failedByMe",
    "wasClean",
    "wasNotCleanReason",
    "wasOpenHandshakeTimeout",
    "wasCloseHandshakeTimeout",
    "remoteCloseCode",
    "remoteCloseReason",
    "utf8validator",
)


def _masked(payload: bytes, first: int = 0x81) -> bytes:
    """A client frame (masked with zeros) of fewer than 126 bytes."""
    return bytes((first, 0x80 | len(payload))) + b"\0\0\0\0" + payload


class _Probe:
    """Connections to Autobahn's own server protocol over string transports
    (no socket, no reactor), opened by Autobahn's handshake."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, bool]] = []

    def connection(self, **options: Any) -> Any:
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        factory = WebSocketServerFactory()
        factory.protocol = WebSocketServerProtocol
        # No timer: the probe needs no reactor, and runs before it does.
        factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, **options)
        protocol: Any = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        protocol.makeConnection(StringTransport())
        protocol.onMessage = lambda payload, is_binary: self.received.append((payload, is_binary))
        return protocol

    def opened(self, request: bytes = _REQUEST, **options: Any) -> Any:
        protocol = self.connection(**options)
        protocol.dataReceived(request)
        if protocol.state != protocol.STATE_OPEN:
            raise AssertionError("Autobahn did not open the probe connection")
        return protocol


def _callables(owner: Any, names: Iterable[str]) -> list[str]:
    label = getattr(owner, "__qualname__", None) or owner.__name__
    return [f"{label}.{name}" for name in names if not callable(getattr(owner, name, None))]


def _attributes(owner: Any, names: Iterable[str], label: str) -> list[str]:
    return [f"{label}.{name}" for name in names if not hasattr(owner, name)]


def _missing_for_handshake() -> list[str]:
    missing = _callables(autobahn_protocol, ("_url_to_origin", "_is_same_origin"))
    missing += _callables(WebSocketServerProtocol, ("_parseExtensionsHeader", "_onOpen"))
    if missing:
        return missing
    probe = _Probe()
    protocol = probe.opened(
        _BROWSER_REQUEST, allowedOrigins=[_ORIGIN + ":80"], allowNullOrigin=True
    )
    missing += _attributes(protocol, _HANDSHAKE_STATE, "an opened connection")
    missing += _attributes(protocol, ("allowedOriginsPatterns",), "a connection")
    if not isinstance(protocol.is_open, Deferred) or not protocol.is_open.called:
        missing.append("is_open fired by an opening handshake")
    if missing:
        return missing
    if not (
        origin_allowed(protocol, _ORIGIN, False, 80)
        and origin_allowed(protocol, "null", False, 80)
        and not origin_allowed(protocol, "http://other.example", False, 80)
    ):
        missing.append("_is_same_origin and _url_to_origin as they were")
    if parse_extensions(protocol, "permessage-deflate; client_max_window_bits") != [
        ("permessage-deflate", {"client_max_window_bits": [True]})
    ]:
        missing.append("_parseExtensionsHeader as it was")
    return missing


def _missing_for_read() -> list[str]:
    probe = _Probe()
    protocol = probe.opened()
    names = ("state", "data", "current_frame", "inside_message")
    missing = _attributes(protocol, names, "an opened connection")
    if missing:
        return missing
    if (protocol.data, protocol.current_frame, protocol.inside_message) != (b"", None, False):
        return ["data, current_frame and inside_message of an idle connection"]
    frame = _masked(b"ping")
    protocol.dataReceived(frame[:1])
    if protocol.data != frame[:1]:
        missing.append("data holding a partial frame header")
    protocol.dataReceived(frame[1:7])
    if getattr(protocol.current_frame, "opcode", None) != 1:
        missing.append("current_frame (with opcode) while a frame is read")
    protocol.dataReceived(frame[7:] + _masked(b"ab", first=0x01))
    if not protocol.inside_message or protocol.current_frame is not None:
        missing.append("inside_message between the frames of a message")
    protocol.dataReceived(_masked(b"cd", first=0x80))
    if protocol.inside_message or probe.received != [(b"ping", False), (b"abcd", False)]:
        missing.append("messages read whole by dataReceived and onMessage")
    return missing


class _NoReactor:
    """Enough of a reactor for a transport that is never run."""

    def addReader(self, reader: Any) -> None:
        pass

    def removeReader(self, reader: Any) -> None:
        pass

    def addWriter(self, writer: Any) -> None:
        pass

    def removeWriter(self, writer: Any) -> None:
        pass


def _missing_for_write() -> list[str]:
    from twisted.internet.protocol import Protocol

    missing = [
        f"{module.__name__}.Server (a FileDescriptor)"
        for module in (tcp, unix)
        if not (
            isinstance(getattr(module, "Server", None), type)
            and issubclass(module.Server, abstract.FileDescriptor)
        )
    ]
    if missing:
        return missing
    ours, theirs = socket.socketpair()
    try:
        server = tcp.Server(
            ours, Protocol(), ("127.0.0.1", 1), cast(Any, None), 0, cast(Any, _NoReactor())
        )
        if direct_socket(server) is not ours:
            return ["tcp.Server.socket"]
        missing = _attributes(server, ("_tempDataLen", "dataBuffer", "offset"), "tcp.Server")
        if missing:
            return missing
        idle = queued_bytes(server)
        server.write(b"abc")
        queued = queued_bytes(server)
        server.doWrite()
        if (idle, queued, queued_bytes(server), theirs.recv(16)) != (0, 3, 0, b"abc"):
            missing.append("tcp.Server's _tempDataLen, dataBuffer and offset as they were")
    finally:
        ours.close()
        theirs.close()
    return missing


def _missing_for_debug_formatting() -> list[str]:
    return [f"{m.__name__}.{name}" for m, name in _DEBUG_FORMATTERS if not hasattr(m, name)]


def _missing_for_bookkeeping() -> list[str]:
    missing = _attributes(
        WebSocketServerProtocol,
        ("CONFIG_ATTRS", "CLOSE_STATUS_CODES_ALLOWED", "_connectionLost"),
        "WebSocketServerProtocol",
    )
    factory = WebSocketServerFactory()
    missing += [
        f"WebSocketServerFactory.{name}"
        for name in getattr(WebSocketServerProtocol, "CONFIG_ATTRS", ())
        if not hasattr(factory, name)
    ]
    protocol = _Probe().opened()
    missing += _attributes(protocol, _CLOSE_STATE, "an opened connection")
    if getattr(protocol.factory, "countConnections", None) != 1:
        missing.append("WebSocketServerFactory.countConnections")
    closed = protocol.is_closed
    if not isinstance(closed, Deferred) or closed.called:
        missing.append("is_closed (a Deferred) of an open connection")
    from twisted.internet.error import ConnectionDone

    protocol.connectionLost(Failure(ConnectionDone()))
    if not getattr(closed, "called", False) or protocol.factory.countConnections != 0:
        missing.append("is_closed and countConnections as a connection ends")
    return missing


def _missing_for_tls_endpoint() -> list[str]:
    from twisted.internet.endpoints import SSL4ServerEndpoint

    marker = object()
    endpoint = SSL4ServerEndpoint(None, 0, marker)
    if ssl_context_factory(endpoint) is marker:
        return []
    return ["SSL4ServerEndpoint._sslContextFactory"]


def missing_for_shared_sockets() -> list[str]:
    """What :func:`share_listening_port` and :func:`adopt_unix_socket` lack
    in this Twisted (``--workers`` above 1 needs them)."""
    missing = []
    if not isinstance(getattr(tcp.Port, "_shouldShutdown", None), bool):
        missing.append("tcp.Port._shouldShutdown")
    if not callable(getattr(getattr(tcp, "_reservedFD", None), "reserve", None)):
        missing.append("tcp._reservedFD.reserve")
    if missing:
        return missing
    from twisted.internet.protocol import Factory

    # A unix socket in the abstract namespace: no file, no network. The
    # port closes its descriptor as connectionLost would (which also logs).
    listening = socket.socket(socket.AF_UNIX)
    other = None
    try:
        listening.bind(b"")  # the kernel picks an abstract name
        listening.listen(1)
        address = listening.getsockname()
        other = listening.dup()  # another process's descriptor of the socket
        port = _SharedUNIXPort(listening, Factory(), _NoReactor())
        port.socket = listening
        if port.getHost().name != address:
            missing.append("unix.Port.getHost")
        port._closeSocket(True)
        with socket.socket(socket.AF_UNIX) as client:
            try:
                client.connect(address)
            except OSError:
                missing.append("tcp.Port._closeSocket without shutdown()")
    finally:
        listening.close()
        if other is not None:
            other.close()
    return missing


def _missing_for_accept_log() -> list[str]:
    return [] if isinstance(getattr(tcp.Port, "_logger", None), Logger) else ["tcp.Port._logger"]


def _missing_for_http_channel() -> list[str]:
    from twisted.web.http import HTTPChannel
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    channel = http_channel(Site(Resource()).buildProtocol(None))
    return [] if isinstance(channel, HTTPChannel) else ["the _channel of Site.buildProtocol()"]


def _missing_for_admin_console() -> list[str]:
    from twisted.conch.ssh import channel, connection, factory, transport, userauth

    classes = (
        transport.SSHServerTransport,
        userauth.SSHUserAuthServer,
        connection.SSHConnection,
        channel.SSHChannel,
        factory.SSHFactory,
    )
    return [f"{name}._log" for name in conch_classes_without_logger(classes)]


#: What each use needs, and what becomes of it without.
_CHECKS: dict[str, tuple[Callable[[], list[str]], str]] = {
    "handshake": (_missing_for_handshake, "Autobahn's processHandshake reads every handshake"),
    "read": (_missing_for_read, "Autobahn's dataReceived and onMessage read every frame"),
    "write": (_missing_for_write, "Autobahn's sendMessage sends every message"),
    "debug formatting": (
        _missing_for_debug_formatting,
        "Autobahn formats debug lines nobody sees, for every connection",
    ),
    "connection bookkeeping": (
        _missing_for_bookkeeping,
        "how connections end may be reported or freed differently",
    ),
    "ssl: endpoints": (_missing_for_tls_endpoint, "they keep Twisted's TLS policy"),
    "accept errors": (_missing_for_accept_log, "each one is logged"),
    "HTTP deadline": (_missing_for_http_channel, "plain HTTP connections have no deadline"),
    "shared sockets": (missing_for_shared_sockets, "--workers above 1 is refused"),
    "admin console log": (_missing_for_admin_console, "twisted.conch logs at its own levels"),
}


def problems() -> dict[str, list[str]]:
    """What the installed Autobahn and Twisted lack of what this module uses,
    by use (only the uses that lack something)."""
    found: dict[str, list[str]] = {}
    for use, (probe, _) in _CHECKS.items():
        try:
            missing = probe()
        except Exception as e:  # a probe that breaks is a change too
            missing = [f"what its probe needs ({e!r})"]
        if missing:
            found[use] = missing
    return found


def _versions() -> str:
    found = []
    for name in ("autobahn", "twisted"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (version unknown)")
    return " and ".join(found)


def check(log: Logger | None = None) -> FastPaths:
    """Verify that the installed Autobahn and Twisted have what this module
    uses; return the fast paths they allow. If anything is missing, one
    warning names it, and what becomes of each use without it (a fast
    path without: Autobahn's public path does its work).

    Its probes use string transports and a local socket pair: no reactor,
    no network.
    """
    found = problems()
    paths = FastPaths(**{f.name: f.name not in found for f in fields(FastPaths)})
    if found:
        off = paths.off()
        lacks = "; ".join(
            f"{use} fast path: {', '.join(missing)}"
            if use in off
            else f"{use}: {', '.join(missing)} (so {_CHECKS[use][1]})"
            for use, missing in found.items()
        )
        instead = "; ".join(_CHECKS[use][1] for use in off)
        (log or _log).warn(
            "{versions} lack what the server uses: {lacks}.{off}",
            versions=_versions(),
            lacks=lacks,
            off=f" Fast path(s) off: {', '.join(off)}; Autobahn's public path is used "
            f"instead ({instead})."
            if off
            else "",
        )
    return paths
