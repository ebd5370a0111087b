"""Direct unit tests of :mod:`signaling.core.rooms` with a fake member."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
from typing import Any

import pytest

from signaling.core import messages
from signaling.core.ids import _ClientIds, new_client_id
from signaling.core.rooms import (
    AlreadyInRoom,
    Joined,
    JoinRefused,
    LocalRoom,
    LocalRooms,
    RoomFull,
    TooManyRooms,
)

Room = LocalRoom


class RoomRegistry(LocalRooms):
    """LocalRooms with a synchronous join and a leave by client id, as
    these tests call them."""

    def join(self, room_id, member, done=None):  # type: ignore[no-untyped-def,override]
        outcomes: list[Joined | JoinRefused] = []
        super().join(room_id, member, outcomes.append if done is None else done)
        if done is not None:
            return None
        [outcome] = outcomes  # LocalRooms answers at once, exactly once
        if isinstance(outcome, JoinRefused):
            raise outcome
        return outcome.room, outcome.existing

    def leave(self, client_id):  # type: ignore[no-untyped-def,override]
        room = self.room_of(client_id)
        if room is not None:
            super().leave(room.members[client_id])
        return room


class FakeMember:
    """Records every frame the registry delivers to it."""

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


def new_client(cid: str) -> dict[str, Any]:
    return {"type": "new-client", "payload": {"client_id": cid}}


def leave_client(cid: str) -> dict[str, Any]:
    return {"type": "leave-client", "payload": {"client_id": cid}}


@pytest.fixture
def registry() -> RoomRegistry:
    return RoomRegistry()


# --------------------------------------------------------------------------
# join
# --------------------------------------------------------------------------


def test_empty_registry(registry: RoomRegistry) -> None:
    assert registry.room_count == 0
    assert registry.member_count == 0
    assert registry.room("r") is None
    assert registry.room_of("a") is None
    assert list(registry.rooms()) == []


def test_first_join_creates_room(registry: RoomRegistry) -> None:
    a = FakeMember("a")
    room, existing = registry.join("r", a)
    assert isinstance(room, Room)
    assert room.room_id == "r"
    assert existing == []
    assert registry.room("r") is room
    assert registry.room_of("a") is room
    assert room.members == {"a": a}
    assert len(room) == 1
    assert registry.room_count == 1
    assert registry.member_count == 1
    assert list(registry.rooms()) == [room]
    assert a.received == []  # the registry sends the newcomer nothing


def test_join_existing_room_notifies_existing_members(registry: RoomRegistry) -> None:
    a, b, c = FakeMember("a"), FakeMember("b"), FakeMember("c")
    room_a, existing = registry.join("r", a)
    assert existing == []

    room_b, existing = registry.join("r", b)
    assert room_b is room_a
    assert existing == ["a"]
    assert a.decoded() == [new_client("b")]
    assert a.received == [messages.new_client("b")]
    assert b.received == []

    room_c, existing = registry.join("r", c)
    assert room_c is room_a
    assert existing == ["a", "b"]  # join order
    assert a.decoded() == [new_client("b"), new_client("c")]
    assert b.decoded() == [new_client("c")]
    assert c.received == []
    assert len(room_a) == 3
    assert registry.room_count == 1
    assert registry.member_count == 3


def test_existing_ids_are_in_join_order_not_sorted(registry: RoomRegistry) -> None:
    ids = ["zeta", "alpha", "mu", "beta"]
    for i, cid in enumerate(ids):
        _, existing = registry.join("r", FakeMember(cid))
        assert existing == ids[:i]


def test_existing_list_is_a_snapshot(registry: RoomRegistry) -> None:
    registry.join("r", FakeMember("a"))
    _, existing = registry.join("r", FakeMember("b"))
    registry.join("r", FakeMember("c"))
    registry.leave("a")
    assert existing == ["a"]


def test_twenty_members_every_pair_notified_once(registry: RoomRegistry) -> None:
    n = 20
    members = [FakeMember(f"m{i:02d}") for i in range(n)]
    for i, m in enumerate(members):
        room, existing = registry.join("big", m)
        assert existing == [x.client_id for x in members[:i]]
        assert len(room) == i + 1

    for i, m in enumerate(members):
        frames = m.decoded()
        # Member i hears about exactly the members that joined after it, in order.
        assert frames == [new_client(x.client_id) for x in members[i + 1 :]]

    # Every unordered pair: exactly one new-client, delivered to the earlier one.
    for (i, early), (j, late) in itertools.combinations(enumerate(members), 2):
        assert i < j
        assert early.decoded().count(new_client(late.client_id)) == 1
        assert late.decoded().count(new_client(early.client_id)) == 0
    total = sum(len(m.received) for m in members)
    assert total == n * (n - 1) // 2
    assert registry.member_count == n
    assert registry.room_count == 1


def test_join_twice_same_room_raises(registry: RoomRegistry) -> None:
    a, b = FakeMember("a"), FakeMember("b")
    room, _ = registry.join("r", a)
    registry.join("r", b)
    a.received.clear()
    b.received.clear()

    with pytest.raises(AlreadyInRoom) as info:
        registry.join("r", a)
    assert info.value.room_id == "r"
    assert room.members == {"a": a, "b": b}
    assert list(room.members) == ["a", "b"]
    assert a.received == [] and b.received == []
    assert registry.member_count == 2
    assert registry.room_count == 1


def test_join_twice_other_room_raises(registry: RoomRegistry) -> None:
    a, x = FakeMember("a"), FakeMember("x")
    room, _ = registry.join("r", a)
    registry.join("other", x)
    x.received.clear()

    with pytest.raises(AlreadyInRoom) as info:
        registry.join("other", a)
    assert info.value.room_id == "r"  # names the room it is already in
    assert registry.room_of("a") is room
    assert room.members == {"a": a}
    assert registry.room("other").members == {"x": x}
    assert x.received == [] and a.received == []

    with pytest.raises(AlreadyInRoom):
        registry.join("brand-new", a)
    assert registry.room("brand-new") is None  # no empty room left behind
    assert registry.room_count == 2
    assert registry.member_count == 2


def test_already_in_room_detected_by_client_id(registry: RoomRegistry) -> None:
    registry.join("r", FakeMember("a"))
    with pytest.raises(AlreadyInRoom):
        registry.join("r2", FakeMember("a"))
    assert registry.room("r2") is None


def test_rejoin_after_leave_same_room(registry: RoomRegistry) -> None:
    a, b = FakeMember("a"), FakeMember("b")
    registry.join("r", a)
    registry.join("r", b)
    registry.leave("a")
    a.received.clear()
    b.received.clear()

    room, existing = registry.join("r", a)
    assert existing == ["b"]
    assert registry.room_of("a") is room
    assert list(room.members) == ["b", "a"]
    assert b.decoded() == [new_client("a")]
    assert a.received == []


def test_rejoin_after_leave_other_room(registry: RoomRegistry) -> None:
    a, b = FakeMember("a"), FakeMember("b")
    registry.join("r", a)
    registry.leave("a")
    assert registry.room("r") is None
    registry.join("s", b)

    room, existing = registry.join("s", a)
    assert room.room_id == "s"
    assert existing == ["b"]
    assert registry.room_of("a") is room
    assert registry.room("r") is None
    assert b.decoded() == [new_client("a")]
    assert a.received == []


def test_rejoin_deleted_room_creates_fresh_room(registry: RoomRegistry) -> None:
    a = FakeMember("a")
    old, _ = registry.join("r", a)
    registry.leave("a")
    new, existing = registry.join("r", a)
    assert existing == []
    assert new is not old
    assert registry.room("r") is new
    assert new.members == {"a": a}


# --------------------------------------------------------------------------
# leave
# --------------------------------------------------------------------------


def test_leave_notifies_remaining_once_each(registry: RoomRegistry) -> None:
    a, b, c = FakeMember("a"), FakeMember("b"), FakeMember("c")
    for m in (a, b, c):
        room, _ = registry.join("r", m)
    for m in (a, b, c):
        m.received.clear()

    left = registry.leave("b")
    assert left is room
    assert a.decoded() == [leave_client("b")]
    assert c.decoded() == [leave_client("b")]
    assert a.received == [messages.leave_client("b")]
    assert b.received == []  # the leaver is not told about itself
    assert room.members == {"a": a, "c": c}
    assert registry.room_of("b") is None
    assert registry.room("r") is room
    assert registry.member_count == 2
    assert registry.room_count == 1


def test_leave_of_last_member_deletes_room(registry: RoomRegistry) -> None:
    a, b = FakeMember("a"), FakeMember("b")
    room, _ = registry.join("r", a)
    registry.join("r", b)
    registry.leave("a")
    b.received.clear()

    left = registry.leave("b")
    assert left is room
    assert len(left) == 0
    assert b.received == []  # nobody left to tell, not even the leaver
    assert a.decoded() == [new_client("b")]  # nothing more since it left
    assert registry.room("r") is None
    assert registry.room_count == 0
    assert registry.member_count == 0
    assert registry.room_of("a") is None
    assert registry.room_of("b") is None
    assert list(registry.rooms()) == []


def test_single_member_join_leave(registry: RoomRegistry) -> None:
    a = FakeMember("a")
    room, _ = registry.join("solo", a)
    assert registry.leave("a") is room
    assert registry.room("solo") is None
    assert registry.room_count == 0
    assert registry.member_count == 0
    assert registry.room_of("a") is None
    assert a.received == []


def test_leave_not_in_room_returns_none(registry: RoomRegistry) -> None:
    a, b = FakeMember("a"), FakeMember("b")
    registry.join("r", a)
    registry.join("r", b)
    a.received.clear()
    b.received.clear()

    assert registry.leave("nobody") is None
    assert registry.leave("") is None
    assert a.received == [] and b.received == []
    assert registry.member_count == 2
    assert registry.room_count == 1


def test_leave_twice_second_is_noop(registry: RoomRegistry) -> None:
    a, b = FakeMember("a"), FakeMember("b")
    registry.join("r", a)
    registry.join("r", b)
    assert registry.leave("a") is not None
    b.received.clear()
    assert registry.leave("a") is None
    assert b.received == []
    assert registry.member_count == 1


def test_everyone_leaves_in_turn(registry: RoomRegistry) -> None:
    members = [FakeMember(f"m{i}") for i in range(5)]
    for m in members:
        registry.join("r", m)
    for m in members:
        m.received.clear()
    for i, m in enumerate(members):
        registry.leave(m.client_id)
        for later in members[i + 1 :]:
            assert later.decoded()[-1] == leave_client(m.client_id)
    for i, m in enumerate(members):
        # Each member saw leave-client for exactly the ones that left before it.
        assert m.decoded() == [leave_client(x.client_id) for x in members[:i]]
    assert registry.room("r") is None
    assert registry.room_count == 0
    assert registry.member_count == 0


# --------------------------------------------------------------------------
# Room.send / rooms
# --------------------------------------------------------------------------


def test_room_send_delivers_to_target_only(registry: RoomRegistry) -> None:
    a, b, c = FakeMember("a"), FakeMember("b"), FakeMember("c")
    for m in (a, b, c):
        room, _ = registry.join("r", m)
    for m in (a, b, c):
        m.received.clear()

    frame = messages.relayed("offer", "a", "v=0\r\n")
    assert room.send("b", frame) is True
    assert b.received == [frame]
    assert a.received == [] and c.received == []


def test_room_send_unknown_target_returns_false(registry: RoomRegistry) -> None:
    a, b, x = FakeMember("a"), FakeMember("b"), FakeMember("x")
    room, _ = registry.join("r", a)
    registry.join("r", b)
    registry.join("other", x)
    for m in (a, b, x):
        m.received.clear()

    assert room.send("nobody", b"data") is False
    assert room.send("x", b"data") is False  # in another room
    assert room.send("", b"data") is False
    registry.leave("b")
    a.received.clear()
    assert room.send("b", b"data") is False  # has left
    assert a.received == [] and b.received == [] and x.received == []


def test_standalone_room_send() -> None:
    room = Room("r")
    a = FakeMember("a")
    assert room.send("a", b"x") is False
    room.members["a"] = a
    assert room.send("a", b"x") is True
    assert a.received == [b"x"]


def test_rooms_are_independent(registry: RoomRegistry) -> None:
    a1, a2 = FakeMember("a1"), FakeMember("a2")
    b1, b2, b3 = FakeMember("b1"), FakeMember("b2"), FakeMember("b3")
    room_a, _ = registry.join("A", a1)
    registry.join("A", a2)
    room_b, existing = registry.join("B", b1)
    assert existing == []  # room A's members are not listed
    registry.join("B", b2)
    registry.join("B", b3)
    registry.leave("b2")
    room_b.send("b3", b"to-b3")

    assert room_a is not room_b
    assert a1.decoded() == [new_client("a2")]
    assert a2.received == []
    assert b1.decoded() == [new_client("b2"), new_client("b3"), leave_client("b2")]
    assert b3.received == [messages.leave_client("b2"), b"to-b3"]

    registry.leave("a1")
    assert a2.decoded() == [leave_client("a1")]
    assert b1.decoded()[-1] == leave_client("b2")  # B unaffected
    assert b3.received[-1] == b"to-b3"
    assert registry.room_count == 2
    assert registry.member_count == 3
    assert {r.room_id for r in registry.rooms()} == {"A", "B"}
    assert registry.room_of("a2") is room_a
    assert registry.room_of("b1") is room_b


def test_same_ids_in_different_rooms_do_not_mix(registry: RoomRegistry) -> None:
    # A room whose id looks like a client id, and vice versa.
    a, b = FakeMember("B"), FakeMember("A")
    room_a, _ = registry.join("A", a)
    room_b, _ = registry.join("B", b)
    assert room_a.members == {"B": a}
    assert room_b.members == {"A": b}
    assert a.received == [] and b.received == []


def test_rooms_iterator_is_snapshot(registry: RoomRegistry) -> None:
    registry.join("r1", FakeMember("a"))
    registry.join("r2", FakeMember("b"))
    it = registry.rooms()
    registry.leave("a")  # deleting a room while iterating must not break it
    assert sorted(r.room_id for r in it) == ["r1", "r2"]


# --------------------------------------------------------------------------
# new_client_id
# --------------------------------------------------------------------------

URL_SAFE = re.compile(r"\A[A-Za-z0-9_-]+\Z")


def test_new_client_id_url_safe_and_long_enough() -> None:
    for _ in range(200):
        cid = new_client_id()
        assert isinstance(cid, str)
        assert URL_SAFE.match(cid), cid
        assert len(cid) >= 16  # 16 base64url chars = 96 bits


def test_new_client_id_unique() -> None:
    ids = [new_client_id() for _ in range(1000)]
    assert len(set(ids)) == 1000


def test_new_client_id_uses_whole_alphabet() -> None:
    # Random ids drawn from base64url should, over 1000 ids, use (nearly) all
    # 64 symbols; a constant prefix or a tiny alphabet would fail this.
    ids = [new_client_id() for _ in range(1000)]
    chars = set("".join(ids))
    assert len(chars) >= 60
    assert len({cid[:4] for cid in ids}) > 990


def test_room_size_limit() -> None:
    registry = RoomRegistry(max_room_size=2)
    a, b, c = FakeMember("a"), FakeMember("b"), FakeMember("c")
    registry.join("r", a)
    registry.join("r", b)
    a.received.clear()
    with pytest.raises(RoomFull):
        registry.join("r", c)
    assert set(registry.room("r").members) == {"a", "b"}
    assert registry.room_of("c") is None
    assert a.received == []  # nobody heard of the refused joiner
    registry.leave("b")
    registry.join("r", c)
    assert set(registry.room("r").members) == {"a", "c"}


def test_room_count_limit() -> None:
    registry = RoomRegistry(max_rooms=2)
    registry.join("one", FakeMember("a"))
    registry.join("two", FakeMember("b"))
    with pytest.raises(TooManyRooms):
        registry.join("three", FakeMember("c"))
    assert registry.room("three") is None
    registry.join("two", FakeMember("c"))  # existing rooms still take members
    registry.leave("a")  # "one" is deleted, making space
    registry.join("three", FakeMember("d"))
    assert registry.room_count == 2


def test_new_client_id_carries_128_random_bits() -> None:
    raw = base64.urlsafe_b64decode(new_client_id() + "==")
    assert len(raw) == 16


def test_new_client_ids_do_not_repeat_across_refills() -> None:
    ids = [new_client_id() for _ in range(3 * 256 + 7)]
    assert len(set(ids)) == len(ids)


def test_forked_child_draws_fresh_ids() -> None:
    ids = _ClientIds()
    ids()  # the parent's buffer now holds ids to come
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id, then leave at once
        os.write(write, ids().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    assert child != ids()
