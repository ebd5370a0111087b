"""The admin API: look into a running server and act on its clients and rooms.

Plain Python over a server's :class:`~signaling.core.hub.Hub` (its sessions
and rooms). The SSH manhole (:mod:`signaling.admin.manhole`) puts these
functions in its namespace under short names, but nothing here knows about
SSH. Call them in the reactor thread (the manhole runs there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from signaling.core import messages
from signaling.core.hub import Hub
from signaling.core.rooms import Room
from signaling.core.session import Session
from signaling.logs import ServerLogger

_log = ServerLogger()

#: WebSocket close code for a client the operator kicked.
KICKED = 4000
#: WebSocket close code for the members of a room the operator closed.
ROOM_CLOSED = 4002
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
    """The admin operations on one server.

    ``server`` is its :class:`~signaling.core.hub.Hub`, or anything with a
    ``hub`` attribute (the :class:`~signaling.wire.protocol.SignalingFactory`).
    """

    def __init__(self, server: Hub | Any) -> None:
        self.factory = None if isinstance(server, Hub) else server
        self.hub: Hub = server if isinstance(server, Hub) else server.hub

    def rooms(self) -> dict[str, list[str]]:
        """Every room with a member in this process and the ids of its
        members (on any process), in join order."""
        return {room.room_id: room.member_ids() for room in self.hub.rooms.rooms()}

    def cluster_rooms(self) -> Any:
        """With --redis: a Deferred of every room in the cluster and its
        members; without it, the same as :meth:`rooms`."""
        cluster = getattr(self.hub.rooms, "cluster_rooms", None)
        return self.rooms() if cluster is None else cluster()

    def clients(self) -> list[ClientInfo]:
        """Every open connection, in a room or not, oldest first."""
        now = self.hub.clock.seconds()
        infos = [self._info(session, now) for session in self.hub.sessions.values()]
        return sorted(infos, key=lambda info: info.connected_at)

    def client(self, client_id: str) -> ClientInfo:
        """Details of one open connection."""
        return self._info(self._session(client_id), self.hub.clock.seconds())

    def kick(self, client_id: str, reason: str = "kicked by the server operator") -> None:
        """Close one client's connection with close code :data:`KICKED`.

        Its room gets ``leave-client`` at once.
        """
        _check_reason(reason)
        session = self._session(client_id)
        _log.info("admin kick {client_id} reason={reason!r}", client_id=client_id, reason=reason)
        session.close(KICKED, reason)

    def close_room(self, room_id: str, reason: str = "room closed by the server operator") -> Any:
        """Close the connection of every member of a room, with close code
        :data:`ROOM_CLOSED`; return how many were closed. With --redis,
        members on every process are closed (each process closes its own when
        it hears), and the return is a Deferred of the room's member count."""
        _check_reason(reason)
        cluster = getattr(self.hub.rooms, "close_room", None)
        if cluster is not None:
            _log.info(
                "admin close-room {room_id} (cluster) reason={reason!r}",
                room_id=room_id,
                reason=reason,
            )
            return cluster(room_id, reason)
        room = self._room(room_id)
        local = [self.hub.sessions.get(client_id) for client_id in room.member_ids()]
        sessions = [session for session in local if session is not None]
        _log.info(
            "admin close-room {room_id} members={members} reason={reason!r}",
            room_id=room_id,
            members=len(sessions),
            reason=reason,
        )
        for session in sessions:
            session.close(ROOM_CLOSED, reason)
        return len(sessions)

    def say(self, room_id: str, text: str) -> int:
        """Send ``server-message {text}`` to every member of a room; return
        how many members it went to."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        room = self._room(room_id)
        _log.info("admin say {room_id} members={members}", room_id=room_id, members=len(room))
        return room.broadcast(messages.server_message(text))

    def stats(self) -> Snapshot:
        """Connections, rooms, members, message totals and uptime, right now."""
        hub = self.hub
        return Snapshot(
            connections=len(hub.sessions),
            rooms=hub.rooms.room_count,
            members=hub.rooms.member_count,
            messages_in=hub.messages_in(),
            messages_out=hub.messages_out(),
            uptime=hub.uptime(),
        )

    def namespace(self) -> dict[str, Any]:
        """The names the admin console offers (documented in README.rst)."""
        functions: dict[str, Callable[..., Any]] = {
            "rooms": self.rooms,
            "cluster_rooms": self.cluster_rooms,
            "clients": self.clients,
            "client": self.client,
            "kick": self.kick,
            "close_room": self.close_room,
            "say": self.say,
            "stats": self.stats,
        }
        objects = {"admin": self, "hub": self.hub, "registry": self.hub.rooms}
        if self.factory is not None:
            objects["factory"] = self.factory
        return {**functions, **objects}

    def _session(self, client_id: str) -> Session:
        session = self.hub.sessions.get(client_id)
        if session is None:
            raise UnknownClient(f"no open connection with client id {client_id!r}")
        return session

    def _room(self, room_id: str) -> Room:
        room = self.hub.rooms.room(room_id)
        if room is None:
            raise UnknownRoom(f"no room {room_id!r}")
        return room

    def _info(self, session: Session, now: float) -> ClientInfo:
        room = session.room
        return ClientInfo(
            client_id=session.client_id,
            address=session.address,
            room_id=room.room_id if room is not None else None,
            connected_at=session.connected_at,
            connected_for=now - session.connected_at,
            messages_in=session.messages_in,
            messages_out=session.messages_out,
        )
