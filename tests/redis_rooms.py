"""Driving :class:`~signaling.backplane.rooms.RedisRooms` from a test's thread:
each call runs in the reactor thread (where the rooms live) and waits for it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from twisted.internet import reactor

from signaling.core.rooms import Identity, JoinDone, Joined, JoinRefused, Member

from .conftest import on_reactor, wait_for
from .redis_servers import SHARED_URL, shared_prefix
from .tools import missing

try:
    from signaling.backplane.redis import parse_url
    from signaling.backplane.rooms import RedisRooms
except ImportError as error:  # hiredis is not installed
    NO_CLIENT: str | None = f"{error}: pip install '.[redis]'"
else:
    NO_CLIENT = None


class RoomOnReactor:
    """A room handle whose every call runs in the reactor thread."""

    def __init__(self, room: Any) -> None:
        self._room = room
        self.room_id: str = room.room_id

    def send(self, target_id: str, data: bytes) -> bool:
        return on_reactor(self._room.send, target_id, data)  # type: ignore[no-any-return]

    def broadcast(self, data: bytes) -> int:
        return on_reactor(self._room.broadcast, data)  # type: ignore[no-any-return]

    def member_ids(self) -> list[str]:
        return on_reactor(self._room.member_ids)  # type: ignore[no-any-return]

    def __len__(self) -> int:
        return on_reactor(len, self._room)  # type: ignore[no-any-return]


def _wrap(room: Any) -> RoomOnReactor | None:
    return None if room is None else RoomOnReactor(room)


class RoomsOnReactor:
    """A Rooms whose every call runs in the reactor thread."""

    def __init__(self, rooms: Any) -> None:
        self.target = rooms

    def join(
        self,
        room_id: str,
        member: Member,
        done: JoinDone,
        identity: Identity | None = None,
        max_room_size: int = 0,
    ) -> None:
        def answered(outcome: Joined | JoinRefused) -> None:
            if isinstance(outcome, Joined):
                room = RoomOnReactor(outcome.room)
                outcome = Joined(room, outcome.existing, outcome.identities)  # type: ignore[arg-type]
            done(outcome)

        on_reactor(self.target.join, room_id, member, answered, identity, max_room_size)

    def leave(self, member: Member) -> None:
        on_reactor(self.target.leave, member)

    def room(self, room_id: str) -> RoomOnReactor | None:
        return _wrap(on_reactor(self.target.room, room_id))

    def room_of(self, client_id: str) -> RoomOnReactor | None:
        return _wrap(on_reactor(self.target.room_of, client_id))

    def rooms(self) -> Iterator[RoomOnReactor]:
        return iter([RoomOnReactor(r) for r in on_reactor(lambda: list(self.target.rooms()))])

    @property
    def room_count(self) -> int:
        return on_reactor(lambda: self.target.room_count)  # type: ignore[no-any-return]

    @property
    def member_count(self) -> int:
        return on_reactor(lambda: self.target.member_count)  # type: ignore[no-any-return]

    def settle(self) -> None:
        """Wait until every change started so far has taken effect here."""
        for _ in range(2):  # replies may start changes of their own (undoing a join)
            on_reactor(self.target.settled)


def require_redis_rooms() -> None:
    if NO_CLIENT is not None:
        missing(NO_CLIENT)


@contextlib.contextmanager
def nodes(
    count: int,
    url: str = SHARED_URL,
    clocks: list[Any] | None = None,
    each: list[dict[str, Any]] | None = None,
    **options: Any,
) -> Iterator[list[RoomsOnReactor]]:
    """``count`` RedisRooms (nodes) sharing a fresh prefix, started and
    registered; stopped after. ``clocks``: each node's clock for its timers
    (the reactor unless given); connections always use the reactor.
    ``each``: options of each node, over ``options``."""
    require_redis_rooms()
    with shared_prefix() as prefix:
        options.setdefault("retry_policy", lambda attempt: 0.05)
        made = [
            on_reactor(
                lambda clock=clock, own=own: RedisRooms(
                    parse_url(url), clock, prefix=prefix, reactor=reactor, **{**options, **own}
                )
            )
            for clock, own in zip(clocks or [reactor] * count, each or [{}] * count, strict=True)
        ]
        try:
            for rooms in made:
                on_reactor(rooms.start)
            for rooms in made:
                assert wait_for(lambda r=rooms: on_reactor(lambda: r.available)), "not registered"
            yield [RoomsOnReactor(rooms) for rooms in made]
        finally:
            for rooms in made:
                on_reactor(rooms.stop)
