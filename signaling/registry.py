"""Rooms and their members: plain Python state shared by every connection.

The registry never touches a socket.  It talks to members only through the
:class:`Member` interface (a client id and ``deliver(bytes)``), so a member
may be a local WebSocket connection or a proxy for a client that lives in
another process.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from typing import Protocol

from . import messages


class Member(Protocol):
    """Something a room can deliver frames to."""

    @property
    def client_id(self) -> str: ...

    def deliver(self, data: bytes) -> None:
        """Send one encoded server message to this member."""


#: Random bytes in a client id.
CLIENT_ID_BYTES = 16


class _ClientIds:
    """Client ids cut from a buffer of the OS's randomness, refilled
    ``batch`` ids at a time: one system call per ``batch`` connections
    rather than one each (a noticeable share of accepting a connection)."""

    def __init__(self, batch: int = 256) -> None:
        self._batch = batch
        self._pool = b""
        self._offset = 0
        os.register_at_fork(after_in_child=self.discard)

    def discard(self) -> None:
        """Forget the buffer (a forked child must not repeat its parent's ids)."""
        self._pool, self._offset = b"", 0

    def __call__(self) -> str:
        start = self._offset
        if start >= len(self._pool):
            self._pool, start = os.urandom(CLIENT_ID_BYTES * self._batch), 0
        self._offset = end = start + CLIENT_ID_BYTES
        return base64.urlsafe_b64encode(self._pool[start:end]).rstrip(b"=").decode()


#: A unique, unguessable, URL-safe client id (128 random bits).
new_client_id = _ClientIds()


class AlreadyInRoom(Exception):
    """The member is already in a room (one room per connection)."""


class RoomFull(Exception):
    """The room has ``max_room_size`` members already."""


class TooManyRooms(Exception):
    """Joining would create a room beyond ``max_rooms``."""


class Room:
    """A named set of members; exists only while it has members."""

    __slots__ = ("members", "room_id")

    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        self.members: dict[str, Member] = {}

    def send(self, target_id: str, data: bytes) -> bool:
        """Deliver ``data`` to one member; False if no such member is here."""
        member = self.members.get(target_id)
        if member is None:
            return False
        member.deliver(data)
        return True

    def broadcast(self, data: bytes) -> None:
        for member in list(self.members.values()):
            member.deliver(data)

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"<Room {self.room_id!r} members={len(self.members)}>"


class RoomRegistry:
    """All rooms, keyed by room id, and the room of every member.

    ``max_room_size`` and ``max_rooms`` bound what joins may create; 0 means
    no bound.
    """

    def __init__(self, max_room_size: int = 0, max_rooms: int = 0) -> None:
        self.max_room_size = max_room_size
        self.max_rooms = max_rooms
        self._rooms: dict[str, Room] = {}
        self._room_of: dict[str, Room] = {}

    def join(self, room_id: str, member: Member) -> tuple[Room, list[str]]:
        """Put ``member`` in ``room_id`` and tell the members already there.

        Returns the room and the ids of the members that were there before,
        in the order they joined.  Each of them receives one ``new-client``.
        Members must not join or leave rooms from inside ``deliver``.
        """
        client_id = member.client_id
        if client_id in self._room_of:
            raise AlreadyInRoom(self._room_of[client_id].room_id)
        room = self._rooms.get(room_id)
        if room is None:
            if self.max_rooms and len(self._rooms) >= self.max_rooms:
                raise TooManyRooms(self.max_rooms)
            room = self._rooms[room_id] = Room(room_id)
        elif self.max_room_size and len(room.members) >= self.max_room_size:
            raise RoomFull(self.max_room_size)
        existing = list(room.members)
        if existing:
            room.broadcast(messages.new_client(client_id))
        room.members[client_id] = member
        self._room_of[client_id] = room
        return room, existing

    def leave(self, client_id: str) -> Room | None:
        """Take a member out of its room; tell the rest, or delete the room.

        Returns the room it left, or None if it was in no room.
        """
        room = self._room_of.pop(client_id, None)
        if room is None:
            return None
        del room.members[client_id]
        if room.members:
            room.broadcast(messages.leave_client(client_id))
        elif self._rooms.get(room.room_id) is room:
            del self._rooms[room.room_id]
        return room

    def room(self, room_id: str) -> Room | None:
        return self._rooms.get(room_id)

    def room_of(self, client_id: str) -> Room | None:
        return self._room_of.get(client_id)

    def rooms(self) -> Iterator[Room]:
        return iter(list(self._rooms.values()))

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    @property
    def member_count(self) -> int:
        return len(self._room_of)
