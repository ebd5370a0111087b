"""The contract of the :class:`~signaling.core.rooms.Rooms` boundary, run
against every implementation.

Each test gets a :class:`Harness` per implementation (the ``harness``
fixture, or ``implementation`` for one with limits) and uses the boundary
alone: ``join``/``leave``, the ``Room`` handles joins give, ``room()``,
``room_of()``, ``rooms()``, ``room_count`` and ``member_count``. Joins may
complete later than ``join`` returns; ``Harness.settle`` waits until every
join and leave started so far has taken effect.

To test another implementation, add a context manager that yields its
harness to :data:`IMPLEMENTATIONS`.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from signaling.core import messages
from signaling.core.rooms import (
    AlreadyInRoom,
    Joined,
    JoinRefused,
    LocalRooms,
    RoomFull,
    Rooms,
    TooManyRooms,
)

from .fakes import FakeMember
from .redis_rooms import nodes

Outcomes = list[Joined | JoinRefused]


@dataclass
class Harness:
    """One implementation of Rooms, and how to drive it in a test."""

    rooms: Rooms
    #: Returns once every join and leave started so far has taken effect.
    settle: Callable[[], None]

    def members(self, *names: str) -> list[FakeMember]:
        return [FakeMember(name) for name in names]

    def start_join(self, room_id: str, member: FakeMember, **options: Any) -> Outcomes:
        """Start a join; the list gets what ``done`` is called with.
        ``options``: ``identity``, ``max_room_size``."""
        outcomes: Outcomes = []
        self.rooms.join(room_id, member, outcomes.append, **options)
        return outcomes

    def join(self, room_id: str, member: FakeMember, **options: Any) -> Joined | JoinRefused:
        """Join and settle; ``done`` must have been called exactly once."""
        outcomes = self.start_join(room_id, member, **options)
        self.settle()
        assert len(outcomes) == 1, outcomes
        return outcomes[0]

    def joined(self, room_id: str, member: FakeMember, **options: Any) -> Joined:
        outcome = self.join(room_id, member, **options)
        assert isinstance(outcome, Joined), outcome
        assert outcome.room.room_id == room_id
        return outcome

    def refused(self, room_id: str, member: FakeMember, **options: Any) -> JoinRefused:
        outcome = self.join(room_id, member, **options)
        assert isinstance(outcome, JoinRefused), outcome
        return outcome

    def leave(self, member: FakeMember) -> None:
        self.rooms.leave(member)
        self.settle()

    def member_ids(self, room_id: str) -> list[str] | None:
        """The members of ``room_id``, or None if there is no such room."""
        room = self.rooms.room(room_id)
        return None if room is None else room.member_ids()

    def room_ids(self) -> list[str]:
        return sorted(room.room_id for room in self.rooms.rooms())


@contextlib.contextmanager
def local_rooms(max_room_size: int, max_rooms: int) -> Iterator[Harness]:
    yield Harness(LocalRooms(max_room_size=max_room_size, max_rooms=max_rooms), lambda: None)


@contextlib.contextmanager
def redis_rooms(max_room_size: int, max_rooms: int) -> Iterator[Harness]:
    with nodes(1, max_room_size=max_room_size, max_rooms=max_rooms) as [rooms]:
        yield Harness(rooms, rooms.settle)  # type: ignore[arg-type]


#: Makes a harness, given ``max_room_size`` and ``max_rooms`` (0: no bound).
Implementation = Callable[[int, int], AbstractContextManager[Harness]]

#: Every implementation of the boundary; each test runs against each.
IMPLEMENTATIONS: dict[str, Implementation] = {
    "local": local_rooms,
    "redis": redis_rooms,
}


@pytest.fixture(params=list(IMPLEMENTATIONS))
def implementation(request: pytest.FixtureRequest) -> Implementation:
    if request.param == "redis":
        request.getfixturevalue("reactor_thread")
    return IMPLEMENTATIONS[request.param]


@pytest.fixture
def harness(implementation: Implementation) -> Iterator[Harness]:
    with implementation(0, 0) as made:
        yield made


def ids(*members: FakeMember) -> list[str]:
    return [m.client_id for m in members]


def new_client(member: FakeMember) -> dict[str, Any]:
    return {"type": "new-client", "payload": {"client_id": member.client_id}}


def leave_client(member: FakeMember) -> dict[str, Any]:
    return {"type": "leave-client", "payload": {"client_id": member.client_id}}


def clear(*members: FakeMember) -> None:
    for m in members:
        m.received.clear()


# --------------------------------------------------------------------------
# join
# --------------------------------------------------------------------------


def test_no_rooms_at_first(harness: Harness) -> None:
    rooms = harness.rooms
    assert rooms.room_count == 0
    assert rooms.member_count == 0
    assert rooms.room("r") is None
    assert rooms.room_of("a") is None
    assert list(rooms.rooms()) == []


def test_first_join_creates_the_room(harness: Harness) -> None:
    [a] = harness.members("a")
    joined = harness.joined("r", a)
    assert joined.existing == []
    assert joined.room.member_ids() == ids(a)
    assert len(joined.room) == 1
    assert harness.member_ids("r") == ids(a)
    room_of = harness.rooms.room_of(a.client_id)
    assert room_of is not None and room_of.room_id == "r"
    assert harness.rooms.room_count == 1
    assert harness.rooms.member_count == 1
    assert harness.room_ids() == ["r"]
    assert a.received == []  # the rooms send the newcomer nothing


def test_join_tells_the_members_already_there(harness: Harness) -> None:
    a, b, c = harness.members("a", "b", "c")
    harness.joined("r", a)

    assert harness.joined("r", b).existing == ids(a)
    assert a.decoded() == [new_client(b)]
    assert a.received == [messages.new_client(b.client_id)]
    assert b.received == []

    joined = harness.joined("r", c)
    assert joined.existing == ids(a, b)  # in join order
    assert a.decoded() == [new_client(b), new_client(c)]
    assert b.decoded() == [new_client(c)]
    assert c.received == []
    assert joined.room.member_ids() == ids(a, b, c)
    assert len(joined.room) == 3
    assert harness.rooms.room_count == 1
    assert harness.rooms.member_count == 3


def test_existing_is_in_join_order_not_sorted(harness: Harness) -> None:
    members = harness.members("zeta", "alpha", "mu", "beta")
    for i, m in enumerate(members):
        assert harness.joined("r", m).existing == ids(*members[:i])
    assert harness.member_ids("r") == ids(*members)


def test_existing_is_a_snapshot(harness: Harness) -> None:
    a, b, c = harness.members("a", "b", "c")
    harness.joined("r", a)
    existing = harness.joined("r", b).existing
    harness.joined("r", c)
    harness.leave(a)
    assert existing == ids(a)


def test_twenty_members_each_pair_meets_once(harness: Harness) -> None:
    members = harness.members(*(f"m{i:02d}" for i in range(20)))
    for i, m in enumerate(members):
        joined = harness.joined("big", m)
        assert joined.existing == ids(*members[:i])
        assert len(joined.room) == i + 1

    for i, m in enumerate(members):
        # Each member hears of exactly the members that joined after it, in order.
        assert m.decoded() == [new_client(x) for x in members[i + 1 :]]
    for early, late in itertools.combinations(members, 2):
        assert early.decoded().count(new_client(late)) == 1
        assert late.decoded().count(new_client(early)) == 0
    assert sum(len(m.received) for m in members) == 20 * 19 // 2
    assert harness.rooms.member_count == 20
    assert harness.rooms.room_count == 1


def test_joins_started_together_each_pair_meets_once(harness: Harness) -> None:
    """However joins started at once interleave, of every two members one
    lists the other in ``existing`` and the other hears ``new-client``."""
    members = harness.members(*(f"m{i}" for i in range(8)))
    outcomes = [harness.start_join("r", m) for m in members]
    harness.settle()

    existing: dict[str, list[str]] = {}
    for m, done in zip(members, outcomes, strict=True):
        assert len(done) == 1
        [joined] = done
        assert isinstance(joined, Joined)
        existing[m.client_id] = joined.existing
    room_ids = harness.member_ids("r")
    assert room_ids is not None and sorted(room_ids) == sorted(ids(*members))
    for x, y in itertools.permutations(members, 2):
        x_told_of_y = x.decoded().count(new_client(y))
        assert x_told_of_y + (y.client_id in existing[x.client_id]) == 1, (x, y)
    for m in members:
        # existing follows the order of the room's members
        assert existing[m.client_id] == [i for i in room_ids if i in existing[m.client_id]]


def test_join_in_the_same_room_again_is_refused(harness: Harness) -> None:
    a, b = harness.members("a", "b")
    harness.joined("r", a)
    harness.joined("r", b)
    clear(a, b)

    refused = harness.refused("r", a)
    assert isinstance(refused, AlreadyInRoom)
    assert refused.code == messages.ALREADY_IN_ROOM
    assert refused.room_id == "r"
    assert refused.details == {"room_id": "r"}
    assert harness.member_ids("r") == ids(a, b)
    assert a.received == [] and b.received == []
    assert harness.rooms.member_count == 2
    assert harness.rooms.room_count == 1


def test_join_in_another_room_is_refused_naming_the_room(harness: Harness) -> None:
    a, x = harness.members("a", "x")
    harness.joined("r", a)
    harness.joined("other", x)

    refused = harness.refused("other", a)
    assert isinstance(refused, AlreadyInRoom)
    assert refused.room_id == "r"  # the room it is in, not the one it asked for
    room_of = harness.rooms.room_of(a.client_id)
    assert room_of is not None and room_of.room_id == "r"
    assert harness.member_ids("r") == ids(a)
    assert harness.member_ids("other") == ids(x)
    assert x.received == [] and a.received == []

    assert isinstance(harness.refused("brand-new", a), AlreadyInRoom)
    assert harness.rooms.room("brand-new") is None  # no empty room left behind
    assert harness.rooms.room_count == 2
    assert harness.rooms.member_count == 2


def test_already_in_room_goes_by_client_id(harness: Harness) -> None:
    [a] = harness.members("a")
    harness.joined("r", a)
    assert isinstance(harness.refused("r2", FakeMember("a")), AlreadyInRoom)
    assert harness.rooms.room("r2") is None
    assert harness.member_ids("r") == ids(a)


def test_rejoin_the_same_room(harness: Harness) -> None:
    a, b = harness.members("a", "b")
    harness.joined("r", a)
    harness.joined("r", b)
    harness.leave(a)
    clear(a, b)

    joined = harness.joined("r", a)
    assert joined.existing == ids(b)
    assert joined.room.member_ids() == ids(b, a)
    room_of = harness.rooms.room_of(a.client_id)
    assert room_of is not None and room_of.room_id == "r"
    assert b.decoded() == [new_client(a)]
    assert a.received == []


def test_rejoin_another_room(harness: Harness) -> None:
    a, b = harness.members("a", "b")
    harness.joined("r", a)
    harness.leave(a)
    assert harness.rooms.room("r") is None
    harness.joined("s", b)

    joined = harness.joined("s", a)
    assert joined.existing == ids(b)
    room_of = harness.rooms.room_of(a.client_id)
    assert room_of is not None and room_of.room_id == "s"
    assert harness.rooms.room("r") is None
    assert b.decoded() == [new_client(a)]
    assert a.received == []


def test_rejoin_a_deleted_room_makes_it_anew(harness: Harness) -> None:
    a, b = harness.members("a", "b")
    harness.joined("r", a)
    harness.joined("r", b)
    harness.leave(a)
    harness.leave(b)
    clear(a, b)
    joined = harness.joined("r", a)
    assert joined.existing == []
    assert harness.member_ids("r") == ids(a)
    assert a.received == [] and b.received == []


def test_done_is_called_once_per_join(harness: Harness) -> None:
    a, b, c = harness.members("a", "b", "c")
    calls = [
        harness.start_join("r", a),
        harness.start_join("r", b),
        harness.start_join("r", a),  # refused: already in the room
        harness.start_join("s", c),
        harness.start_join("r", c),  # refused: in "s" (or "r", had that come first)
    ]
    harness.settle()
    harness.settle()
    assert [len(outcomes) for outcomes in calls] == [1] * 5
    assert isinstance(calls[0][0], Joined)
    assert isinstance(calls[1][0], Joined)
    assert isinstance(calls[2][0], AlreadyInRoom)
    assert sum(isinstance(o[0], Joined) for o in calls[3:]) == 1
    assert sum(isinstance(o[0], AlreadyInRoom) for o in calls[3:]) == 1
    harness.leave(a)
    harness.leave(b)
    harness.leave(c)
    assert [len(outcomes) for outcomes in calls] == [1] * 5  # leaving calls none again


def test_the_newcomer_hears_nothing_of_itself(harness: Harness) -> None:
    members = harness.members("a", "b", "c", "d")
    for m in members:
        harness.joined("r", m)
    harness.leave(members[1])
    harness.joined("r", members[1])
    harness.leave(members[0])
    for m in members:
        assert all(frame["payload"]["client_id"] != m.client_id for frame in m.decoded()), m


# --------------------------------------------------------------------------
# leave
# --------------------------------------------------------------------------


def test_nothing_reaches_a_member_before_its_join_completes(harness: Harness) -> None:
    """A client must get ``joined`` before any frame from its room (a relay
    or a notice), so nothing may be delivered to a member before ``done``."""
    a, b, c = harness.members("a", "b", "c")
    harness.joined("r", a)
    received_before_done: list[int] = []

    def done(outcome: Joined | JoinRefused) -> None:
        received_before_done.append(len(b.received))

    harness.rooms.join("r", b, done)
    harness.rooms.join("r", c, lambda outcome: None)
    room = harness.rooms.room("r")
    assert room is not None
    room.send("b", b"early")  # b may or may not be in this view yet
    harness.settle()
    assert received_before_done == [0]


def test_leave_tells_the_rest_once_each(harness: Harness) -> None:
    a, b, c = harness.members("a", "b", "c")
    room = None
    for m in (a, b, c):
        room = harness.joined("r", m).room
    clear(a, b, c)

    harness.leave(b)
    assert a.decoded() == [leave_client(b)]
    assert c.decoded() == [leave_client(b)]
    assert a.received == [messages.leave_client(b.client_id)]
    assert b.received == []  # the leaver is not told of itself
    assert harness.member_ids("r") == ids(a, c)
    assert room is not None and room.member_ids() == ids(a, c) and len(room) == 2
    assert harness.rooms.room_of(b.client_id) is None
    assert harness.rooms.member_count == 2
    assert harness.rooms.room_count == 1


def test_the_last_leave_deletes_the_room(harness: Harness) -> None:
    a, b = harness.members("a", "b")
    room = harness.joined("r", a).room
    harness.joined("r", b)
    harness.leave(a)
    clear(b)

    harness.leave(b)
    assert len(room) == 0
    assert room.member_ids() == []
    assert b.received == []  # nobody left to tell, not even the leaver
    assert a.decoded() == [new_client(b)]  # nothing more since it left
    assert harness.rooms.room("r") is None
    assert harness.rooms.room_count == 0
    assert harness.rooms.member_count == 0
    assert harness.rooms.room_of(a.client_id) is None
    assert harness.rooms.room_of(b.client_id) is None
    assert list(harness.rooms.rooms()) == []


def test_a_member_alone_joins_and_leaves(harness: Harness) -> None:
    [a] = harness.members("a")
    harness.joined("solo", a)
    harness.leave(a)
    assert harness.rooms.room("solo") is None
    assert harness.rooms.room_count == 0
    assert harness.rooms.member_count == 0
    assert harness.rooms.room_of(a.client_id) is None
    assert a.received == []


def test_leave_of_a_member_in_no_room_does_nothing(harness: Harness) -> None:
    a, b = harness.members("a", "b")
    harness.joined("r", a)
    harness.joined("r", b)
    clear(a, b)

    harness.leave(FakeMember("nobody"))
    harness.leave(FakeMember(""))
    assert a.received == [] and b.received == []
    assert harness.member_ids("r") == ids(a, b)
    assert harness.rooms.member_count == 2
    assert harness.rooms.room_count == 1


def test_leave_twice_the_second_does_nothing(harness: Harness) -> None:
    a, b = harness.members("a", "b")
    harness.joined("r", a)
    harness.joined("r", b)
    harness.leave(a)
    clear(b)
    harness.leave(a)
    assert b.received == []
    assert harness.member_ids("r") == ids(b)
    assert harness.rooms.member_count == 1


def test_everyone_leaves_in_turn(harness: Harness) -> None:
    members = harness.members(*(f"m{i}" for i in range(5)))
    for m in members:
        harness.joined("r", m)
    clear(*members)
    for i, m in enumerate(members):
        harness.leave(m)
        for later in members[i + 1 :]:
            assert later.decoded()[-1] == leave_client(m)
        assert harness.member_ids("r") == (ids(*members[i + 1 :]) or None)
    for i, m in enumerate(members):
        # Each member heard leave-client for exactly the ones that left before it.
        assert m.decoded() == [leave_client(x) for x in members[:i]]
    assert harness.rooms.room("r") is None
    assert harness.rooms.room_count == 0
    assert harness.rooms.member_count == 0


def test_leave_undoes_a_pending_join(harness: Harness) -> None:
    a, b = harness.members("a", "b")
    harness.joined("r", a)
    outcomes = harness.start_join("r", b)
    harness.rooms.leave(b)
    harness.settle()

    assert len(outcomes) == 1
    assert harness.rooms.room_of(b.client_id) is None
    assert harness.member_ids("r") == ids(a)
    assert harness.rooms.member_count == 1
    # a heard of b either not at all, or of its coming and going.
    assert a.decoded() in ([], [new_client(b), leave_client(b)])
    assert b.received == []


def test_leave_undoes_a_pending_join_that_made_the_room(harness: Harness) -> None:
    [a] = harness.members("a")
    outcomes = harness.start_join("r", a)
    harness.rooms.leave(a)
    harness.settle()
    assert len(outcomes) == 1
    assert harness.rooms.room("r") is None
    assert harness.rooms.room_of(a.client_id) is None
    assert harness.rooms.room_count == 0
    assert harness.rooms.member_count == 0
    # and the member may join again
    assert harness.joined("r", a).existing == []


# --------------------------------------------------------------------------
# Room handles: send, broadcast, member_ids
# --------------------------------------------------------------------------


def test_send_reaches_the_target_alone(harness: Harness) -> None:
    a, b, c = harness.members("a", "b", "c")
    room = None
    for m in (a, b, c):
        room = harness.joined("r", m).room
    clear(a, b, c)

    frame = messages.relayed("offer", a.client_id, "v=0\r\n")
    assert room is not None and room.send(b.client_id, frame) is True
    harness.settle()
    assert b.received == [frame]
    assert a.received == [] and c.received == []


def test_send_to_a_member_not_in_the_room_is_false(harness: Harness) -> None:
    a, b, x = harness.members("a", "b", "x")
    room = harness.joined("r", a).room
    harness.joined("r", b)
    harness.joined("other", x)
    clear(a, b, x)

    assert room.send("nobody", b"data") is False
    assert room.send(x.client_id, b"data") is False  # in another room
    assert room.send("", b"data") is False
    harness.leave(b)
    clear(a)
    assert room.send(b.client_id, b"data") is False  # has left
    harness.settle()
    assert a.received == [] and b.received == [] and x.received == []


def test_broadcast_reaches_every_member_once(harness: Harness) -> None:
    a, b, c, x = harness.members("a", "b", "c", "x")
    room = None
    for m in (a, b, c):
        room = harness.joined("r", m).room
    harness.joined("other", x)
    clear(a, b, c, x)

    assert room is not None and room.broadcast(b"all") == 3
    harness.settle()
    assert a.received == b.received == c.received == [b"all"]
    assert x.received == []
    harness.leave(c)
    clear(a, b, c)
    assert room.broadcast(b"two") == 2
    harness.settle()
    assert a.received == b.received == [b"two"]
    assert c.received == []


def test_a_room_handle_follows_the_room(harness: Harness) -> None:
    a, b, c = harness.members("a", "b", "c")
    room = harness.joined("r", a).room
    harness.joined("r", b)
    harness.joined("r", c)
    assert room.member_ids() == ids(a, b, c)
    assert len(room) == 3
    harness.leave(b)
    assert room.member_ids() == ids(a, c)
    assert len(room) == 2
    looked_up = harness.rooms.room("r")
    assert looked_up is not None and looked_up.room_id == "r"
    assert looked_up.member_ids() == ids(a, c)


def test_rooms_are_independent(harness: Harness) -> None:
    a1, a2, b1, b2, b3 = harness.members("a1", "a2", "b1", "b2", "b3")
    harness.joined("A", a1)
    harness.joined("A", a2)
    room_b = harness.joined("B", b1)
    assert room_b.existing == []  # room A's members are not listed
    harness.joined("B", b2)
    harness.joined("B", b3)
    harness.leave(b2)
    room_b.room.send(b3.client_id, b"to-b3")
    harness.settle()

    assert a1.decoded() == [new_client(a2)]
    assert a2.received == []
    assert b1.decoded() == [new_client(b2), new_client(b3), leave_client(b2)]
    assert b3.received == [messages.leave_client(b2.client_id), b"to-b3"]

    harness.leave(a1)
    assert a2.decoded() == [leave_client(a1)]
    assert b1.decoded()[-1] == leave_client(b2)  # B unaffected
    assert b3.received[-1] == b"to-b3"
    assert harness.rooms.room_count == 2
    assert harness.rooms.member_count == 3
    assert harness.room_ids() == ["A", "B"]
    room_of_a2 = harness.rooms.room_of(a2.client_id)
    room_of_b1 = harness.rooms.room_of(b1.client_id)
    assert room_of_a2 is not None and room_of_a2.room_id == "A"
    assert room_of_b1 is not None and room_of_b1.room_id == "B"


def test_room_ids_and_client_ids_do_not_mix(harness: Harness) -> None:
    # A room whose id is a client's id, and the other way round.
    a, b = FakeMember("B"), FakeMember("A")
    harness.joined("A", a)
    harness.joined("B", b)
    assert harness.member_ids("A") == ["B"]
    assert harness.member_ids("B") == ["A"]
    assert a.received == [] and b.received == []


def test_rooms_gives_a_snapshot(harness: Harness) -> None:
    a, b = harness.members("a", "b")
    harness.joined("r1", a)
    harness.joined("r2", b)
    listed = harness.rooms.rooms()
    harness.leave(a)  # deleting a room while iterating must not break it
    assert sorted(r.room_id for r in listed) == ["r1", "r2"]
    assert harness.room_ids() == ["r2"]


# --------------------------------------------------------------------------
# identity
# --------------------------------------------------------------------------

#: Identities as a gate grants them; metadata is any JSON (a large integer,
#: nesting, an empty object, text beyond ASCII must come back as given).
ALICE = {"sub": "alice", "name": "Alice", "metadata": {"n": 12345678901234567, "tags": ["x"]}}
CAROL = {"sub": "carol", "metadata": {"empty": {}, "city": "Zürich", "ratio": 0.5}}


def new_client_with(member: FakeMember, identity: dict[str, Any]) -> dict[str, Any]:
    return {"type": "new-client", "payload": {"client_id": member.client_id, **identity}}


def test_identity_reaches_the_members_and_the_newcomers(harness: Harness) -> None:
    a, b, c, d = harness.members("a", "b", "c", "d")
    assert harness.joined("r", a, identity=ALICE).identities == {}

    joined_b = harness.joined("r", b)  # no identity
    assert joined_b.existing == ids(a)
    assert joined_b.identities == {"a": ALICE}
    assert a.decoded() == [new_client(b)]
    assert a.received == [messages.new_client(b.client_id)]

    joined_c = harness.joined("r", c, identity=CAROL)
    assert joined_c.existing == ids(a, b)
    assert joined_c.identities == {"a": ALICE}  # only the members that have one
    assert a.decoded()[-1] == b.decoded()[-1] == new_client_with(c, CAROL)
    assert a.received[-1] == messages.new_client(c.client_id, CAROL)

    joined_d = harness.joined("r", d)
    assert joined_d.identities == {"a": ALICE, "c": CAROL}
    assert c.decoded() == [new_client(d)]


def test_an_identity_goes_with_its_member(harness: Harness) -> None:
    a, b, c, x = harness.members("a", "b", "c", "x")
    harness.joined("r", a, identity=ALICE)
    harness.joined("r", b)
    harness.joined("other", x, identity=CAROL)
    harness.leave(a)
    # another room's identities are not listed, nor a member's that left
    assert harness.joined("r", c).identities == {}
    # joining again without one, it has none
    clear(b, c)
    assert harness.joined("r", a).identities == {}
    assert b.decoded() == c.decoded() == [new_client(a)]
    harness.leave(a)
    # and with another, the other
    clear(b, c)
    harness.joined("r", a, identity=CAROL)
    assert b.decoded() == c.decoded() == [new_client_with(a, CAROL)]
    assert harness.joined("r", FakeMember("d")).identities == {"a": CAROL}


def test_no_identity_anywhere(harness: Harness) -> None:
    a, b = harness.members("a", "b")
    harness.joined("r", a, identity=None)
    assert harness.joined("r", b, identity={}).identities == {}
    assert a.received == [messages.new_client(b.client_id)]


# --------------------------------------------------------------------------
# limits
# --------------------------------------------------------------------------


def test_a_full_room_refuses_a_join(implementation: Implementation) -> None:
    with implementation(2, 0) as harness:
        a, b, c = harness.members("a", "b", "c")
        harness.joined("r", a)
        harness.joined("r", b)
        clear(a, b)

        refused = harness.refused("r", c)
        assert isinstance(refused, RoomFull)
        assert refused.code == messages.ROOM_FULL
        assert refused.limit == 2
        assert "2" in refused.text
        assert harness.member_ids("r") == ids(a, b)
        assert harness.rooms.room_of(c.client_id) is None
        assert harness.rooms.member_count == 2
        assert a.received == [] and b.received == [] and c.received == []

        harness.leave(b)
        assert harness.joined("r", c).existing == ids(a)
        assert harness.member_ids("r") == ids(a, c)
        # other rooms are not limited by this one
        assert harness.joined("s", b).existing == []


def test_a_join_may_bring_its_own_room_size_bound(implementation: Implementation) -> None:
    """A join's ``max_room_size`` (a grant's) bounds the room as it joins,
    with the rooms' own bound: the tighter of the two counts."""
    with implementation(3, 0) as harness:
        a, b, c, d = harness.members("a", "b", "c", "d")
        harness.joined("r", a, max_room_size=5)
        harness.joined("r", b)

        refused = harness.refused("r", c, max_room_size=2)
        assert isinstance(refused, RoomFull)
        assert refused.limit == 2
        assert harness.member_ids("r") == ids(a, b)
        assert a.received == [messages.new_client(b.client_id)]

        harness.joined("r", c, max_room_size=4)  # 3 with the rooms' bound
        refused = harness.refused("r", d, max_room_size=10)
        assert isinstance(refused, RoomFull) and refused.limit == 3
        refused = harness.refused("r", d)
        assert isinstance(refused, RoomFull) and refused.limit == 3
        assert harness.member_ids("r") == ids(a, b, c)
        assert harness.rooms.room_of(d.client_id) is None

        # the bound is the joining member's: it does not stay with the room
        harness.leave(c)
        harness.joined("r", d)
        # a room it makes is not bounded by the others' bounds
        assert harness.joined("s", c, max_room_size=1).existing == []
        refused = harness.refused("s", FakeMember("e"), max_room_size=1)
        assert isinstance(refused, RoomFull) and refused.limit == 1


