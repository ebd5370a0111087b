"""The admin API: look into a running server and act on its clients and rooms.

Plain Python over a :class:`~signaling.protocol.SignalingFactory` and its
:class:`~signaling.registry.RoomRegistry`.  The SSH manhole
(:mod:`signaling.manhole`) puts these functions in its namespace under short
names, but nothing here knows about SSH.  Call them in the reactor thread
(the manhole runs there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import messages
from .logs import ServerLogger
from .protocol import SignalingFactory, SignalingProtocol
from .registry import Room

_log = ServerLogger()

#: WebSocket close code for a client the operator kicked.
KICKED = 4000
#: WebSocket close code for the members of a room the operator closed.
ROOM_CLOSED = 4001
#: The longest close reason a close frame can carry, in UTF-8 bytes.
MAX_CLOSE_REASON_BYTES = 123


class UnknownClient(LookupError):
    """No open connection has this client id."""


class UnknownRoom(LookupError):
    """No room has this id (rooms exist only while they have members)."""


@dataclass(frozen=True)
class ClientInfo:
    """One open connection as the admin console shows it.

    ``connected_at`` is in seconds of the factory's clock (the epoch, when it
    is the reactor); ``connected_for`` is the time since.
    """

    client_id: str
    address: str
    room_id: str | None
    connected_at: float
    connected_for: float
    messages_in: int
    messages_out: int


@dataclass(frozen=True)
class Snapshot:
    """Live totals.  ``messages_*`` count every frame since start, closed
    connections included; ``uptime`` is seconds since the server started."""

    connections: int
    rooms: int
    members: int
    messages_in: int
    messages_out: int
    uptime: float


def _check_reason(reason: str) -> None:
    if not isinstance(reason, str):
        raise TypeError(f"reason must be a str, not {type(reason).__name__}")
    if len(reason.encode("utf-8")) > MAX_CLOSE_REASON_BYTES:
        raise ValueError(f"reason must fit in {MAX_CLOSE_REASON_BYTES} bytes of UTF-8")


class Admin:
    """The admin operations on one server (one factory and its registry)."""

    def __init__(self, factory: SignalingFactory) -> None:
        self.factory = factory
        self.registry = factory.registry

    def rooms(self) -> dict[str, list[str]]:
        """Every room and the ids of its members, in join order."""
        return {room.room_id: list(room.members) for room in self.registry.rooms()}

    def clients(self) -> list[ClientInfo]:
        """Every open connection, in a room or not, oldest first."""
        now = self.factory.clock.seconds()
        infos = [self._info(protocol, now) for protocol in self.factory.clients.values()]
        return sorted(infos, key=lambda info: info.connected_at)

    def client(self, client_id: str) -> ClientInfo:
        """Details of one open connection."""
        return self._info(self._protocol(client_id), self.factory.clock.seconds())

    def kick(self, client_id: str, reason: str = "kicked by the server operator") -> None:
        """Close one client's connection with close code :data:`KICKED`.

        Its room gets ``leave-client`` at once.
        """
        _check_reason(reason)
        protocol = self._protocol(client_id)
        _log.info("admin kick {client_id} reason={reason!r}", client_id=client_id, reason=reason)
        protocol.close_with(KICKED, reason)

    def close_room(self, room_id: str, reason: str = "room closed by the server operator") -> int:
        """Close the connection of every member of a room, with close code
        :data:`ROOM_CLOSED`; return how many were closed."""
        _check_reason(reason)
        room = self._room(room_id)
        local = [self.factory.clients.get(client_id) for client_id in room.members]
        protocols = [protocol for protocol in local if protocol is not None]
        _log.info(
            "admin close-room {room_id} members={members} reason={reason!r}",
            room_id=room_id,
            members=len(protocols),
            reason=reason,
        )
        for protocol in protocols:
            protocol.close_with(ROOM_CLOSED, reason)
        return len(protocols)

    def say(self, room_id: str, text: str) -> int:
        """Send ``server-message {text}`` to every member of a room; return
        how many members it went to."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        room = self._room(room_id)
        _log.info("admin say {room_id} members={members}", room_id=room_id, members=len(room))
        room.broadcast(messages.server_message(text))
        return len(room)

    def stats(self) -> Snapshot:
        """Connections, rooms, members, message totals and uptime, right now."""
        factory = self.factory
        open_connections = factory.clients.values()
        return Snapshot(
            connections=len(factory.clients),
            rooms=self.registry.room_count,
            members=self.registry.member_count,
            messages_in=factory.closed_messages_in
            + sum(protocol.messages_in for protocol in open_connections),
            messages_out=factory.closed_messages_out
            + sum(protocol.messages_out for protocol in open_connections),
            uptime=factory.clock.seconds() - factory.started_at,
        )

    def namespace(self) -> dict[str, Any]:
        """The names the admin console offers (documented in README.rst)."""
        functions: dict[str, Callable[..., Any]] = {
            "rooms": self.rooms,
            "clients": self.clients,
            "client": self.client,
            "kick": self.kick,
            "close_room": self.close_room,
            "say": self.say,
            "stats": self.stats,
        }
        return {**functions, "admin": self, "factory": self.factory, "registry": self.registry}

    def _protocol(self, client_id: str) -> SignalingProtocol:
        protocol = self.factory.clients.get(client_id)
        if protocol is None:
            raise UnknownClient(f"no open connection with client id {client_id!r}")
        return protocol

    def _room(self, room_id: str) -> Room:
        room = self.registry.room(room_id)
        if room is None:
            raise UnknownRoom(f"no room {room_id!r}")
        return room

    def _info(self, protocol: SignalingProtocol, now: float) -> ClientInfo:
        room = protocol.room
        return ClientInfo(
            client_id=protocol.client_id,
            address=protocol.client_address,
            room_id=room.room_id if room is not None else None,
            connected_at=protocol.connected_at,
            connected_for=now - protocol.connected_at,
            messages_in=protocol.messages_in,
            messages_out=protocol.messages_out,
        )
