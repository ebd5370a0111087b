"""Test doubles for the core: a room member, a session's wire, and a Rooms
whose joins wait until the test lets them complete."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from signaling.core.rooms import (
    Identity,
    JoinDone,
    Joined,
    JoinRefused,
    LocalRoom,
    LocalRooms,
    Member,
)

if TYPE_CHECKING:
    from signaling.core.session import Session


class FakeMember:
    """A room member that records every frame delivered to it."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.received: list[bytes] = []

    def deliver(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.received.append(data)

    def decoded(self) -> list[Any]:
        return [json.loads(d) for d in self.received]

    def __repr__(self) -> str:
        return f"<FakeMember {self.client_id}>"


class FakeWire:
    """A session's connection: records the frames sent and the calls made.

    Like the real one, ``close`` and ``abort`` on an open wire tell the
    session at once (``Session.closing``), and a closed wire sends nothing.
    ``accepting = False`` makes ``send_frame`` refuse frames while open (a
    client too far behind).
    """

    def __init__(self) -> None:
        self.session: Session | None = None
        self.open = True
        self.accepting = True
        self.sent: list[bytes] = []
        #: (code, reason, timeout) of every ``close`` call.
        self.closes: list[tuple[int, str, float | None]] = []
        self.reading = True
        self.aborted = False
        self._taken = 0

    def send_frame(self, data: bytes) -> bool:
        assert isinstance(data, bytes)
        if not self.open or not self.accepting:
            return False
        self.sent.append(data)
        return True

    def close(self, code: int, reason: str, timeout: float | None = None) -> None:
        self.closes.append((code, reason, timeout))
        self._end()

    def stop_reading(self) -> None:
        self.reading = False

    def abort(self) -> None:
        self.aborted = True
        self._end()

    def _end(self) -> None:
        if self.open:
            self.open = False
            if self.session is not None:
                self.session.closing(self)

    @property
    def frames(self) -> list[Any]:
        """Every frame sent, decoded."""
        return [json.loads(d) for d in self.sent]

    def take(self) -> list[Any]:
        """The frames sent since the last ``take``, decoded."""
        new = self.sent[self._taken :]
        self._taken = len(self.sent)
        return [json.loads(d) for d in new]


class HeldRooms:
    """A :class:`~signaling.core.rooms.Rooms` whose joins wait in ``pending``
    until the test completes them with :meth:`release` (the join is then
    made on a :class:`LocalRooms`) or :meth:`refuse`.

    A leave does not cancel a held join: its answer is taken to be on its
    way already, the case a session must cope with by undoing the join.
    """

    def __init__(self, max_room_size: int = 0, max_rooms: int = 0) -> None:
        self.local = LocalRooms(max_room_size=max_room_size, max_rooms=max_rooms)
        self.pending: list[tuple[str, Member, JoinDone]] = []
        #: The identity and max_room_size of each held join, by client id.
        self.options: dict[str, dict[str, Any]] = {}
        #: The client id of every ``leave`` call, in order.
        self.left: list[str] = []

    def join(
        self,
        room_id: str,
        member: Member,
        done: JoinDone,
        identity: Identity | None = None,
        max_room_size: int = 0,
    ) -> None:
        self.pending.append((room_id, member, done))
        self.options[member.client_id] = {"identity": identity, "max_room_size": max_room_size}

    def release(self, index: int = 0) -> Joined | JoinRefused:
        """Complete the ``index``-th held join as LocalRooms decides."""
        room_id, member, done = self.pending.pop(index)
        outcomes: list[Joined | JoinRefused] = []
        self.local.join(room_id, member, outcomes.append, **self.options.pop(member.client_id, {}))
        [outcome] = outcomes
        done(outcome)
        return outcome

    def release_all(self) -> None:
        while self.pending:
            self.release()

    def refuse(self, refusal: JoinRefused, index: int = 0) -> None:
        """Complete the ``index``-th held join with ``refusal``."""
        _, _, done = self.pending.pop(index)
        done(refusal)

    def leave(self, member: Member) -> None:
        self.left.append(member.client_id)
        self.local.leave(member)

    def room(self, room_id: str) -> LocalRoom | None:
        return self.local.room(room_id)

    def room_of(self, client_id: str) -> LocalRoom | None:
        return self.local.room_of(client_id)

    def rooms(self) -> Iterator[LocalRoom]:
        return self.local.rooms()

    @property
    def room_count(self) -> int:
        return self.local.room_count

    @property
    def member_count(self) -> int:
        return self.local.member_count