def test_a_join_bound_alone(harness: Harness) -> None:
    a, b, c = harness.members("a", "b", "c")
    harness.joined("r", a)
    harness.joined("r", b, max_room_size=2)
    refused = harness.refused("r", c, max_room_size=2)
    assert isinstance(refused, RoomFull) and refused.limit == 2
    assert harness.joined("r", c, max_room_size=0).existing == ids(a, b)


def test_too_many_rooms_refuses_a_join_that_makes_one(implementation: Implementation) -> None:
    with implementation(0, 2) as harness:
        a, b, c, d = harness.members("a", "b", "c", "d")
        harness.joined("one", a)
        harness.joined("two", b)

        refused = harness.refused("three", c)
        assert isinstance(refused, TooManyRooms)
        assert refused.code == messages.TOO_MANY_ROOMS
        assert refused.limit == 2
        assert harness.rooms.room("three") is None
        assert harness.rooms.room_of(c.client_id) is None

        harness.joined("two", c)  # rooms that exist still take members
        harness.leave(a)  # "one" is deleted, which makes space
        harness.joined("three", d)
        assert harness.rooms.room_count == 2
        assert harness.room_ids() == ["three", "two"]


def test_refusals_are_join_refused(implementation: Implementation) -> None:
    with implementation(1, 1) as harness:
        a, b = harness.members("a", "b")
        harness.joined("r", a)
        for room_id, member in (("r", a), ("r", b), ("s", b)):
            refused = harness.refused(room_id, member)
            assert isinstance(refused, JoinRefused)
            assert refused.code in messages.ERROR_CODES
            assert refused.text


