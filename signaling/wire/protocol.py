"""The WebSocket side: one :class:`SignalingProtocol` per connected client."""

from __future__ import annotations

import base64
import hashlib
import re
import socket
from typing import Any, Protocol, cast
from urllib.parse import parse_qs, unquote_to_bytes

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PERMESSAGE_COMPRESSION_EXTENSION
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from OpenSSL import SSL
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

from signaling.core.clock import cancel
from signaling.core.hub import Hub
from signaling.core.ids import new_client_id
from signaling.core.limits import Limits
from signaling.core.resume import connect as resume_session
from signaling.core.rooms import Rooms
from signaling.core.session import CLOSE_INVALID_PAYLOAD, CLOSE_POLICY, Session
from signaling.logs import LogBudget, ServerLogger
from signaling.wire import compat
from signaling.wire.addresses import forwarded_address, socket_address
from signaling.wire.admission import RETRY_AFTER, Admission
from signaling.wire.compat import ALL_FAST_PATHS, FastPaths
from signaling.wire.framing import GENERAL, NEED_MORE, next_frame, text_frame
from signaling.wire.handshake import CONNECT_PATH, PlainUpgrade, plain_upgrade
from signaling.wire.tls import describe_error

_log = ServerLogger()
#: Where the log budgets say how many lines they held back.
_BUDGET_LOG = ServerLogger("signaling.logs")

