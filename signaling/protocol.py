"""The WebSocket side: one :class:`SignalingProtocol` per connected client."""

from __future__ import annotations

import base64
import hashlib
import re
import socket
from collections import Counter
from time import perf_counter
from typing import Any, Protocol, cast
from urllib.parse import parse_qs, unquote_to_bytes

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PERMESSAGE_COMPRESSION_EXTENSION
from autobahn.websocket.protocol import _is_same_origin, _url_to_origin
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from OpenSSL import SSL
from twisted.internet import tcp, unix
from twisted.internet.defer import succeed
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from . import messages
from .addresses import forwarded_address, socket_address
from .admission import RETRY_AFTER, Admission
from .framing import GENERAL, NEED_MORE, next_frame, text_frame
from .handshake import CONNECT_PATH, PlainUpgrade, plain_upgrade
from .limits import Limits, RateLimiter
from .logs import LogBudget, ServerLogger
from .messages import Join, NotUtf8, ProtocolError, Relay
from .origin import OriginPolicy
from .registry import AlreadyInRoom, Room, RoomFull, RoomRegistry, TooManyRooms, new_client_id
from .stats import Stats
from .timers import cancel
from .tls import describe_error
from .tuning import skip_autobahn_debug_formatting

_log = ServerLogger()
skip_autobahn_debug_formatting()

#: Close code for policy violations (rate limit, slow reader, join timeout).
CLOSE_POLICY = 1008
#: Transports whose socket send_frame may write to directly (not TLS).
_PLAIN_STREAMS = (tcp.Server, unix.Server)

#: Close code for a text frame that is not UTF-8.
CLOSE_INVALID_PAYLOAD = 1007
#: Close code for a message too large, or split into too many frames.
CLOSE_TOO_BIG = 1009
#: Close code for a protocol violation (here: a malformed close frame).
CLOSE_PROTOCOL_ERROR = 1002
#: Close codes a peer may send (RFC 6455 section 7.4).
_VALID_CLOSE_CODES = frozenset(WebSocketServerProtocol.CLOSE_STATUS_CODES_ALLOWED) | frozenset(
    range(3000, 5000)
)
#: The WebSocket endpoint's path, as it appears in a request line.
WEBSOCKET_TARGET = CONNECT_PATH.encode()
#: A CR or LF that is not part of a CRLF (a CR at the end may be, later).
_BARE_CR_OR_LF = re.compile(rb"(?<!\r)\n|\r(?=[^\n])")
#: RFC 6455's GUID for Sec-WebSocket-Accept.
_WS_MAGIC = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class HTTPFallback(Protocol):
    """Serves the connections whose first request is not for ``/connect``."""

    def doStart(self) -> None:
        """Called as the factory's first listener starts (opens the access log)."""

    def doStop(self) -> None:
        """Called as the factory's last listener stops."""

    def take_over(self, transport: ITransport, data: bytes, elapsed: float) -> None:
        """Serve ``transport`` from now on; ``data`` is what it sent so far,
        ``elapsed`` the seconds since it connected."""


def _is_websocket_target(target: bytes) -> bool:
    """Whether twisted.web would find the WebSocket resource at ``target``:
    the same rule (segments decoded one by one), so that no request reaches
    that resource without having come this way."""
    if target == WEBSOCKET_TARGET or target.startswith(WEBSOCKET_TARGET + b"?"):
        return True
    path = target.split(b"?", 1)[0]
    return b"%" in path and [unquote_to_bytes(s) for s in path.split(b"/")] == [b"", b"connect"]