# --------------------------------------------------------------------------
# any sequence of joins and leaves
# --------------------------------------------------------------------------

NAMES = ("a", "b", "c", "d", "e")
ROOM_IDS = ("A", "B")

steps = st.lists(
    st.one_of(
        st.tuples(st.just("join"), st.sampled_from(NAMES), st.sampled_from(ROOM_IDS)),
        st.tuples(st.just("leave"), st.sampled_from(NAMES)),
        st.tuples(st.just("settle")),
    ),
    max_size=40,
)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=steps, max_room_size=st.sampled_from([0, 3]))
def test_every_member_knows_exactly_its_room(
    implementation: Implementation, steps: list[tuple[str, ...]], max_room_size: int
) -> None:
    """After any joins and leaves, what each member was told (its join's
    ``existing``, then ``new-client`` and ``leave-client``) is who else is
    in its room; every join's ``done`` was called once; the counts agree."""
    with implementation(max_room_size, 0) as harness:
        members = {name: FakeMember(name) for name in NAMES}
        #: name -> (frames received before its latest successful join, existing)
        views: dict[str, tuple[int, list[str]]] = {}
        calls: list[Outcomes] = []

        def on_done(name: str, start: int, outcomes: Outcomes) -> Callable[..., None]:
            def done(outcome: Joined | JoinRefused) -> None:
                outcomes.append(outcome)
                if isinstance(outcome, Joined):
                    views[name] = (start, outcome.existing)

            return done

        for step in [*steps, ("settle",)]:
            if step[0] == "join":
                member = members[step[1]]
                outcomes: Outcomes = []
                calls.append(outcomes)
                harness.rooms.join(
                    step[2], member, on_done(step[1], len(member.received), outcomes)
                )
            elif step[0] == "leave":
                harness.rooms.leave(members[step[1]])
            else:
                harness.settle()
                check_views(harness, members, views)
        assert all(len(outcomes) == 1 for outcomes in calls)


