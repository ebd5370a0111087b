"""The WebSocket side: one :class:`SignalingProtocol` per connected client."""

from __future__ import annotations

from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from . import messages
from .messages import Join, ProtocolError, Relay
from .registry import AlreadyInRoom, Room, RoomRegistry, new_client_id

_log = Logger()


class SignalingProtocol(WebSocketServerProtocol):
    """One client: parses its frames and dispatches to ``handle_*``."""

    factory: SignalingFactory
    client_id: str = ""
    room: Room | None = None
    connected_at: float = 0.0

    @property
    def client_address(self) -> str:
        """The client's address, e.g. ``tcp4:192.0.2.7:50412``; with ``--trust-proxy``,
        the address the trusted proxies put in X-Forwarded-For."""
        return self.peer or "unknown"

    def onConnect(self, request: ConnectionRequest) -> None:
        if self.factory.draining:
            raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "server is shutting down")

    def onOpen(self) -> None:
        self.client_id = new_client_id()
        self.connected_at = self.factory.clock.seconds()
        self.factory.clients[self.client_id] = self
        _log.info("connect {client_id} from {peer}", client_id=self.client_id, peer=self.peer)
        self.sendMessage(messages.notify_client_id(self.client_id))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.send_error(
                messages.UNSUPPORTED_FRAME, "binary frames are not supported; send JSON text"
            )
            return
        try:
            message = messages.parse(payload, self.factory.max_room_id_length)
        except ProtocolError as e:
            self.send_error(e.code, e.message, e.in_reply_to)
            return
        kind = type(message)
        if kind is Relay:
            self.handle_relay(message)  # type: ignore[arg-type]
        elif kind is Join:
            self.handle_join(message)  # type: ignore[arg-type]
        else:
            self.handle_leave()

    def handle_relay(self, message: Relay) -> None:
        room = self.room
        if room is None:
            self.send_error(
                messages.NOT_IN_ROOM, "join a room before sending " + message.type, message.type
            )
            return
        target = message.target
        if target == self.client_id or not room.send(
            target, messages.relayed(message.type, self.client_id, message.body)
        ):
            self.send_error(
                messages.UNKNOWN_CLIENT,
                "no other client with this id in your room",
                message.type,
                client_id=target,
            )

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
        self.room = room
        _log.info(
            "join {client_id} room={room_id} members={members}",
            client_id=self.client_id,
            room_id=room.room_id,
            members=len(room),
        )
        self.sendMessage(messages.joined(room.room_id, existing))

    def handle_leave(self) -> None:
        if self.room is None:
            self.send_error(messages.NOT_IN_ROOM, "not in a room", "leave")
            return
        self._leave_room()

    def _leave_room(self) -> None:
        room = self.factory.registry.leave(self.client_id)
        self.room = None
        if room is not None:
            _log.info(
                "leave {client_id} room={room_id} remaining={remaining}",
                client_id=self.client_id,
                room_id=room.room_id,
                remaining=len(room),
            )

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.client_id:
            return  # the opening handshake never completed
        self.factory.clients.pop(self.client_id, None)
        if self.room is not None:
            self._leave_room()
        _log.info(
            "disconnect {client_id} code={code} reason={reason!r} clean={clean}",
            client_id=self.client_id,
            code=code,
            reason=reason,
            clean=wasClean,
        )

    def deliver(self, data: bytes) -> None:
        """Member interface: queue one server frame for this client."""
        if self.state == self.STATE_OPEN:
            self.sendMessage(data)

    def send_error(
        self, code: str, text: str, in_reply_to: str | None = None, **details: Any
    ) -> None:
        _log.info(
            "error {client_id} {code}: {text}", client_id=self.client_id, code=code, text=text
        )
        if in_reply_to is not None:
            details["in_reply_to"] = in_reply_to
        self.sendMessage(messages.error(code, text, **details))


class SignalingFactory(WebSocketServerFactory):
    """Shares one :class:`RoomRegistry` among all connections.

    ``clients`` maps the id of every open connection (in a room or not) to
    its protocol; ``clock`` is the time source (the reactor by default).
    ``trust_proxy`` is how many proxies in front add to X-Forwarded-For.
    While ``draining`` (set as shutdown starts) new handshakes are refused.
    """

    protocol = SignalingProtocol  # type: ignore[assignment]

    def __init__(
        self,
        registry: RoomRegistry | None = None,
        *,
        clock: IReactorTime | None = None,
        max_message_size: int = 64 * 1024,
        max_room_id_length: int = messages.DEFAULT_MAX_ROOM_ID_LENGTH,
        trust_proxy: int = 0,
    ) -> None:
        super().__init__()
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.clock = clock
        self.registry = registry if registry is not None else RoomRegistry()
        self.clients: dict[str, SignalingProtocol] = {}
        self.draining = False
        self.max_room_id_length = max_room_id_length
        self.setProtocolOptions(
            maxMessagePayloadSize=max_message_size,
            maxFramePayloadSize=max_message_size,
            # Close with the proper code (1007, 1009, ...) instead of
            # dropping TCP, so clients learn why.
            failByDrop=False,
            # setProtocolOptions resets this to False when omitted.
            allowNullOrigin=True,
            # No HTML status page (it also honours ?redirect=, an open
            # redirect): a plain GET of /connect gets an HTTP error.
            webStatus=False,
            trustXForwardedFor=trust_proxy,
        )