@implementer(IPushProducer)
class SignalingProtocol(WebSocketServerProtocol):
    """One client: parses its frames and dispatches to ``handle_*``.

    It is also the streaming producer registered with its transport, so it
    learns when the client stops reading and can bound what is queued for it.
    """

    factory: SignalingFactory
    client_id: str = ""
    #: What --max-connections-per-address counts this client by (None: not
    #: counted); see signaling.addresses.
    limit_key: str | None = None
    room: Room | None = None
    connected_at: float = 0.0
    #: Frames received from and sent to this client (read by the admin console).
    messages_in: int = 0
    messages_out: int = 0
    _limiter: RateLimiter | None = None
    _join_timer: IDelayedCall | None = None
    _keepalive: IDelayedCall | None = None
    _last_seen = 0.0
    _ping_sent_at = 0.0
    _paused = False
    _backlog = 0
    _partial = b""
    _dropping = False
    #: Frames of the message being received (Autobahn's path: fragmented ones).
    _fragments = 0
    #: Closed for flooding: what it still sends is not read.
    _ignoring_input = False
    #: Cuts the connection off if the end of a close does not drain.
    _close_deadline: IDelayedCall | None = None
    #: Bytes of an unfinished handshake already checked for bare line ends.
    _scanned = 0
    _direct_socket: socket.socket | None = None
    _accepted_at = 0.0
    _greeting = b""
    _handshake_deadline: IDelayedCall | None = None

    @property
    def client_address(self) -> str:
        """The client's address, e.g. ``tcp4:192.0.2.7:50412`` or ``unix``; with
        ``--trust-proxy``, the address the trusted proxies put in X-Forwarded-For
        (see signaling.addresses)."""
        return self.peer or ""

    # -- opening handshake -----------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        factory = self.factory
        self.peer, self.limit_key = socket_address(cast(ITransport, self.transport).getPeer())
        transport: Any = self.transport
        fileno = getattr(transport, "fileno", None)
        if not factory.admission.hold(transport, transport.getPeer(), fileno() if fileno else -1):
            _log.debug("no descriptor to spare for {peer}", peer=self.peer)
            self.droppedByMe = True
            self.state = self.STATE_CLOSED
            transport.abortConnection()
            return
        self._accepted_at = factory.clock.seconds()
        timeout = factory.limits.handshake_timeout
        if timeout > 0:
            self._handshake_deadline = factory.clock.callLater(timeout, self._handshake_too_slow)

    def _handshake_too_slow(self) -> None:
        """The fixed deadline: bytes trickling in do not extend it."""
        self._handshake_deadline = None
        # OPEN too: onOpen cancels the deadline last, so it failed on the way.
        if self.state in (self.STATE_CONNECTING, self.STATE_OPEN):
            # Not dropConnection: it logs a warning, and idle or half-open
            # connections (scanners, browsers' spare preconnections) are
            # routine, not a problem to report.
            _log.debug("handshake timeout {peer}", peer=self.peer)
            self.wasOpenHandshakeTimeout = True
            self.wasNotCleanReason = "opening handshake timeout"
            self.droppedByMe = True
            self.state = self.STATE_CLOSED
            cast(Any, self.transport).abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        cancel(self._close_deadline)  # and free this object now, not then
        self._close_deadline = None
        # Autobahn leaves its own closing-handshake timer running.
        timer, self.closeHandshakeTimeoutCall = self.closeHandshakeTimeoutCall, None
        if timer is not None:
            timer.cancel()  # a batched timer: cancel() alone, no active()
        if not self.client_id:
            if self.transport is not None:
                self.factory.admission.release(cast(ITransport, self.transport))
            # Never opened: Autobahn would log a failed TLS handshake (a
            # scanner, plain HTTP on the wss port) as an error.
            if reason.check(SSL.Error):
                self.factory.stats.tls_failures += 1
                _log.debug(
                    "TLS failed {peer}: {reason}",
                    peer=self.peer,
                    reason=describe_error(cast(SSL.Error, reason.value)),
                )
            self._connectionLost(cast(Any, reason))
        else:
            super().connectionLost(reason)
        # Autobahn resolves is_closed with the protocol itself, a reference
        # cycle that only a full collection would free (rare, see tuning):
        # every closed connection would stay in memory until then.
        self.is_closed = succeed(None)

    def _cancel_handshake_deadline(self) -> None:
        cancel(self._handshake_deadline)
        self._handshake_deadline = None

    def processHandshake(self) -> None:
        """Read the opening request: Autobahn answers a request for
        ``/connect``; any other goes to the HTTP site (``factory.http_site``).

        Listening with this factory directly, rather than behind twisted.web,
        means a WebSocket's request is parsed once, by Autobahn, and no HTTP
        request objects are built for it.
        """
        data = self.data
        limit = self.factory.limits.max_handshake_size
        line_end = data.find(b"\n")  # twisted.web also takes a bare LF
        if line_end < 0 or line_end >= limit:
            if line_end >= 0 or len(data) > limit:
                self._refuse_handshake(414, "request line too long")
            return
        site = self.factory.http_site
        if site is not None:
            parts = data[:line_end].rstrip(b"\r").split(b" ", 2)
            if len(parts) < 2 or not _is_websocket_target(parts[1]):
                self._hand_to(site)
                return
        end = data.find(b"\r\n\r\n")
        if end < 0 or end + 4 > limit:
            if end >= 0 or len(data) > limit:
                self._refuse_handshake(431, "request header fields too large")
            elif _BARE_CR_OR_LF.search(data, max(self._scanned - 1, 0)):
                # Autobahn refuses it once complete, if it ever is.
                self._refuse_handshake(400, "request lines must end in CRLF")
            else:
                # Only what arrives next is scanned (from the last byte, a CR
                # whose LF may follow): a request trickling in costs no more
                # than one arriving whole.
                self._scanned = len(data)
            return
        if self.factory.plain_handshakes:
            upgrade = plain_upgrade(data[:end])
            if upgrade is not None and self._open_plain(upgrade, end):
                return
        super().processHandshake()

    def _refuse_handshake(self, status: int, reason: str) -> None:
        self.factory.stats.refused_handshakes[status] += 1
        self.failHandshake(reason, status)

    def failHandshake(
        self, reason: str, code: int = 400, responseHeaders: list[tuple[str, str]] | None = None
    ) -> None:
        """Autobahn's, with one line in the log where it writes two (an info
        line, and a warning as it drops the connection), within the budget
        for client-caused lines; and a 503 says when to come back.

        A plain HTTP request for /connect (a probe, a crawler, the URL opened
        in a browser) is routine: 426 with ``Upgrade``, logged at debug."""
        headers = list(responseHeaders or ())
        if code == 426:
            _log.debug("plain HTTP request for /connect from {peer}: 426", peer=self.peer)
            headers.insert(0, ("Upgrade", "websocket"))
        elif self.factory.log_budget.allow("failed handshake"):
            _log.info(
                "failing WebSocket opening handshake ('{reason}') from {peer}: {code}",
                reason=reason,
                peer=self.peer,
                code=code,
            )
        self.wasNotCleanReason = reason
        if code == 503:
            headers.append(("Retry-After", str(RETRY_AFTER)))
        self.sendHttpErrorResponse(code, reason, headers)
        self.droppedByMe = True
        self.state = self.STATE_CLOSED
        cast(Any, self.transport).loseConnection()

    def _open_plain(self, upgrade: PlainUpgrade, end: int) -> bool:
        """Do what Autobahn's processHandshake and succeedHandshake do for a
        plain upgrade, without their Deferred and debug logging. False (with
        nothing changed) if a setting or the request needs Autobahn's path."""
        factory = self.factory
        options: Any = self  # Autobahn's settings (class attributes, untyped)
        if (
            factory.externalPort
            or factory.headers
            or options.maxConnections
            or options.autoPingInterval
            or options.trackTimings
            or 13 not in options.versions
            # onConnect's answer (subprotocol, headers) is Autobahn's to use
            or type(self).onConnect is not SignalingProtocol.onConnect
        ):
            return False
        origin = upgrade.origin
        if origin:
            try:
                origin_tuple = _url_to_origin(origin)
                allowed = (origin_tuple == "null" and options.allowNullOrigin) or _is_same_origin(
                    origin_tuple,
                    "https" if factory.isSecure else "http",
                    factory.port,
                    options.allowedOriginsPatterns,
                )
            except Exception:
                return False
            if not allowed:
                return False
        extensions: list[tuple[str, dict[str, list[Any]]]] = []
        if upgrade.extensions is not None:
            try:
                extensions = self._parseExtensionsHeader(upgrade.extensions)
                offers = [
                    cast(Any, PERMESSAGE_COMPRESSION_EXTENSION[name]["Offer"]).parse(params)
                    for name, params in extensions
                    if name in PERMESSAGE_COMPRESSION_EXTENSION
                ]
            except Exception:
                return False
            if offers and options.perMessageCompressionAccept(offers) is not None:
                return False
        headers = upgrade.headers
        self.http_request_data = self.data[: end + 4]
        self.data = self.data[end + 4 :]
        self.http_status_line = upgrade.status_line
        self.http_headers = headers
        self.http_request_uri = upgrade.uri
        self.http_request_path = CONNECT_PATH
        self.http_request_params = parse_qs(upgrade.query) if upgrade.query else {}
        self.http_request_host = upgrade.host
        self.websocket_version = 13
        self.websocket_protocols = []
        self.websocket_origin = origin
        self.websocket_extensions = extensions
        self._wskey = upgrade.key
        request = ConnectionRequest(
            self.peer,
            headers,
            upgrade.host,
            CONNECT_PATH,
            self.http_request_params,
            13,
            origin,
            [],
            extensions,
        )
        try:
            self.onConnect(request)
        except ConnectionDeny as deny:
            self.failHandshake(deny.reason or "", deny.code)
            return True
        except Exception as e:  # as Autobahn answers a failing onConnect
            _log.failure("onConnect failed for {peer}", peer=self.peer)
            self.failHandshake(f"Internal server error: {e}", ConnectionDeny.INTERNAL_SERVER_ERROR)
            return True
        accept = base64.b64encode(hashlib.sha1(upgrade.key.encode() + _WS_MAGIC).digest())
        server = f"Server: {factory.server}\r\n" if factory.server else ""
        response = (
            f"HTTP/1.1 101 Switching Protocols\r\n{server}Upgrade: WebSocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept.decode()}\r\n\r\n"
        )
        self.websocket_protocol_in_use = None
        self.websocket_extensions_in_use = []
        self.http_response_data = response
        self._greeting = response.encode()  # onOpen sends it with the client's id
        self.state = self.STATE_OPEN
        self.inside_message = False
        options.current_frame = None
        self._onOpen()
        cast(Any, self.is_open).callback(None)  # Autobahn: txaio.resolve
        if self.data:
            self.consumeData()
        return True

    def _hand_to(self, site: HTTPFallback) -> None:
        self._cancel_handshake_deadline()
        self.factory.countConnections -= 1  # Autobahn counted this connection as its own
        data, self.data = self.data, b""
        self.state = self.STATE_CLOSED
        transport = cast(ITransport, self.transport)
        self.transport = None
        site.take_over(transport, data, self.factory.clock.seconds() - self._accepted_at)

    def onConnect(self, request: ConnectionRequest) -> None:
        factory = self.factory
        headers = request.headers
        if factory.trust_proxy:
            forwarded = headers.get("x-forwarded-for")
            if forwarded is not None:
                client = forwarded_address(forwarded, factory.trust_proxy)
                if client is not None:
                    self.peer, self.limit_key = client
        elif "x-forwarded-for" in headers or "forwarded" in headers:
            factory.untrusted_forwarding()
        if factory.draining:
            self._refuse(503, "server is shutting down")
        if not factory.origins.allows(request.headers.get("origin")):
            self._refuse(403, "origin not allowed")
        limits = factory.limits
        if limits.max_connections and len(factory.clients) >= limits.max_connections:
            self._refuse(503, "too many connections")
        if (
            limits.max_connections_per_address
            and self.limit_key is not None
            and factory.address_counts[self.limit_key] >= limits.max_connections_per_address
        ):
            self._refuse(503, "too many connections from this address")

    def _refuse(self, status: int, reason: str) -> None:
        self.factory.stats.refused_handshakes[status] += 1
        raise ConnectionDeny(status, reason)

    def onOpen(self) -> None:
        factory = self.factory
        factory.admission.release(cast(ITransport, self.transport))
        self.client_id = client_id = new_client_id()
        self.connected_at = self._last_seen = now = factory.clock.seconds()
        factory.clients[client_id] = self
        if self.limit_key is not None:
            factory.address_counts[self.limit_key] += 1
        factory.stats.connections_total += 1
        limits = factory.limits
        if limits.rate_limit > 0:
            self._limiter = RateLimiter(limits.rate_limit, limits.rate_burst, now)
        # Be the transport's producer, so pauseProducing tells us the client
        # lags (in place of twisted.web's channel, after a keep-alive upgrade).
        transport = cast(IConsumer, self.transport)
        transport.unregisterProducer()
        transport.registerProducer(self, True)
        if type(transport) in _PLAIN_STREAMS and not getattr(transport, "TLS", False):
            self._direct_socket = cast(Any, transport).socket
        # Memory an idle connection need not keep: the raw handshake texts,
        # and the UTF-8 validator that parse() makes redundant.
        self.http_request_data = b""
        self.http_response_data = ""
        self.utf8validator = None  # type: ignore[assignment]
        self._start_join_timer()
        if limits.ping_interval > 0:
            self._keepalive = factory.clock.callLater(limits.ping_interval, self._send_keepalive)
        _log.debug("connect {client_id} from {peer}", client_id=client_id, peer=self.peer)
        # The 101 response and the client's id leave in one send.
        greeting, self._greeting = self._greeting, b""
        welcome = messages.notify_client_id(client_id)
        self.messages_out += 1
        factory.stats.bytes_out += len(welcome)
        self._write(greeting + text_frame(welcome))
        # Last: should anything above fail, the deadline still closes it.
        self._cancel_handshake_deadline()

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if self.state == self.STATE_CONNECTING and data.startswith(b"HTTP/1.1 101 "):
            # Autobahn's succeedHandshake: onOpen follows at once and sends it.
            self._greeting = data
            return
        if self.state == self.STATE_OPEN and not (sync or chopsize):
            # Control frames (pongs, close frames) as send_frame sends: at
            # once when nothing is queued, so a close leaves nothing behind.
            self._write(data)
            return
        super().sendData(data, sync, chopsize)

    def dataReceived(self, data: bytes) -> None:
        """Read whole data frames directly; leave everything else to Autobahn.

        Autobahn's general path costs several times more per frame (a
        masker object, debug-log arguments, a Deferred and an observer
        event each). Once it holds part of a frame or message, it keeps
        the stream until its buffer is empty again.
        """
        if (
            self.state != self.STATE_OPEN
            or self.current_frame is not None
            or self.inside_message
            or self.data
        ):
            if self._ignoring_input:
                return
            if self._partial:  # the start of a frame read on the fast path
                data, self._partial = self._partial + data, b""
            super().dataReceived(data)
            return
        buf = self._partial + data if self._partial else data
        self._partial = b""
        offset = 0
        limit = self.factory.limits.max_message_size
        factory = self.factory
        while True:
            end, is_binary, payload = next_frame(buf, offset, limit)
            if end < 0:
                break
            offset = end
            # A read that carried several frames is a burst: let the
            # transport gather the replies into one send per target.
            factory.write_through = end == len(buf)
            self.onMessage(payload, is_binary)
            if self.state != self.STATE_OPEN:
                end = GENERAL  # closing: Autobahn reads the rest (the close reply)
                break
        factory.write_through = True
        if end == NEED_MORE:
            self._partial = buf[offset:]
        elif offset < len(buf) and not self._ignoring_input:
            super().dataReceived(buf[offset:])

    def onFrameBegin(self) -> None:
        """Count the frames that are not whole messages (which onMessage
        counts): each continuation frame against ``--max-fragments`` and
        the rate limit. Autobahn calls this for every frame it reads."""
        if self.state == self.STATE_OPEN:
            opcode = self.current_frame.opcode
            if opcode == 0:
                self._fragments += 1
                limit = self.factory.limits.max_fragments
                if limit and self._fragments > limit:
                    _log.debug("too many fragments: closing {client_id}", client_id=self.client_id)
                    self._close_flooder(CLOSE_TOO_BIG, f"more than {limit} frames in one message")
                else:
                    self._frame_allowed()
            elif opcode < 8:
                self._fragments = 1
        super().onFrameBegin()

    def _frame_allowed(self) -> bool:
        """Spend a token of the rate limit on a frame that carries no
        message (a ping, a pong, a continuation); past the strikes, close."""
        limiter = self._limiter
        if limiter is None or limiter.allow(self.factory.clock.seconds()):
            return True
        strikes = self.factory.limits.rate_limit_strikes
        if strikes and limiter.strikes >= strikes:
            _log.debug("frame flood: closing {client_id}", client_id=self.client_id)
            self._close_flooder(CLOSE_POLICY, "rate limit exceeded")
        return False

    def onPing(self, payload: bytes) -> None:
        """Answer, unless over the rate limit or too far behind: a client
        that pings without reading must not make its pongs pile up."""
        if (
            self.state == self.STATE_OPEN
            and not self._dropping
            and self._frame_allowed()
            and not (self._paused and self._too_far_behind(len(payload) + 2))
        ):
            self.sendPong(payload)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.state != self.STATE_OPEN:
            return  # closing: Autobahn still delivers frames, but they no longer count
        started = perf_counter()
        self.messages_in += 1
        factory = self.factory
        stats = factory.stats
        stats.bytes_in += len(payload)
        self._last_seen = now = factory.clock.seconds()
        limiter = self._limiter
        if limiter is not None and not limiter.allow(now):
            self._rate_limited(limiter)
            return
        if isBinary:
            stats.received["invalid"] += 1
            self.send_error(
                messages.UNSUPPORTED_FRAME, "binary frames are not supported; send JSON text"
            )
            return
        try:
            message = messages.parse(payload, factory.limits.max_room_id_length)
        except ProtocolError as e:
            stats.received["invalid"] += 1
            self.send_error(e.code, e.message, e.in_reply_to)
            return
        except NotUtf8:
            stats.received["invalid"] += 1
            self.close_with(CLOSE_INVALID_PAYLOAD, "text frame is not valid UTF-8")
            return
        kind = type(message)
        if kind is Relay:
            relay = cast(Relay, message)
            stats.received[relay.type] += 1
            if self.handle_relay(relay):
                stats.relayed[relay.type] += 1
                stats.observe_relay(perf_counter() - started)
        elif kind is Join:
            stats.received["join"] += 1
            self.handle_join(cast(Join, message))
        else:
            stats.received["leave"] += 1
            self.handle_leave()

    def handle_relay(self, message: Relay) -> bool:
        """Forward an offer, answer or candidate; True if it was delivered."""
        room = self.room
        if room is None:
            self.send_error(
                messages.NOT_IN_ROOM, "join a room before sending " + message.type, message.type
            )
            return False
        target = message.target
        if target != self.client_id and room.send(
            target, messages.relayed(message.type, self.client_id, message.body)
        ):
            return True
        self.send_error(
            messages.UNKNOWN_CLIENT,
            "no other client with this id in your room",
            message.type,
            client_id=target,
        )
        return False

    def handle_join(self, message: Join) -> None:
        try:
            room, existing = self.factory.registry.join(message.room_id, self)
        except AlreadyInRoom as e:
            self.send_error(
                messages.ALREADY_IN_ROOM,
                "already in a room; send leave first",
                "join",
                room_id=e.args[0],
            )
            return
        except RoomFull as e:
            self.send_error(
                messages.ROOM_FULL, f"the room has its maximum of {e.args[0]} members", "join"
            )
            return
        except TooManyRooms:
            self.send_error(
                messages.TOO_MANY_ROOMS, "the server has no room for another room", "join"
            )
            return
        self.room = room
        self._cancel_join_timer()
        _log.debug(
            "join {client_id} room={room_id!r} members={members}",
            client_id=self.client_id,
            room_id=room.room_id,
            members=len(room),
        )
        self.send_frame(messages.joined(room.room_id, existing))

    def handle_leave(self) -> None:
        if self.room is None:
            self.send_error(messages.NOT_IN_ROOM, "not in a room", "leave")
            return
        self._leave_room()
        self._start_join_timer()

    def _leave_room(self) -> None:
        room = self.factory.registry.leave(self.client_id)
        self.room = None
        if room is not None:
            _log.debug(
                "leave {client_id} room={room_id!r} remaining={remaining}",
                client_id=self.client_id,
                room_id=room.room_id,
                remaining=len(room),
            )

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._cancel_handshake_deadline()
        if not self.client_id:
            return  # the opening handshake never completed
        factory = self.factory
        self._cancel_join_timer()
        cancel(self._keepalive)
        factory.closed_messages_in += self.messages_in
        factory.closed_messages_out += self.messages_out
        key = self.limit_key
        if factory.clients.pop(self.client_id, None) is not None and key is not None:
            counts = factory.address_counts
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]
        if self.room is not None:
            self._leave_room()
        _log.debug(
            "disconnect {client_id} code={code} reason={reason!r} clean={clean}",
            client_id=self.client_id,
            code=code,
            reason=reason,
            clean=wasClean,
        )

    def onCloseFrame(self, code: int | None, reasonRaw: bytes | None) -> bool | None:
        """The client's close frame, answered as Autobahn does, except that
        the connection always ends in order (Autobahn aborts it after a
        malformed close, or a close after a protocol error, which discards
        the close frame that says why) and within a deadline (a client that
        closes but does not read could otherwise keep it forever)."""
        if self.state == self.STATE_OPEN:
            if code is not None and code not in _VALID_CLOSE_CODES:
                self.close_with(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
                self.wasClean = False
                self.wasNotCleanReason = "malformed close frame"
            elif reasonRaw is not None and not _is_utf8(reasonRaw):
                self.close_with(CLOSE_INVALID_PAYLOAD, "close reason is not valid UTF-8")
                self.wasClean = False
                self.wasNotCleanReason = "malformed close frame"
            else:
                self.remoteCloseCode = code
                self.remoteCloseReason = None if reasonRaw is None else reasonRaw.decode()
                self.wasClean = True
                self.sendCloseFrame(code=self.CLOSE_STATUS_CODE_NORMAL, isReply=True)
        elif self.state == self.STATE_CLOSING:
            # The answer to our close, or the frame that made Autobahn fail
            # the connection (a one-byte payload).
            timer, self.closeHandshakeTimeoutCall = self.closeHandshakeTimeoutCall, None
            if timer is not None:
                timer.cancel()  # a batched timer: cancel() alone, no active()
            self.wasClean = not self.failedByMe
            if code in _VALID_CLOSE_CODES:
                self.remoteCloseCode = code
        else:
            return cast(Any, super()).onCloseFrame(code, reasonRaw)
        self._end_in_order()
        return True

    def _end_in_order(self) -> None:
        """Close TCP once what is queued for the client has been sent; a
        client that does not read it is cut off after the closing
        handshake's timeout."""
        transport = self._drop_quietly(abort=False)
        timeout = cast(Any, self).closeHandshakeTimeout  # an Autobahn setting
        if transport is not None and timeout > 0:
            self._close_deadline = self.factory.clock.callLater(timeout, self._cut_off, transport)

    def _cut_off(self, transport: Any) -> None:
        self._close_deadline = None
        _log.debug("close not delivered in time: dropping {peer}", peer=self.peer)
        transport.abortConnection()

    def onCloseHandshakeTimeout(self) -> None:
        """As Autobahn's, but logged at debug level: clients that never
        answer a close (floods, vanished peers) are routine, and each one
        must not cost a warning in the log."""
        self.closeHandshakeTimeoutCall = None
        if self.state != self.STATE_CLOSED:
            _log.debug("no answer to close: dropping {peer}", peer=self.peer)
            self.wasClean = False
            self.wasNotCleanReason = "peer did not finish the closing handshake in time"
            self.wasCloseHandshakeTimeout = True
            self._drop_quietly(abort=True)

    def abort(self) -> None:
        """End the connection at once, whatever state it is in (a client
        that answered a close but does not read is CLOSED, not gone)."""
        self._drop_quietly(abort=True)

    def _drop_quietly(self, abort: bool) -> Any:
        """What Autobahn's dropConnection does, without its warning for
        each unclean end; returns the transport, if there was one."""
        transport: Any = self.transport
        if transport is None:
            return None
        self._cancel_join_timer()
        cancel(self._keepalive)
        self._keepalive = None
        if self.state == self.STATE_CLOSED:  # dropped already: at most harder
            if abort:
                transport.abortConnection()
            return transport
        transport.unregisterProducer()
        self.droppedByMe = True
        self.state = self.STATE_CLOSED
        cast(Any, self.is_closed).callback(self)  # as Autobahn's (txaio.resolve)
        if abort:
            transport.abortConnection()
        else:
            transport.loseConnection()
        return transport

    def onPong(self, payload: bytes) -> None:
        if self.state == self.STATE_OPEN:
            self._frame_allowed()
        self._last_seen = self.factory.clock.seconds()

    # -- sending ---------------------------------------------------------------

    def send_frame(self, data: bytes) -> None:
        """Queue one frame, unless the client has fallen too far behind."""
        if self.state != self.STATE_OPEN or self._dropping:
            return
        if self._paused and self._too_far_behind(len(data)):
            return
        self.messages_out += 1
        self.factory.stats.bytes_out += len(data)
        self._write(text_frame(data))

    def _write(self, frame: bytes) -> None:
        transport: Any = self.transport
        sock = self._direct_socket
        if (
            sock is not None
            and self.factory.write_through
            and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)
        ):
            # Nothing queued: send now rather than register for writability,
            # wake up and send in the next reactor turn (two epoll_ctl calls
            # and a loop pass per message when traffic is not bursty).
            try:
                sent = sock.send(frame)
            except OSError:
                sent = 0  # the transport's own write sees to errors
            if sent == len(frame):
                return
            frame = frame[sent:]
        transport.write(frame)

    #: Member interface: the room delivers frames for this client here.
    deliver = send_frame

    def send_error(
        self, code: str, text: str, in_reply_to: str | None = None, **details: Any
    ) -> None:
        factory = self.factory
        factory.stats.errors[code] += 1
        if factory.log_budget.allow("error"):
            _log.info(
                "error {client_id} {code}: {text}", client_id=self.client_id, code=code, text=text
            )
        if in_reply_to is not None:
            details["in_reply_to"] = in_reply_to
        self.send_frame(messages.error(code, text, **details))

    def close_with(self, code: int, reason: str) -> None:
        """Start the closing handshake; the room hears of it at once."""
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode(), isReply=False)

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        # Every way out of OPEN passes here (ours, Autobahn's protocol
        # errors, the shutdown, the client's own close): the room hears
        # leave-client now, not when TCP finally closes.
        if self.room is not None:
            self._leave_room()
        super().sendCloseFrame(code=code, reasonUtf8=reasonUtf8, isReply=isReply)

    # -- limits ------------------------------------------------------------------

    def _rate_limited(self, limiter: RateLimiter) -> None:
        strikes = self.factory.limits.rate_limit_strikes
        if strikes and limiter.strikes >= strikes:
            if self.factory.log_budget.allow("rate limit"):
                _log.info("rate limit: closing {client_id}", client_id=self.client_id)
            self._close_flooder(CLOSE_POLICY, "rate limit exceeded")
            return
        self.send_error(
            messages.RATE_LIMITED,
            f"more than {limiter.rate:g} messages a second; message dropped",
        )

    def _close_flooder(self, code: int, reason: str) -> None:
        """Close, and read nothing more from this client: parsing the rest
        of a flood would only cost time. Its reply to the close is not read
        either, so the closing handshake times out and the connection is
        dropped."""
        self.close_with(code, reason)
        self._ignoring_input = True
        self.data = b""  # Autobahn's buffer: the rest of this read
        self._partial = b""

    def _too_far_behind(self, size: int) -> bool:
        """Whether ``size`` more bytes for this paused client would exceed
        ``--max-send-buffer``; if so, it is being dropped."""
        self._backlog += size
        limit = self.factory.limits.max_send_buffer
        if limit and self._queued_bytes() > limit:
            self._drop_slow_consumer()
            return True
        return False

    def _queued_bytes(self) -> int:
        """Bytes waiting in the transport for this client, while it is paused.

        Plain TCP transports say exactly; for others (TLS) this counts what
        was written since the transport paused, which is at least as much.
        """
        if self._direct_socket is not None:
            transport: Any = self.transport
            return transport._tempDataLen + len(transport.dataBuffer) - transport.offset
        return self._backlog

    def _drop_slow_consumer(self) -> None:
        self.factory.stats.slow_consumers += 1
        if self.factory.log_budget.allow("slow consumer"):
            _log.info(
                "slow consumer {client_id}: more than {limit} bytes queued; closing",
                client_id=self.client_id,
                limit=self.factory.limits.max_send_buffer,
            )
        # Not now: this runs inside a delivery, possibly in the middle of a
        # registry operation on this client's room.
        self._dropping = True
        self.factory.clock.callLater(
            0, self._close_flooder, CLOSE_POLICY, "client is not reading its messages"
        )

    def _start_join_timer(self) -> None:
        timeout = self.factory.limits.join_timeout
        if timeout > 0:
            self._join_timer = self.factory.clock.callLater(timeout, self._join_timed_out)

    def _cancel_join_timer(self) -> None:
        cancel(self._join_timer)
        self._join_timer = None

    def _join_timed_out(self) -> None:
        self._join_timer = None
        timeout = self.factory.limits.join_timeout
        self.send_error(messages.JOIN_TIMEOUT, f"no join within {timeout:g} seconds")
        self.close_with(CLOSE_POLICY, "join timeout")

    def _send_keepalive(self) -> None:
        """Ping, unless the client spoke within the last interval anyway."""
        if self.state != self.STATE_OPEN:
            return
        clock, limits = self.factory.clock, self.factory.limits
        now = clock.seconds()
        quiet_for = now - self._last_seen
        if 0 <= quiet_for < limits.ping_interval:
            self._keepalive = clock.callLater(
                limits.ping_interval - quiet_for, self._send_keepalive
            )
            return
        self._ping_sent_at = now
        self.sendPing()
        self._keepalive = clock.callLater(limits.ping_timeout, self._check_keepalive)

    def _check_keepalive(self) -> None:
        if self._last_seen >= self._ping_sent_at:
            self._send_keepalive()
            return
        self._keepalive = None
        self.factory.stats.keepalive_timeouts += 1
        if self.factory.log_budget.allow("keepalive timeout"):
            _log.info("keepalive timeout {client_id}", client_id=self.client_id)
        self.wasClean = False
        self.wasNotCleanReason = "no answer to a keepalive ping"
        self._drop_quietly(abort=True)  # the line above says it; no warning too

    # -- IPushProducer: the transport tells us when the client lags ---------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._backlog = 0

    def stopProducing(self) -> None:
        self._paused = True