def check_views(
    harness: Harness, members: dict[str, FakeMember], views: dict[str, tuple[int, list[str]]]
) -> None:
    rooms = harness.rooms
    in_rooms = 0
    for room in rooms.rooms():
        member_ids = room.member_ids()
        assert member_ids, "an empty room must be deleted"
        assert len(room) == len(member_ids) == len(set(member_ids))
        in_rooms += len(member_ids)
        for client_id in member_ids:
            room_of = rooms.room_of(client_id)
            assert room_of is not None and room_of.room_id == room.room_id
    assert rooms.member_count == in_rooms
    assert rooms.room_count == len(list(rooms.rooms()))

    for name, member in members.items():
        frames = member.decoded()
        assert all(f["payload"]["client_id"] != name for f in frames)
        own_room = rooms.room_of(name)
        if own_room is None:
            continue
        assert name in own_room.member_ids()
        start, existing = views[name]
        view = list(existing)
        for frame in frames[start:]:
            other = frame["payload"]["client_id"]
            if frame["type"] == "new-client":
                assert other not in view, f"{name} told twice of {other}"
                view.append(other)
            else:
                assert frame["type"] == "leave-client"
                assert other in view, f"{name} told {other} left, never that it came"
                view.remove(other)
        assert sorted(view) == sorted(set(own_room.member_ids()) - {name})


def test_join_leave_and_join_again_before_any_answer(harness: Harness) -> None:
    """The second join is the one that counts: the member ends in the room,
    and every view agrees."""
    a, b = harness.members("a", "b")
    harness.joined("r", b)
    first = harness.start_join("r", a)
    harness.rooms.leave(a)
    second = harness.start_join("r", a)
    harness.settle()
    assert len(first) == 1 and len(second) == 1
    assert isinstance(second[0], Joined)
    assert harness.member_ids("r") == ids(b, a)
    assert harness.rooms.member_count == 2
    room_of = harness.rooms.room_of(a.client_id)
    assert room_of is not None and room_of.room_id == "r"
    # b heard a come (once or, with the first join, come, go and come again)
    assert b.decoded() in (
        [new_client(a)],
        [new_client(a), leave_client(a), new_client(a)],
    )