#: Close code for a message too large, or split into too many frames.
CLOSE_TOO_BIG = 1009
#: Close code for a protocol violation (here: a malformed close frame).
CLOSE_PROTOCOL_ERROR = 1002
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
    """One client's connection: reads its frames and hands each message to
    its :class:`~signaling.core.session.Session`, and writes what the
    session sends (it is the session's :class:`~signaling.core.session.Wire`).

    It is also the streaming producer registered with its transport, so it
    learns when the client stops reading and can bound what is queued for it.

    Its factory makes a subclass of it with the factory's settings and
    :class:`~signaling.wire.compat.FastPaths`: the methods of a fast path
    that is off are Autobahn's (see ``SignalingFactory._share_options``).
    """

    factory: SignalingFactory
    #: The fast paths of this connection's factory.
    fast_paths: FastPaths = ALL_FAST_PATHS
    #: The client's session (the protocol's rules), once the handshake succeeded.
    session: Session | None = None
    #: What --max-connections-per-address counts this client by (None: not
    #: counted); see signaling.wire.addresses.
    limit_key: str | None = None
    _keepalive: IDelayedCall | None = None
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
    #: The socket _write may send to itself (see signaling.wire.compat.write_frame).
    _direct_socket: socket.socket | None = None
    _write = compat.write_frame
    _accepted_at = 0.0
    _greeting = b""
    #: ``?token=`` of the connect URL, for the session (then dropped).
    _url_token: str | None = None
    _handshake_deadline: IDelayedCall | None = None
    #: (``?resume=1``, ``resume_token``, ``last_seq``) of the connect URL,
    #: if it has either of the first two (see signaling.core.resume).
    _resume: tuple[bool, str | None, str | None] | None = None

    @property
    def client_address(self) -> str:
        """The client's address, e.g. ``tcp4:192.0.2.7:50412`` or ``unix``; with
        ``--trust-proxy``, the address the trusted proxies put in X-Forwarded-For
        (see signaling.wire.addresses)."""
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
            compat.mark_dropped(self)
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
            compat.mark_unclean(self, "opening handshake timeout", open_timeout=True)
            compat.mark_dropped(self)
            cast(Any, self.transport).abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        cancel(self._close_deadline)  # and free this object now, not then
        self._close_deadline = None
        compat.cancel_close_timer(self)
        if self.session is None:
            if self.transport is not None:
                self.factory.admission.release(cast(ITransport, self.transport))
            # Never opened: Autobahn would log a failed TLS handshake (a
            # scanner, plain HTTP on the wss port) as an error.
            if reason.check(SSL.Error):
                self.factory.hub.stats.tls_failures += 1
                _log.debug(
                    "TLS failed {peer}: {reason}",
                    peer=self.peer,
                    reason=describe_error(cast(SSL.Error, reason.value)),
                )
            compat.connection_lost_unopened(self, reason)
        else:
            super().connectionLost(reason)  # onClose ends the session
            self.session.closed(self)  # (at once, should onClose not have run)
        # Autobahn's is_closed holds this protocol in a reference cycle.
        compat.release_closed(self)

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
        if self.fast_paths.handshake:
            upgrade = plain_upgrade(data[:end])
            if upgrade is not None and self._open_plain(upgrade, end):
                return
        super().processHandshake()

    def _refuse_handshake(self, status: int, reason: str) -> None:
        self.factory.hub.stats.refused_handshakes[status] += 1
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
        elif self.factory.hub.log_budget.allow("failed handshake"):
            _log.info(
                "failing WebSocket opening handshake ('{reason}') from {peer}: {code}",
                reason=reason,
                peer=self.peer,
                code=code,
            )
        compat.mark_unclean(self, reason)
        if code == 503:
            headers.append(("Retry-After", str(RETRY_AFTER)))
        self.sendHttpErrorResponse(code, reason, headers)
        compat.mark_dropped(self)
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
                allowed = compat.origin_allowed(self, origin, factory.isSecure, factory.port)
            except Exception:
                return False
            if not allowed:
                return False
        extensions: list[tuple[str, dict[str, list[Any]]]] = []
        if upgrade.extensions is not None:
            try:
                extensions = compat.parse_extensions(self, upgrade.extensions)
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
        params = parse_qs(upgrade.query) if upgrade.query else {}
        data = self.data
        compat.accept_request(
            self,
            request=data[: end + 4],
            rest=data[end + 4 :],
            status_line=upgrade.status_line,
            headers=headers,
            uri=upgrade.uri,
            path=CONNECT_PATH,
            params=params,
            host=upgrade.host,
            origin=origin,
            extensions=extensions,
            key=upgrade.key,
        )
        request = ConnectionRequest(
            self.peer,
            headers,
            upgrade.host,
            CONNECT_PATH,
            params,
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
        self._greeting = response.encode()  # onOpen sends it with the client's id
        compat.open_connection(self, response)
        return True

    def _hand_to(self, site: HTTPFallback) -> None:
        self._cancel_handshake_deadline()
        data = compat.abandon(self)
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
        hub = factory.hub
        params = request.params
        if hub.gate is not None:
            tokens = params.get("token")
            if tokens:
                self._url_token = tokens[0]
        resume_token = None
        if "resume" in params or "resume_token" in params:
            resume_token = params.get("resume_token", [None])[0]
            self._resume = (
                params.get("resume", [""])[0] == "1",
                resume_token,
                params.get("last_seq", [None])[0],
            )
        if hub.draining:
            self._refuse(503, "server is shutting down")
        if not hub.origins.allows(request.headers.get("origin")):
            self._refuse(403, "origin not allowed")
        refusal = hub.refusal(self.limit_key)
        # A resume takes the place of the session it resumes (counted still).
        if refusal is not None and resume_token not in hub.resume_tokens:
            self._refuse(503, refusal)

    def _refuse(self, status: int, reason: str) -> None:
        self.factory.hub.stats.refused_handshakes[status] += 1
        raise ConnectionDeny(status, reason)

    def onOpen(self) -> None:
        factory = self.factory
        factory.admission.release(cast(ITransport, self.transport))
        resume = self._resume
        hub = factory.hub
        if (
            resume is not None
            and resume[1] is not None
            and hub.session_mover is not None
            and hub.limits.resume_grace > 0
            and resume[1] not in hub.resume_tokens
        ):
            # Another process may hold the session: it moves here first.
            # Nothing is read meanwhile (the client has no answer yet).
            cast(Any, self.transport).pauseProducing()
            hub.session_mover.fetch(resume[1], self._fetched)
            return
        self._open()

    def _fetched(self) -> None:
        """The session to resume is here, or will not come: carry on."""
        transport: Any = self.transport
        if transport is None or self.state != self.STATE_OPEN:
            return  # gone meanwhile; a session that came stays away, resumable
        transport.resumeProducing()
        self._open()

    def _open(self) -> None:
        factory = self.factory
        resume = self._resume
        if resume is None:
            self.session = session = Session(
                factory.hub, self, new_client_id(), self.peer or "", self.limit_key, self._url_token
            )
            welcome = b""
        else:
            self._resume = None
            self.session, first = resume_session(
                factory.hub,
                self,
                new_client_id,
                self.peer or "",
                self.limit_key,
                self._url_token,
                resume=resume[0],
                token=resume[1],
                last_seq=resume[2],
            )
            session = self.session
            welcome = b"".join(map(text_frame, first))
        self._url_token = None
        limits = factory.limits
        # Be the transport's producer, so pauseProducing tells us the client
        # lags (in place of twisted.web's channel, after a keep-alive upgrade).
        transport = cast(IConsumer, self.transport)
        transport.unregisterProducer()
        transport.registerProducer(self, True)
        fast_write = self.fast_paths.write
        if fast_write:
            self._direct_socket = compat.direct_socket(transport)
        # Memory an idle connection need not keep: the raw handshake texts,
        # and the UTF-8 validator that parse() makes redundant.
        compat.free_handshake_state(self)
        if resume is None:
            welcome = session.open()
        if limits.ping_interval > 0:
            self._keepalive = factory.clock.callLater(limits.ping_interval, self._send_keepalive)
        _log.debug("connect {client_id} from {peer}", client_id=session.client_id, peer=self.peer)
        greeting, self._greeting = self._greeting, b""
        if resume is not None:
            # The frames of a resume (or its refusal), already framed.
            factory.hub.stats.bytes_out += len(welcome)
            if fast_write:
                self._write(greeting + welcome)
            else:
                if greeting:
                    transport.write(greeting)
                self.sendData(welcome)
        elif fast_write:
            # The 101 response and the client's id leave in one send.
            factory.hub.stats.bytes_out += len(welcome)
            self._write(greeting + text_frame(welcome))
        else:
            if greeting:  # from _open_plain (Autobahn's handshake sends its own)
                transport.write(greeting)
            self.send_frame(welcome)
        # Last: should anything above fail, the deadline still closes it.
        self._cancel_handshake_deadline()

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """On the write fast path: the 101 response waits for the client's
        id (see onOpen), and control frames go out as messages do."""
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
        receive = self.session.receive  # type: ignore[union-attr]  # OPEN: it has one
        try:
            while True:
                end, is_binary, payload = next_frame(buf, offset, limit)
                if end < 0:
                    break
                offset = end
                # A read that carried several frames is a burst: let the
                # transport gather the replies into one send per target.
                factory.write_through = end == len(buf)
                receive(payload, is_binary)
                if self.state != self.STATE_OPEN:
                    end = GENERAL  # closing: Autobahn reads the rest (the close reply)
                    break
        finally:
            factory.write_through = True
        if end == NEED_MORE:
            self._partial = buf[offset:]
        elif offset < len(buf) and not self._ignoring_input:
            super().dataReceived(buf[offset:])

    def _data_received_by_autobahn(self, data: bytes) -> None:
        """``dataReceived`` with the read fast path off."""
        if not self._ignoring_input:
            super().dataReceived(data)

    def onFrameBegin(self) -> None:
        """Count the frames that are not whole messages (which the session
        counts): each continuation frame against ``--max-fragments`` and
        the rate limit. Autobahn calls this for every frame it reads."""
        session = self.session
        if self.state == self.STATE_OPEN and session is not None:
            opcode = compat.frame_opcode(self)
            if opcode == 0:
                self._fragments += 1
                limit = self.factory.limits.max_fragments
                if limit and self._fragments > limit:
                    _log.debug(
                        "too many fragments: closing {client_id}", client_id=session.client_id
                    )
                    self.close(CLOSE_TOO_BIG, f"more than {limit} frames in one message")
                    self.stop_reading()
                else:
                    session.frame_allowed()
            elif opcode is not None and opcode < 8:
                self._fragments = 1
        super().onFrameBegin()

    def onPing(self, payload: bytes) -> None:
        """Answer, unless over the rate limit or too far behind: a client
        that pings without reading must not make its pongs pile up."""
        session = self.session
        if (
            self.state == self.STATE_OPEN
            and session is not None
            and not self._dropping
            and session.frame_allowed()
            and not (self._paused and self._too_far_behind(len(payload) + 2))
        ):
            self.sendPong(payload)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """A message read on Autobahn's path (fragmented, or after a
        partial frame)."""
        if self.state == self.STATE_OPEN and self.session is not None:
            self.session.receive(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._cancel_handshake_deadline()
        session = self.session
        if session is None:
            return  # the opening handshake never completed
        cancel(self._keepalive)
        # Nothing closed it (no close frame either way, no drop of ours):
        # the connection was lost, and a session that may resume goes away.
        session.lost(self)
        session.closed(self)
        _log.debug(
            "disconnect {client_id} code={code} reason={reason!r} clean={clean}",
            client_id=session.client_id,
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
            if code is not None and code not in compat.CLOSE_CODES_ALLOWED:
                self.close(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
                compat.mark_unclean(self, "malformed close frame")
            elif reasonRaw is not None and not _is_utf8(reasonRaw):
                self.close(CLOSE_INVALID_PAYLOAD, "close reason is not valid UTF-8")
                compat.mark_unclean(self, "malformed close frame")
            else:
                reason = None if reasonRaw is None else reasonRaw.decode()
                compat.record_peer_close(self, code, reason)
                if code == self.CLOSE_STATUS_CODE_GOING_AWAY and self.session is not None:
                    self.session.lost(self)  # the client expects to come back
                self.sendCloseFrame(code=self.CLOSE_STATUS_CODE_NORMAL, isReply=True)
        elif self.state == self.STATE_CLOSING:
            # The answer to our close, or the frame that made Autobahn fail
            # the connection (a one-byte payload).
            compat.cancel_close_timer(self)
            compat.record_close_reply(self, code)
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
        compat.close_timer_fired(self)
        if self.state != self.STATE_CLOSED:
            _log.debug("no answer to close: dropping {peer}", peer=self.peer)
            compat.mark_unclean(
                self, "peer did not finish the closing handshake in time", close_timeout=True
            )
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
        cancel(self._keepalive)
        self._keepalive = None
        if self.session is not None:
            self.session.closing(self)
        if self.state == self.STATE_CLOSED:  # dropped already: at most harder
            if abort:
                transport.abortConnection()
            return transport
        transport.unregisterProducer()
        compat.mark_dropped(self)
        compat.resolve_closed(self)
        if abort:
            transport.abortConnection()
        else:
            transport.loseConnection()
        return transport

    def onPong(self, payload: bytes) -> None:
        session = self.session
        if session is not None:
            if self.state == self.STATE_OPEN:
                session.frame_allowed()
            session.last_seen = self.factory.clock.seconds()

    # -- Wire: what the session sends -----------------------------------------

    def send_frame(self, data: bytes) -> bool:
        """Queue one frame, unless the client has fallen too far behind."""
        if self.state != self.STATE_OPEN or self._dropping:
            return False
        if self._paused and self._too_far_behind(len(data)):
            return False
        self.factory.stats.bytes_out += len(data)
        self._write(text_frame(data))
        return True

    def _send_message(self, data: bytes) -> bool:
        """``send_frame`` with the write fast path off."""
        if self.state != self.STATE_OPEN or self._dropping:
            return False
        if self._paused and self._too_far_behind(len(data)):
            return False
        self.factory.stats.bytes_out += len(data)
        self.sendMessage(data)
        return True

    @property
    def writes_to_socket(self) -> bool:
        """Whether messages may go straight to the connection's socket (the
        write fast path, on a plain TCP or Unix connection)."""
        return self._direct_socket is not None

    def close(self, code: int, reason: str, timeout: float | None = None) -> None:
        """Start the closing handshake; the room hears of it at once."""
        if self.state == self.STATE_OPEN:
            if timeout is not None:
                self.closeHandshakeTimeout = timeout
            self.sendCloseFrame(code=code, reasonUtf8=reason.encode(), isReply=False)

    def stop_reading(self) -> None:
        """Read nothing more from this client: parsing the rest of a flood
        would only cost time. Its reply to a close is not read either, so
        the closing handshake times out and the connection is dropped."""
        self._ignoring_input = True
        compat.discard_input(self)  # the rest of this read
        self._partial = b""

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        # Every way out of OPEN passes here (ours, Autobahn's protocol
        # errors, the shutdown, the client's own close): the room hears
        # leave-client now, not when TCP finally closes.
        if self.session is not None:
            self.session.closing(self)
        super().sendCloseFrame(code=code, reasonUtf8=reasonUtf8, isReply=isReply)

    # -- backpressure ------------------------------------------------------------

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
            return compat.queued_bytes(self.transport)
        return self._backlog

    def _drop_slow_consumer(self) -> None:
        hub = self.factory.hub
        hub.stats.slow_consumers += 1
        if hub.log_budget.allow("slow consumer"):
            _log.info(
                "slow consumer {client_id}: more than {limit} bytes queued; closing",
                client_id=self.client_id,
                limit=hub.limits.max_send_buffer,
            )
        # Not now: this runs inside a delivery, possibly in the middle of a
        # rooms operation on this client's room.
        self._dropping = True
        hub.clock.callLater(0, self._close_flooder, "client is not reading its messages")

    def _close_flooder(self, reason: str) -> None:
        self.close(CLOSE_POLICY, reason)
        self.stop_reading()

    @property
    def client_id(self) -> str:
        """The session's client id ("" before the handshake succeeded)."""
        return self.session.client_id if self.session is not None else ""

    # -- keepalive -----------------------------------------------------------------

    def _send_keepalive(self) -> None:
        """Ping, unless the client spoke within the last interval anyway."""
        session = self.session
        if self.state != self.STATE_OPEN or session is None:
            return
        clock, limits = self.factory.clock, self.factory.limits
        now = clock.seconds()
        quiet_for = now - session.last_seen
        if 0 <= quiet_for < limits.ping_interval:
            self._keepalive = clock.callLater(
                limits.ping_interval - quiet_for, self._send_keepalive
            )
            return
        self._ping_sent_at = now
        self.sendPing()
        self._keepalive = clock.callLater(limits.ping_timeout, self._check_keepalive)

    def _check_keepalive(self) -> None:
        session = self.session
        if session is not None and session.last_seen >= self._ping_sent_at:
            self._send_keepalive()
            return
        self._keepalive = None
        hub = self.factory.hub
        hub.stats.keepalive_timeouts += 1
        if hub.log_budget.allow("keepalive timeout"):
            _log.info("keepalive timeout {client_id}", client_id=self.client_id)
        compat.mark_unclean(self, "no answer to a keepalive ping")
        if session is not None:
            session.lost(self)  # a half-open connection: it may resume
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
    """Serves the WebSocket connections of one :class:`~signaling.core.hub.Hub`.

    ``hub`` is the server's shared state (made with ``clock`` and ``limits``
    when not given); ``clock`` is the time source (the reactor by default);
    ``trust_proxy`` is how many proxies in front add to X-Forwarded-For;
    ``fast_paths`` which of the server's fast paths are on (all by default;
    ``makeService`` gives those that ``signaling.wire.compat.check`` allows).
    """

    protocol = SignalingProtocol  # type: ignore[assignment]
    _fast_paths = ALL_FAST_PATHS

    def __init__(
        self,
        hub: Hub | None = None,
        *,
        clock: IReactorTime | None = None,
        limits: Limits | None = None,
        rooms: Rooms | None = None,
        trust_proxy: int = 0,
        fast_paths: FastPaths = ALL_FAST_PATHS,
    ) -> None:
        self._fast_paths = fast_paths
        super().__init__()
        if hub is None:
            if clock is None:
                from twisted.internet import reactor

                clock = cast(IReactorTime, reactor)
            hub = Hub(
                clock,
                limits,
                rooms,
                log=ServerLogger("signaling.core.session"),
                budget_log=_BUDGET_LOG,
            )
        elif clock is not None or limits is not None or rooms is not None:
            raise TypeError("give either a hub, or the clock, limits and rooms to make one with")
        self.hub = hub
        self.clock = clock = cast(IReactorTime, hub.clock)
        self.limits = limits = hub.limits
        #: The hub's counters (the same object, one attribute hop fewer).
        self.stats = hub.stats
        #: Set by a connection while it reads one frame of several: what it
        #: sends then is left to the transport to gather (see dataReceived).
        self.write_through = True
        self.trust_proxy = trust_proxy
        self.noisy = False
        #: Where requests for other paths than /connect go (``web.listening_factory``).
        self.http_site: HTTPFallback | None = None
        #: Caps on connections that are not (yet) WebSockets; see signaling.wire.admission.
        self.admission = Admission(limits, clock, per_address=not trust_proxy)
        #: Bounds the HTTP access log, whose requests clients choose too.
        self.access_log_budget = LogBudget(clock, limits.access_log_rate, _BUDGET_LOG)
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
            # onConnect reads X-Forwarded-For itself (signaling.wire.addresses).
            trustXForwardedFor=0,
        )

    def untrusted_forwarding(self) -> None:
        """Count a request that carried X-Forwarded-For or Forwarded while no
        proxy is trusted; warn the first time."""
        stats = self.hub.stats
        stats.untrusted_forwarded += 1
        if stats.untrusted_forwarded == 1:
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

    @property
    def fast_paths(self) -> FastPaths:
        """The fast paths of the connections made from now on."""
        return self._fast_paths

    @fast_paths.setter
    def fast_paths(self, paths: FastPaths) -> None:
        self._fast_paths = paths
        self._share_options()

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
        made for this factory (with its fast paths).

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
        attributes: dict[str, Any] = {
            # Functions among them (perMessageCompressionAccept) must not bind.
            name: staticmethod(value) if callable(value) else value
            for name, value in compat.protocol_settings(self).items()
        }
        # Chosen once here, so that no message tests a switch.
        fast = attributes["fast_paths"] = self._fast_paths
        if not fast.read:
            attributes["dataReceived"] = base._data_received_by_autobahn
        if not fast.write:
            attributes["send_frame"] = base._send_message
            attributes["sendData"] = WebSocketServerProtocol.sendData
        self.protocol = type(  # type: ignore[assignment]
            base.__name__,
            (base,),
            {**attributes, "__module__": base.__module__, "__qualname__": base.__qualname__},
        )