class SignalingFactory(WebSocketServerFactory):
    """Shares one :class:`RoomRegistry` among all connections.

    ``clients`` maps the id of every open connection (in a room or not) to
    its protocol; ``clock`` is the time source (the reactor by default);
    ``trust_proxy`` is how many proxies in front add to X-Forwarded-For.
    ``draining`` is set while the server shuts down (new handshakes get
    503); ``started_at`` is when
    the factory was made, by ``clock``; the ``closed_messages_*`` counters keep
    the totals of closed connections.
    """

    protocol = SignalingProtocol  # type: ignore[assignment]

    def __init__(
        self,
        registry: RoomRegistry | None = None,
        *,
        clock: IReactorTime | None = None,
        limits: Limits | None = None,
        trust_proxy: int = 0,
    ) -> None:
        super().__init__()
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.clock = clock
        self.limits = limits = limits if limits is not None else Limits()
        self.registry = (
            registry
            if registry is not None
            else RoomRegistry(max_room_size=limits.max_room_size, max_rooms=limits.max_rooms)
        )
        self.origins = OriginPolicy(limits.allowed_origins)
        self.stats = Stats()
        self.started_at = clock.seconds()
        self.closed_messages_in = 0
        self.closed_messages_out = 0
        self.draining = False
        self.write_through = True
        self.trust_proxy = trust_proxy
        self.clients: dict[str, SignalingProtocol] = {}
        #: Read plain handshakes in one pass (signaling.handshake); False
        #: leaves every handshake to Autobahn.
        self.plain_handshakes = True
        self.noisy = False
        #: Where requests for other paths than /connect go (``web.listening_factory``).
        self.http_site: HTTPFallback | None = None
        self.address_counts: Counter[str] = Counter()
        #: Caps on connections that are not (yet) WebSockets; see signaling.admission.
        self.admission = Admission(limits, clock, per_address=not trust_proxy)
        #: Bounds the log lines that clients can cause.
        self.log_budget = LogBudget(clock, limits.client_log_rate)
        #: Bounds the HTTP access log, whose requests clients choose too.
        self.access_log_budget = LogBudget(clock, limits.access_log_rate)
        #: Leave versions out of the Server header and /healthz (--hide-version).
        self.hide_version = False
        self.setProtocolOptions(
            maxMessagePayloadSize=limits.max_message_size,
            maxFramePayloadSize=limits.max_message_size,
            # The handshake deadline runs on ``clock`` (connectionMade).
            openHandshakeTimeout=0,
            # parse() rejects invalid UTF-8 as part of reading the JSON; a
            # second pass over every frame would only repeat that work.
            utf8validateIncoming=False,
            # Close with the proper code (1007, 1009, ...) instead of
            # dropping TCP, so clients learn why.
            failByDrop=False,
            # Origins are checked in onConnect (OriginPolicy); Autobahn's own
            # check also compares the server's scheme and port.
            allowNullOrigin=True,
            # No HTML status page (it also honours ?redirect=, an open
            # redirect): a plain GET of /connect gets an HTTP error.
            webStatus=False,
            # onConnect reads X-Forwarded-For itself (signaling.addresses).
            trustXForwardedFor=0,
        )

    def untrusted_forwarding(self) -> None:
        """Count a request that carried X-Forwarded-For or Forwarded while no
        proxy is trusted; warn the first time."""
        self.stats.untrusted_forwarded += 1
        if self.stats.untrusted_forwarded == 1:
            _log.warn(
                "a request came with X-Forwarded-For or Forwarded, but --trust-proxy is 0: "
                "the header is ignored, so clients behind that proxy all have its address "
                "and share its --max-connections-per-address; give --trust-proxy N when N "
                "proxies of yours are in front"
            )

    def hide_versions(self) -> None:
        """Name no versions: ``Server: signaling``, and no version in /healthz."""
        self.hide_version = True
        self.server = "signaling"

    def startFactory(self) -> None:
        super().startFactory()
        if self.http_site is not None:
            self.http_site.doStart()

    def stopFactory(self) -> None:
        if self.http_site is not None:
            self.http_site.doStop()
        super().stopFactory()

    def setProtocolOptions(self, **options: Any) -> None:  # type: ignore[override]
        """Autobahn's options; connections see them through a protocol class
        made for this factory.

        Autobahn copies each of its settings that a connection lacks into
        that connection's own attributes as it connects: about thirty per
        connection, in time and in memory. As class attributes of
        ``self.protocol`` they are shared instead.
        """
        super().setProtocolOptions(**options)
        self._share_options()

    def resetProtocolOptions(self) -> None:
        super().resetProtocolOptions()
        self._share_options()

    def _share_options(self) -> None:
        base = type(self).protocol
        settings = {
            # Functions among them (perMessageCompressionAccept) must not bind.
            name: staticmethod(value) if callable(value) else value
            for name in base.CONFIG_ATTRS
            for value in (getattr(self, name),)
        }
        self.protocol = type(  # type: ignore[assignment]
            base.__name__,
            (base,),
            {**settings, "__module__": base.__module__, "__qualname__": base.__qualname__},
        )
