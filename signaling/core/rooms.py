"""Room membership and delivery: the :class:`Rooms` boundary and its in-memory
implementation, :class:`LocalRooms`.

A session talks to rooms only through :class:`Rooms` and the :class:`Room`
handle a join gives it, and rooms talk to members only through
:class:`Member` (a client id and ``deliver(bytes)``). Membership (who is in
which room) is kept apart from delivery (frames handed to the members this
process holds), so an implementation may keep members on other processes:

- ``join`` completes through a callback, now or later, with :class:`Joined`
  or a :class:`JoinRefused`;
- ``Room.send`` returning False means "not in this process's view of the
  room", which a session answers with ``unknown_client``;
- ``new-client`` and ``leave-client`` notices are the implementation's to
  deliver: each member already in a room hears of each newcomer exactly
  once, and the newcomer's ``existing`` lists exactly the members it will
  not hear a ``new-client`` for;
- nothing is delivered to a member before its join's ``done`` (a client
  gets ``joined`` before any frame from its room).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from signaling.core import messages
from signaling.core.messages import ALREADY_IN_ROOM, ROOM_FULL, TOO_MANY_ROOMS, UNAVAILABLE

#: Fields shown to the other members beside a member's id (sub, name, metadata).
Identity = Mapping[str, Any]


class Member(Protocol):
    """Something a room can deliver frames to."""

    @property
    def client_id(self) -> str: ...

    def deliver(self, data: bytes) -> None:
        """Send one encoded server message to this member."""


class Room(Protocol):
    """A joined member's handle on its room (what the relay path uses)."""

    @property
    def room_id(self) -> str: ...

    def send(self, target_id: str, data: bytes) -> bool:
        """Deliver ``data`` to member ``target_id``; False if that member is
        not in this process's view of the room. Raises
        :class:`RoomsUnavailable` if the member is on another process that
        cannot be reached now."""

    def member_ids(self) -> list[str]:
        """The ids of the members, in the order they joined."""

    def broadcast(self, data: bytes) -> int:
        """Deliver ``data`` to every member that can be reached now; returns how many."""

    def __len__(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Joined:
    """A completed join: the room, and the ids of the members that were
    there before, in the order they joined; ``identities`` maps those of
    them that joined with an identity to it."""

    room: Room
    existing: list[str]
    identities: Mapping[str, Identity] = field(default_factory=dict)


class JoinRefused(Exception):
    """A join that did not happen: ``code`` is the ``error`` message's code,
    ``text`` its message, ``details`` its extra payload fields."""

    code = "join_refused"

    def __init__(self, text: str, **details: object) -> None:
        super().__init__(text)
        self.text = text
        self.details = details


class AlreadyInRoom(JoinRefused):
    """The member is in a room already (one room per connection)."""

    code = ALREADY_IN_ROOM

    def __init__(self, room_id: str) -> None:
        super().__init__("already in a room; send leave first", room_id=room_id)
        self.room_id = room_id


class RoomFull(JoinRefused):
    """The room has ``max_room_size`` members already."""

    code = ROOM_FULL

    def __init__(self, limit: int) -> None:
        super().__init__(f"the room has its maximum of {limit} members")
        self.limit = limit


class TooManyRooms(JoinRefused):
    """Joining would create a room beyond ``max_rooms``."""

    code = TOO_MANY_ROOMS

    def __init__(self, limit: int) -> None:
        super().__init__("the server has no room for another room")
        self.limit = limit


class RoomsUnavailable(JoinRefused):
    """The rooms cannot do this now (their shared store is unreachable):
    a join refused, or raised by ``Room.send``/``broadcast`` for a member
    on another process."""

    code = UNAVAILABLE


@dataclass(frozen=True, slots=True)
class RoomsHealth:
    """Whether the rooms can serve joins and relays everywhere now; ``detail``
    says why not (``/healthz``)."""

    ok: bool
    detail: str
    #: This process's id among those sharing the rooms, if they are shared.
    node: str | None = None


HEALTHY = RoomsHealth(True, "in memory")


#: What ``Rooms.join`` calls with its outcome, exactly once.
JoinDone = Callable[["Joined | JoinRefused"], None]


class Rooms(Protocol):
    """Where sessions meet. Implementations: :class:`LocalRooms` (one
    process); the same contract is tested against each (tests/test_rooms.py).

    Members must not join or leave from inside ``deliver``.
    """

    def join(
        self,
        room_id: str,
        member: Member,
        done: JoinDone,
        identity: Identity | None = None,
        max_room_size: int = 0,
    ) -> None:
        """Put ``member`` in ``room_id``, tell the members already there
        (``new-client``, with ``identity``), and call ``done`` once, now or
        later; deliver nothing to ``member`` before that. ``max_room_size``:
        refuse if the room has that many members already (0: only the
        rooms' own bound)."""

    def leave(self, member: Member) -> None:
        """Take ``member`` out of its room and tell the rest
        (``leave-client``); a room left empty is deleted. Nothing if the
        member is in no room; a join still pending for it is undone."""

    def room(self, room_id: str) -> Room | None:
        """The room ``room_id`` as this process sees it, if it exists."""

    def room_of(self, client_id: str) -> Room | None:
        """The room a member of this process is in."""

    def rooms(self) -> Iterator[Room]:
        """Every room this process knows (a snapshot)."""

    @property
    def room_count(self) -> int: ...

    @property
    def member_count(self) -> int: ...

    def health(self) -> RoomsHealth:
        """Whether joins and relays can be served everywhere now."""

    def counters(self) -> dict[str, int]:
        """The implementation's own figures, for ``/metrics``."""


class LocalRoom:
    """A named set of members, all in this process; exists while it has members."""

    __slots__ = ("members", "room_id")

    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        self.members: dict[str, Member] = {}

    def send(self, target_id: str, data: bytes) -> bool:
        member = self.members.get(target_id)
        if member is None:
            return False
        member.deliver(data)
        return True

    def broadcast(self, data: bytes) -> int:
        members = list(self.members.values())
        for member in members:
            member.deliver(data)
        return len(members)

    def member_ids(self) -> list[str]:
        return list(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"<LocalRoom {self.room_id!r} members={len(self.members)}>"


class LocalRooms:
    """Every room in this process's memory; joins complete at once.

    ``max_room_size`` and ``max_rooms`` bound what joins may create; 0 means
    no bound.
    """

    def __init__(self, max_room_size: int = 0, max_rooms: int = 0) -> None:
        self.max_room_size = max_room_size
        self.max_rooms = max_rooms
        self._rooms: dict[str, LocalRoom] = {}
        self._room_of: dict[str, LocalRoom] = {}
        #: The identities members joined with (only those that had one).
        self._identities: dict[str, Identity] = {}

    def join(
        self,
        room_id: str,
        member: Member,
        done: JoinDone,
        identity: Identity | None = None,
        max_room_size: int = 0,
    ) -> None:
        try:
            room, existing = self._add(room_id, member, max_room_size)
        except JoinRefused as refused:
            done(refused)
            return
        identities = self._identities
        if identity:
            identities[member.client_id] = identity
        if existing:
            notice = messages.new_client(member.client_id, identity)
            for other_id in existing:
                room.members[other_id].deliver(notice)
        if identities:
            known = {i: identities[i] for i in existing if i in identities}
            done(Joined(room, existing, known))
        else:
            done(Joined(room, existing))

    def _add(
        self, room_id: str, member: Member, max_room_size: int = 0
    ) -> tuple[LocalRoom, list[str]]:
        """The membership change alone: no frame is delivered."""
        client_id = member.client_id
        current = self._room_of.get(client_id)
        if current is not None:
            raise AlreadyInRoom(current.room_id)
        room = self._rooms.get(room_id)
        limit = tighter(self.max_room_size, max_room_size)
        if room is None:
            if self.max_rooms and len(self._rooms) >= self.max_rooms:
                raise TooManyRooms(self.max_rooms)
            room = self._rooms[room_id] = LocalRoom(room_id)
        elif limit and len(room.members) >= limit:
            raise RoomFull(limit)
        existing = list(room.members)
        room.members[client_id] = member
        self._room_of[client_id] = room
        return room, existing

    def leave(self, member: Member) -> None:
        client_id = member.client_id
        room = self._room_of.pop(client_id, None)
        if room is None:
            return
        del room.members[client_id]
        if self._identities:
            self._identities.pop(client_id, None)
        if room.members:
            room.broadcast(messages.leave_client(client_id))
        elif self._rooms.get(room.room_id) is room:
            del self._rooms[room.room_id]

    def room(self, room_id: str) -> LocalRoom | None:
        return self._rooms.get(room_id)

    def room_of(self, client_id: str) -> LocalRoom | None:
        return self._room_of.get(client_id)

    def rooms(self) -> Iterator[LocalRoom]:
        return iter(list(self._rooms.values()))

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    @property
    def member_count(self) -> int:
        return len(self._room_of)

    def health(self) -> RoomsHealth:
        return HEALTHY

    def counters(self) -> dict[str, int]:
        return {}


def tighter(one: int, other: int) -> int:
    """The smaller of two bounds where 0 means none."""
    if not one:
        return other
    if not other:
        return one
    return min(one, other)
