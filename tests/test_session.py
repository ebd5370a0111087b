"""The protocol's rules in :class:`~signaling.core.session.Session`, without a
socket: each session talks to a :class:`~tests.fakes.FakeWire`, time is a
``twisted.internet.task.Clock`` moved by hand, and joins go to LocalRooms
(complete at once) or to :class:`~tests.fakes.HeldRooms` (complete when the
test says, to reach the JOINING state). The tests against a real port are
the outer tier: test_protocol.py, test_limits.py and the rest."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from signaling.core import messages
from signaling.core.hub import Hub
from signaling.core.limits import Limits
from signaling.core.resume import ResumableSession
from signaling.core.resume import connect as resume_connect
from signaling.core.rooms import AlreadyInRoom, Joined, LocalRooms, RoomFull, Rooms, TooManyRooms
from signaling.core.session import CLOSE_INVALID_PAYLOAD, CLOSE_POLICY, Session, State

from .fakes import FakeWire, HeldRooms

RELAY_TYPES = ("offer", "answer", "candidate")
TIMEOUT = 30.0


class Client:
    """A session opened on ``hub``, with a fake wire."""

    def __init__(self, hub: Hub, client_id: str, limit_key: str | None = "192.0.2.1") -> None:
        self.hub = hub
        self.client_id = client_id
        self.wire = FakeWire()
        self.session = Session(hub, self.wire, client_id, f"tcp4:{limit_key}:4000", limit_key)
        self.wire.session = self.session
        self.welcome = json.loads(self.session.open())

    @property
    def state(self) -> State:
        return self.session.state

    def send(self, kind: str, **payload: Any) -> None:
        self.receive(json.dumps({"type": kind, "payload": payload}).encode())

    def receive(self, data: bytes, is_binary: bool = False) -> None:
        self.session.receive(data, is_binary)

    def join(self, room_id: str) -> None:
        self.send("join", room_id=room_id)

    def leave(self) -> None:
        self.send("leave")

    def relay(self, kind: str, target: str, body: Any = "v=0\r\n") -> None:
        self.send(kind, client_id=target, **{messages.RELAY_FIELDS[kind]: body})

    def take(self) -> list[Any]:
        """The frames sent to this client since the last take."""
        return self.wire.take()

    def take_errors(self) -> list[tuple[str, str | None]]:
        """(code, in_reply_to) of each frame since the last take, all errors."""
        frames = self.take()
        assert all(f["type"] == "error" for f in frames), frames
        return [(f["payload"]["code"], f["payload"].get("in_reply_to")) for f in frames]

    def __repr__(self) -> str:
        return f"<Client {self.client_id} {self.state.value}>"


def make_hub(clock: Clock, rooms: Rooms | None = None, **limits: Any) -> Hub:
    limits.setdefault("join_timeout", TIMEOUT)
    return Hub(clock, Limits(**limits), rooms=rooms)


def joined(room_id: str, *clients: str) -> dict[str, Any]:
    return {"type": "joined", "payload": {"room_id": room_id, "clients": list(clients)}}


def new_client(client_id: str) -> dict[str, Any]:
    return {"type": "new-client", "payload": {"client_id": client_id}}


def leave_client(client_id: str) -> dict[str, Any]:
    return {"type": "leave-client", "payload": {"client_id": client_id}}


def member_ids(hub: Hub, room_id: str) -> list[str] | None:
    room = hub.rooms.room(room_id)
    return None if room is None else room.member_ids()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hub(clock: Clock) -> Hub:
    """A hub on LocalRooms: joins complete at once."""
    return make_hub(clock)


@pytest.fixture
def held() -> HeldRooms:
    return HeldRooms()


@pytest.fixture
def held_hub(clock: Clock, held: HeldRooms) -> Hub:
    """A hub whose joins wait for ``held.release()``."""
    return make_hub(clock, rooms=held)


def in_room(hub: Hub, room_id: str, *client_ids: str) -> list[Client]:
    """Clients that have joined ``room_id`` (and whose frames so far are taken)."""
    clients = [Client(hub, cid) for cid in client_ids]
    for c in clients:
        c.join(room_id)
        if isinstance(hub.rooms, HeldRooms):
            hub.rooms.release()
        assert c.state is State.IN_ROOM
    for c in clients:
        c.take()
    return clients


# --------------------------------------------------------------------------
# opening
# --------------------------------------------------------------------------


def test_open_registers_and_welcomes(hub: Hub) -> None:
    a = Client(hub, "a")
    assert a.welcome == {"type": "notify-client-id", "payload": {"client_id": "a"}}
    assert hub.sessions == {"a": a.session}
    assert hub.address_counts == Counter({"192.0.2.1": 1})
    assert hub.stats.connections_total == 1
    assert a.state is State.LOBBY
    assert a.session.room is None
    assert a.session.messages_out == 1  # the welcome
    assert a.session.messages_in == 0
    assert a.wire.sent == []  # the welcome goes out with the handshake's answer

    Client(hub, "b")
    Client(hub, "c", limit_key=None)
    assert hub.address_counts == Counter({"192.0.2.1": 2})
    assert hub.stats.connections_total == 3


# --------------------------------------------------------------------------
# lobby
# --------------------------------------------------------------------------


def test_lobby_join_enters_the_room(hub: Hub) -> None:
    [a] = in_room(hub, "r", "a")
    b = Client(hub, "b")
    b.join("r")
    assert b.take() == [joined("r", "a")]
    assert a.take() == [new_client("b")]
    assert b.state is State.IN_ROOM
    assert b.session.room is not None and b.session.room.room_id == "r"
    assert member_ids(hub, "r") == ["a", "b"]
    assert hub.stats.received["join"] == 2


def test_lobby_join_waits_for_the_rooms(held_hub: Hub, held: HeldRooms) -> None:
    a = Client(held_hub, "a")
    a.join("r")
    assert a.state is State.JOINING
    assert [(room_id, member) for room_id, member, _ in held.pending] == [("r", a.session)]
    assert a.take() == []
    held.release()
    assert a.state is State.IN_ROOM
    assert a.take() == [joined("r")]


def test_lobby_leave_is_not_in_room(hub: Hub) -> None:
    a = Client(hub, "a")
    a.leave()
    assert a.take_errors() == [(messages.NOT_IN_ROOM, "leave")]
    assert a.state is State.LOBBY


@pytest.mark.parametrize("kind", RELAY_TYPES)
def test_lobby_relay_is_not_in_room(hub: Hub, kind: str) -> None:
    [b] = in_room(hub, "r", "b")
    a = Client(hub, "a")
    a.relay(kind, "b")
    assert a.take_errors() == [(messages.NOT_IN_ROOM, kind)]
    assert b.take() == []
    assert hub.stats.received[kind] == 1
    assert hub.stats.relayed[kind] == 0


def test_a_refused_join_leaves_the_session_in_the_lobby(clock: Clock) -> None:
    hub = make_hub(clock, max_room_size=1)
    [a] = in_room(hub, "r", "a")
    b = Client(hub, "b")
    b.join("r")
    [frame] = b.take()
    assert frame["type"] == "error"
    assert frame["payload"]["code"] == messages.ROOM_FULL
    assert frame["payload"]["in_reply_to"] == "join"
    assert b.state is State.LOBBY
    assert a.take() == []
    b.join("s")
    assert b.take() == [joined("s")]


def test_a_refusal_is_answered_with_its_code(clock: Clock) -> None:
    hub = make_hub(clock, max_rooms=1)
    in_room(hub, "r", "a")
    b = Client(hub, "b")
    b.join("s")
    [frame] = b.take()
    assert frame["payload"]["code"] == messages.TOO_MANY_ROOMS
    assert frame["payload"]["in_reply_to"] == "join"
    assert frame["payload"]["message"] == TooManyRooms(1).text
    assert hub.stats.errors[messages.TOO_MANY_ROOMS] == 1


def test_a_refusal_carries_its_details(held_hub: Hub, held: HeldRooms) -> None:
    a = Client(held_hub, "a")
    a.join("r")
    held.refuse(AlreadyInRoom("elsewhere"))
    [frame] = a.take()
    assert frame["payload"] == {
        "code": messages.ALREADY_IN_ROOM,
        "message": AlreadyInRoom("elsewhere").text,
        "in_reply_to": "join",
        "room_id": "elsewhere",
    }
    assert a.state is State.LOBBY


# --------------------------------------------------------------------------
# joining
# --------------------------------------------------------------------------


def test_joining_join_is_already_in_room(held_hub: Hub, held: HeldRooms) -> None:
    a = Client(held_hub, "a")
    a.join("r")
    a.join("s")
    assert a.take_errors() == [(messages.ALREADY_IN_ROOM, "join")]
    assert len(held.pending) == 1
    held.release()
    assert a.take() == [joined("r")]
    assert held.room("s") is None


def test_joining_leave_is_applied_once_joined(held_hub: Hub, held: HeldRooms) -> None:
    [b] = in_room(held_hub, "r", "b")
    a = Client(held_hub, "a")
    a.join("r")
    a.leave()
    assert a.take() == []  # nothing yet: the join's answer comes first
    assert a.state is State.JOINING
    held.release()
    assert a.take() == [joined("r", "b")]
    assert b.take() == [new_client("a"), leave_client("a")]
    assert a.state is State.LOBBY
    assert a.session.room is None
    assert held.room_of("a") is None
    assert member_ids(held_hub, "r") == ["b"]


def test_joining_leave_after_a_refused_join_is_not_in_room(held_hub: Hub, held: HeldRooms) -> None:
    a = Client(held_hub, "a")
    a.join("r")
    a.leave()
    held.refuse(RoomFull(2))
    assert a.take_errors() == [(messages.ROOM_FULL, "join"), (messages.NOT_IN_ROOM, "leave")]
    assert a.state is State.LOBBY


def test_joining_every_leave_is_answered_in_order(held_hub: Hub, held: HeldRooms) -> None:
    """join, leave, leave: as if the join had completed at once, the first
    leave leaves the room and the second is not_in_room."""
    [b] = in_room(held_hub, "r", "b")
    a = Client(held_hub, "a")
    a.join("r")
    a.leave()
    a.leave()
    held.release()
    frames = a.take()
    assert frames[0] == joined("r", "b")
    assert [(f["type"], f["payload"]["code"]) for f in frames[1:]] == [
        ("error", messages.NOT_IN_ROOM)
    ]
    assert frames[1]["payload"]["in_reply_to"] == "leave"
    assert b.take() == [new_client("a"), leave_client("a")]
    assert a.state is State.LOBBY


def test_joining_every_leave_after_a_refused_join_is_not_in_room(
    held_hub: Hub, held: HeldRooms
) -> None:
    a = Client(held_hub, "a")
    a.join("r")
    a.leave()
    a.leave()
    held.refuse(RoomFull(2))
    assert a.take_errors() == [
        (messages.ROOM_FULL, "join"),
        (messages.NOT_IN_ROOM, "leave"),
        (messages.NOT_IN_ROOM, "leave"),
    ]


@pytest.mark.parametrize("kind", RELAY_TYPES)
def test_joining_relay_is_not_in_room(held_hub: Hub, held: HeldRooms, kind: str) -> None:
    [b] = in_room(held_hub, "r", "b")
    a = Client(held_hub, "a")
    a.join("r")
    a.relay(kind, "b")
    assert a.take_errors() == [(messages.NOT_IN_ROOM, kind)]
    assert b.take() == []
    held.release()
    assert a.state is State.IN_ROOM


# --------------------------------------------------------------------------
# in a room
# --------------------------------------------------------------------------


@pytest.mark.parametrize("other", ["r", "s"])
def test_in_room_join_is_already_in_room_naming_it(hub: Hub, other: str) -> None:
    a, b = in_room(hub, "r", "a", "b")
    a.join(other)
    [frame] = a.take()
    assert frame["payload"]["code"] == messages.ALREADY_IN_ROOM
    assert frame["payload"]["in_reply_to"] == "join"
    assert frame["payload"]["room_id"] == "r"
    assert a.state is State.IN_ROOM
    assert member_ids(hub, "r") == ["a", "b"]
    assert hub.rooms.room("s") is None
    assert b.take() == []


def test_in_room_leave_tells_the_others(hub: Hub) -> None:
    a, b, c = in_room(hub, "r", "a", "b", "c")
    b.leave()
    assert b.take() == []
    assert a.take() == [leave_client("b")]
    assert c.take() == [leave_client("b")]
    assert b.state is State.LOBBY
    assert b.session.room is None
    assert member_ids(hub, "r") == ["a", "c"]
    b.leave()
    assert b.take_errors() == [(messages.NOT_IN_ROOM, "leave")]


def test_the_last_leave_deletes_the_room(hub: Hub) -> None:
    [a] = in_room(hub, "r", "a")
    a.leave()
    assert hub.rooms.room("r") is None
    assert hub.rooms.room_count == 0


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("offer", "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"),
        ("answer", "v=0\r\n"),
        ("candidate", {"candidate": "candidate:1 1 udp 1 192.0.2.1 5000 typ host"}),
        ("candidate", "candidate:1 1 udp 1 192.0.2.1 5000 typ host"),
        ("candidate", None),
    ],
)
def test_relay_reaches_the_target_with_the_sender_id(hub: Hub, kind: str, body: Any) -> None:
    a, b, c = in_room(hub, "r", "a", "b", "c")
    a.relay(kind, "b", body)
    field = messages.RELAY_FIELDS[kind]
    assert b.take() == [{"type": kind, "payload": {"client_id": "a", field: body}}]
    assert a.take() == []
    assert c.take() == []
    assert hub.stats.received[kind] == 1
    assert hub.stats.relayed[kind] == 1


def test_relay_names_the_real_sender(hub: Hub) -> None:
    """A client_id the sender puts in its payload is the target's, never
    taken for the sender's."""
    a, b = in_room(hub, "r", "a", "b")
    a.send("offer", client_id="b", sdp="x", sender="b", from_id="b")
    assert b.take() == [{"type": "offer", "payload": {"client_id": "a", "sdp": "x"}}]


@pytest.mark.parametrize("kind", RELAY_TYPES)
def test_relay_to_self_is_unknown_client(hub: Hub, kind: str) -> None:
    a, b = in_room(hub, "r", "a", "b")
    a.relay(kind, "a")
    [frame] = a.take()
    assert frame["type"] == "error"
    assert frame["payload"]["code"] == messages.UNKNOWN_CLIENT
    assert frame["payload"]["in_reply_to"] == kind
    assert frame["payload"]["client_id"] == "a"
    assert b.take() == []
    assert hub.stats.relayed[kind] == 0


@pytest.mark.parametrize("target", ["nobody", "", "x"])
def test_relay_to_a_client_not_in_the_room_is_unknown_client(hub: Hub, target: str) -> None:
    a, b = in_room(hub, "r", "a", "b")
    [x] = in_room(hub, "other", "x")
    a.relay("offer", target)
    [frame] = a.take()
    assert frame["payload"]["code"] == messages.UNKNOWN_CLIENT
    assert frame["payload"]["client_id"] == target
    assert frame["payload"]["in_reply_to"] == "offer"
    assert b.take() == [] and x.take() == []


def test_relay_to_a_client_that_left_is_unknown_client(hub: Hub) -> None:
    a, b = in_room(hub, "r", "a", "b")
    b.leave()
    a.take()
    a.relay("answer", "b")
    assert a.take_errors() == [(messages.UNKNOWN_CLIENT, "answer")]
    assert b.take() == []


# --------------------------------------------------------------------------
# invalid messages, in every state that reads them
# --------------------------------------------------------------------------

INVALID = [
    (b"{not json", messages.INVALID_JSON, None),
    (b"[1, 2]", messages.INVALID_MESSAGE, None),
    (b'{"type": 5}', messages.INVALID_MESSAGE, None),
    (b'{"type": "hello", "payload": {}}', messages.UNKNOWN_TYPE, "hello"),
    (b'{"type": "join", "payload": {"room_id": ""}}', messages.INVALID_ROOM_ID, "join"),
    (b'{"type": "join", "payload": {"room_id": 7}}', messages.INVALID_ROOM_ID, "join"),
    (b'{"type": "join", "payload": {"room_id": "123456789"}}', messages.INVALID_ROOM_ID, "join"),
    (b'{"type": "join"}', messages.INVALID_MESSAGE, "join"),
    (b'{"type": "offer", "payload": {"client_id": "b"}}', messages.INVALID_MESSAGE, "offer"),
    (b'{"type": "leave", "payload": 1}', messages.INVALID_MESSAGE, "leave"),
]


def reach(state: State, hub: Hub, held: HeldRooms) -> Client:
    """A client in ``state`` (lobby, joining or in_room), on a HeldRooms hub."""
    client = Client(hub, "a")
    if state is not State.LOBBY:
        client.join("r")
        if state is State.IN_ROOM:
            held.release()
        client.take()
    assert client.state is state
    return client


@pytest.mark.parametrize("state", [State.LOBBY, State.JOINING, State.IN_ROOM])
@pytest.mark.parametrize(("data", "code", "in_reply_to"), INVALID)
def test_invalid_message_is_answered_with_its_error(
    clock: Clock, held: HeldRooms, state: State, data: bytes, code: str, in_reply_to: str | None
) -> None:
    hub = make_hub(clock, rooms=held, max_room_id_length=8)
    a = reach(state, hub, held)
    a.receive(data)
    assert a.take_errors() == [(code, in_reply_to)]
    assert a.state is state
    assert hub.stats.received["invalid"] == 1
    assert hub.stats.errors[code] == 1
    assert len(held.pending) == (state is State.JOINING)


@pytest.mark.parametrize("state", [State.LOBBY, State.JOINING, State.IN_ROOM])
def test_binary_frame_is_unsupported(held_hub: Hub, held: HeldRooms, state: State) -> None:
    a = reach(state, held_hub, held)
    a.receive(b'{"type": "leave"}', is_binary=True)  # not taken for a leave
    assert a.take_errors() == [(messages.UNSUPPORTED_FRAME, None)]
    assert a.state is state
    assert held_hub.stats.received["invalid"] == 1


@pytest.mark.parametrize("data", [b"\xff\xfe", b'{"type": "join", "payload": {"room_id": "\xc3"}}'])
def test_text_that_is_not_utf8_closes_with_1007(hub: Hub, data: bytes) -> None:
    a, b = in_room(hub, "r", "a", "b")
    a.receive(data)
    assert a.take() == []
    assert [code for code, _, _ in a.wire.closes] == [CLOSE_INVALID_PAYLOAD]
    assert a.state is State.CLOSING
    assert b.take() == [leave_client("a")]  # at once, not when TCP closes
    assert hub.stats.received["invalid"] == 1


# --------------------------------------------------------------------------
# closing: everything is ignored
# --------------------------------------------------------------------------

EVERY_MESSAGE = [
    (b'{"type": "join", "payload": {"room_id": "s"}}', False),
    (b'{"type": "leave"}', False),
    (b'{"type": "offer", "payload": {"client_id": "b", "sdp": "x"}}', False),
    (b'{"type": "answer", "payload": {"client_id": "b", "sdp": "x"}}', False),
    (b'{"type": "candidate", "payload": {"client_id": "b", "candidate": null}}', False),
    (b"{not json", False),
    (b'{"type": "hello"}', False),
    (b"\xff", False),
    (b"binary", True),
]


@pytest.mark.parametrize("state", [State.LOBBY, State.JOINING, State.IN_ROOM])
def test_closing_ignores_every_message(clock: Clock, held: HeldRooms, state: State) -> None:
    hub = make_hub(clock, rooms=held)
    [b] = in_room(hub, "r", "b")
    a = reach(state, hub, held)
    a.session.closing()  # the wire stays open here, so a reply would show
    assert a.state is State.CLOSING
    b.take()
    received = hub.stats.received.copy()
    messages_in = a.session.messages_in
    for data, is_binary in EVERY_MESSAGE:
        a.receive(data, is_binary)
    assert a.take() == []
    assert b.take() == []
    assert a.wire.closes == []
    assert a.session.messages_in == messages_in
    assert hub.stats.received == received
    assert len(held.pending) == (state is State.JOINING)  # no new join
    assert held.room("s") is None
    assert member_ids(hub, "r") == ["b"]


def test_closing_in_a_room_tells_the_room_at_once(hub: Hub) -> None:
    a, b = in_room(hub, "r", "a", "b")
    a.session.closing()
    assert b.take() == [leave_client("a")]
    assert member_ids(hub, "r") == ["b"]
    assert a.session.room is None
    a.session.closing()  # only once
    a.session.closed()
    assert b.take() == []
    assert a.state is State.CLOSED


def test_a_join_completed_after_closing_is_undone(held_hub: Hub, held: HeldRooms) -> None:
    [b] = in_room(held_hub, "r", "b")
    a = Client(held_hub, "a")
    a.join("r")
    a.wire.close(1000, "bye")  # any close: the wire tells the session
    assert a.state is State.CLOSING
    outcome = held.release()
    assert isinstance(outcome, Joined)  # the rooms did make the join...
    assert held.room_of("a") is None  # ...and the session undid it
    assert member_ids(held_hub, "r") == ["b"]
    assert b.take() == [new_client("a"), leave_client("a")]
    assert a.take() == []
    assert a.state is State.CLOSING


def test_closing_during_a_join_tells_the_rooms(held_hub: Hub, held: HeldRooms) -> None:
    """The rooms may undo a join still pending when told of the leave."""
    a = Client(held_hub, "a")
    a.join("r")
    assert held.left == []
    a.session.closing()
    assert held.left == ["a"]


def test_a_join_completed_after_closed_is_undone(held_hub: Hub, held: HeldRooms) -> None:
    a = Client(held_hub, "a")
    a.join("r")
    a.session.closed()
    held.release()
    assert held.room("r") is None
    assert held.room_count == 0
    assert held.member_count == 0
    assert a.state is State.CLOSED
    assert "a" not in held_hub.sessions


def test_a_join_refused_after_closing_changes_nothing(held_hub: Hub, held: HeldRooms) -> None:
    a = Client(held_hub, "a")
    a.join("r")
    a.session.closing()
    held.refuse(RoomFull(1))
    assert a.take() == []
    assert a.state is State.CLOSING


# --------------------------------------------------------------------------
# closed
# --------------------------------------------------------------------------


def test_closed_unregisters_and_counts_the_address_down(hub: Hub) -> None:
    a, b = Client(hub, "a"), Client(hub, "b")
    c = Client(hub, "c", limit_key="198.51.100.1")
    d = Client(hub, "d", limit_key=None)
    assert hub.address_counts == Counter({"192.0.2.1": 2, "198.51.100.1": 1})

    a.session.closed()
    assert a.state is State.CLOSED
    assert set(hub.sessions) == {"b", "c", "d"}
    assert dict(hub.address_counts) == {"192.0.2.1": 1, "198.51.100.1": 1}
    c.session.closed()
    assert dict(hub.address_counts) == {"192.0.2.1": 1}  # none left: the key goes
    d.session.closed()
    assert dict(hub.address_counts) == {"192.0.2.1": 1}
    b.session.closed()
    assert hub.sessions == {}
    assert dict(hub.address_counts) == {}
    b.session.closed()  # twice: nothing more
    assert dict(hub.address_counts) == {}


def test_closed_in_a_room_leaves_it(hub: Hub) -> None:
    a, b = in_room(hub, "r", "a", "b")
    a.session.closed()
    assert b.take() == [leave_client("a")]
    assert hub.rooms.room_of("a") is None
    assert member_ids(hub, "r") == ["b"]
    b.session.closed()
    assert hub.rooms.room_count == 0


def test_closed_lets_go_of_the_wire(hub: Hub) -> None:
    a, b = in_room(hub, "r", "a", "b")
    a.session.closed()
    assert a.session.wire is not a.wire
    a.session.deliver(b"late")
    a.session.close(1001, "going away")
    a.session.abort()
    b.relay("offer", "a")  # a is gone from the room
    assert a.take() == []
    assert a.wire.closes == []
    assert not a.wire.aborted


def test_closed_keeps_the_message_totals(hub: Hub) -> None:
    a, b = in_room(hub, "r", "a", "b")  # each: 1 in (join); a: welcome, joined, new-client
    a.relay("offer", "b")
    a.leave()
    assert (a.session.messages_in, a.session.messages_out) == (3, 3)
    assert (b.session.messages_in, b.session.messages_out) == (1, 4)
    assert (hub.messages_in(), hub.messages_out()) == (4, 7)
    a.session.closed()
    a.session.closed()
    assert (hub.closed_messages_in, hub.closed_messages_out) == (3, 3)
    assert (hub.messages_in(), hub.messages_out()) == (4, 7)
    b.session.closed()
    assert (hub.messages_in(), hub.messages_out()) == (4, 7)


# --------------------------------------------------------------------------
# counters
# --------------------------------------------------------------------------


def test_messages_in_counts_every_message_read(clock: Clock) -> None:
    hub = make_hub(clock, rate_limit=1, rate_burst=1, rate_limit_strikes=0)
    a = Client(hub, "a")
    a.receive(b"{not json")
    a.receive(b"x", is_binary=True)  # rate limited
    a.leave()  # rate limited
    assert a.session.messages_in == 3
    a.session.closing()
    a.leave()
    assert a.session.messages_in == 3  # not once closing


def test_messages_out_counts_the_frames_the_wire_took(hub: Hub) -> None:
    a, b = in_room(hub, "r", "a", "b")
    out = a.session.messages_out
    a.wire.accepting = False  # too far behind: the wire drops frames
    b.relay("offer", "a")
    a.leave()
    a.leave()  # not_in_room
    assert a.session.messages_out == out
    a.wire.accepting = True
    a.leave()
    assert a.session.messages_out == out + 1
    assert b.session.messages_out == 3  # welcome, joined, leave-client


def test_session_close_and_abort_pass_to_the_wire(hub: Hub) -> None:
    a = Client(hub, "a")
    a.session.close(1001, "going away", 2.5)
    assert a.wire.closes == [(1001, "going away", 2.5)]
    assert a.state is State.CLOSING
    b = Client(hub, "b")
    b.session.abort()
    assert b.wire.aborted
    assert b.state is State.CLOSING


# --------------------------------------------------------------------------
# the join timer
# --------------------------------------------------------------------------


def assert_timed_out(client: Client) -> None:
    frames = client.take()
    assert [(f["type"], f["payload"]["code"]) for f in frames] == [("error", messages.JOIN_TIMEOUT)]
    assert "in_reply_to" not in frames[0]["payload"]
    assert client.wire.closes == [(CLOSE_POLICY, "join timeout", None)]
    assert client.state is State.CLOSING


def test_join_timer_closes_a_client_that_never_joins(clock: Clock, hub: Hub) -> None:
    a = Client(hub, "a")
    a.leave()  # a message that is not a join does not count
    a.take()
    clock.advance(TIMEOUT - 0.01)
    assert a.take() == [] and a.wire.closes == []
    clock.advance(0.01)
    assert_timed_out(a)
    assert hub.stats.errors[messages.JOIN_TIMEOUT] == 1


def test_join_timer_off(clock: Clock) -> None:
    hub = make_hub(clock, join_timeout=0)
    a = Client(hub, "a")
    clock.advance(10 * TIMEOUT)
    assert a.take() == [] and a.wire.closes == []
    assert clock.getDelayedCalls() == []


def test_join_timer_is_cancelled_by_a_join(clock: Clock, hub: Hub) -> None:
    a = Client(hub, "a")
    clock.advance(TIMEOUT / 2)
    a.join("r")
    a.take()
    clock.advance(10 * TIMEOUT)
    assert a.take() == [] and a.wire.closes == []
    assert clock.getDelayedCalls() == []


def test_join_timer_restarts_on_leave(clock: Clock, hub: Hub) -> None:
    a = Client(hub, "a")
    clock.advance(TIMEOUT / 2)
    a.join("r")
    clock.advance(TIMEOUT)
    a.leave()
    a.take()
    clock.advance(TIMEOUT - 0.01)
    assert a.wire.closes == []
    clock.advance(0.01)
    assert_timed_out(a)


def test_join_timer_is_cancelled_when_closing(clock: Clock, hub: Hub) -> None:
    a = Client(hub, "a")
    a.session.closing()
    assert clock.getDelayedCalls() == []
    clock.advance(2 * TIMEOUT)
    assert a.take() == []


def test_a_refused_join_does_not_restart_the_join_timer(clock: Clock) -> None:
    """Joins refused at once (a full room) buy no time."""
    hub = make_hub(clock, max_room_size=1)
    in_room(hub, "r", "b")
    a = Client(hub, "a")
    for _ in range(5):
        clock.advance(TIMEOUT / 6)
        a.join("r")
    a.take()
    clock.advance(TIMEOUT / 6)
    assert_timed_out(a)


def test_join_timer_firing_during_a_join_closes_and_undoes_it(
    clock: Clock, held_hub: Hub, held: HeldRooms
) -> None:
    """A join the rooms never answer must not hold the connection open."""
    a = Client(held_hub, "a")
    a.join("r")
    clock.advance(TIMEOUT)
    assert_timed_out(a)
    held.release()  # the answer comes after all: the room must not keep a
    assert a.take() == []
    assert held_hub.rooms.room("r") is None
    assert held_hub.rooms.member_count == 0


def test_a_join_refused_late_leaves_the_timer_running(
    clock: Clock, held_hub: Hub, held: HeldRooms
) -> None:
    a = Client(held_hub, "a")
    a.join("r")
    clock.advance(TIMEOUT / 2)
    held.refuse(RoomFull(1))
    assert a.take_errors() == [(messages.ROOM_FULL, "join")]
    clock.advance(TIMEOUT / 2 - 0.01)
    assert a.wire.closes == []
    clock.advance(0.01)
    assert_timed_out(a)


def test_join_completing_before_the_timer_cancels_it(
    clock: Clock, held_hub: Hub, held: HeldRooms
) -> None:
    a = Client(held_hub, "a")
    a.join("r")
    clock.advance(TIMEOUT / 2)
    held.release()
    assert clock.getDelayedCalls() == []
    clock.advance(TIMEOUT)
    assert a.wire.closes == []


# --------------------------------------------------------------------------
# rate limit
# --------------------------------------------------------------------------


def test_rate_limit_drops_then_closes(clock: Clock) -> None:
    hub = make_hub(clock, rate_limit=1, rate_burst=2, rate_limit_strikes=3)
    a = Client(hub, "a")
    a.leave()
    a.leave()
    assert a.take_errors() == [(messages.NOT_IN_ROOM, "leave")] * 2
    a.join("r")  # over the limit: dropped
    a.join("r")
    assert a.take_errors() == [(messages.RATE_LIMITED, None)] * 2
    assert a.state is State.LOBBY
    assert hub.rooms.room("r") is None
    assert a.wire.closes == [] and a.wire.reading

    a.join("r")  # the third strike
    assert a.take() == []
    assert a.wire.closes == [(CLOSE_POLICY, "rate limit exceeded", None)]
    assert not a.wire.reading
    assert a.state is State.CLOSING
    assert hub.stats.errors[messages.RATE_LIMITED] == 2
    assert a.session.messages_in == 5


def test_rate_limit_recovers_with_time(clock: Clock) -> None:
    hub = make_hub(clock, rate_limit=2, rate_burst=1, rate_limit_strikes=2)
    a = Client(hub, "a")
    for _ in range(5):
        a.leave()
        a.leave()  # one strike, then an allowed message clears it
        assert a.take_errors() == [(messages.NOT_IN_ROOM, "leave"), (messages.RATE_LIMITED, None)]
        clock.advance(0.5)
    assert a.wire.closes == []


def test_rate_limit_without_strikes_never_closes(clock: Clock) -> None:
    hub = make_hub(clock, rate_limit=1, rate_burst=1, rate_limit_strikes=0)
    a = Client(hub, "a")
    for _ in range(50):
        a.leave()
    assert a.take_errors()[1:] == [(messages.RATE_LIMITED, None)] * 49
    assert a.wire.closes == [] and a.wire.reading


def test_no_rate_limit(clock: Clock) -> None:
    hub = make_hub(clock, rate_limit=0)
    a = Client(hub, "a")
    for _ in range(1000):
        a.leave()
        assert a.session.frame_allowed()
    assert a.take_errors() == [(messages.NOT_IN_ROOM, "leave")] * 1000


def test_frame_allowed_spends_the_same_tokens(clock: Clock) -> None:
    hub = make_hub(clock, rate_limit=1, rate_burst=2, rate_limit_strikes=3)
    a = Client(hub, "a")
    assert a.session.frame_allowed()
    a.leave()
    assert a.take_errors() == [(messages.NOT_IN_ROOM, "leave")]
    assert not a.session.frame_allowed()
    a.leave()
    assert a.take_errors() == [(messages.RATE_LIMITED, None)]
    assert a.wire.closes == []
    assert not a.session.frame_allowed()  # the third strike
    assert a.take() == []  # a frame that carries no message gets no error
    assert a.wire.closes == [(CLOSE_POLICY, "rate limit exceeded", None)]
    assert not a.wire.reading
    assert a.state is State.CLOSING


def test_frame_allowed_recovers_with_time(clock: Clock) -> None:
    hub = make_hub(clock, rate_limit=10, rate_burst=1, rate_limit_strikes=2)
    a = Client(hub, "a")
    for _ in range(20):
        assert a.session.frame_allowed()
        assert not a.session.frame_allowed()
        clock.advance(0.1)
    assert a.wire.closes == []


# --------------------------------------------------------------------------
# any messages, in any order
# --------------------------------------------------------------------------

NAMES = ("a", "b", "c", "d")
ADDRESSES = ("192.0.2.1", "192.0.2.2", None)
RAW = [
    (b"{not json", False),
    (b'{"type": "hello"}', False),
    (b'{"type": "join", "payload": {"room_id": ""}}', False),
    (b"\xff", False),
    (b"{}", True),
]

who = st.integers(0, len(NAMES) - 1)
actions = st.lists(
    st.one_of(
        st.tuples(st.just("join"), who, st.sampled_from(["A", "B"])),
        st.tuples(st.just("leave"), who),
        st.tuples(st.just("relay"), who, st.sampled_from(RELAY_TYPES), st.integers(0, len(NAMES))),
        st.tuples(st.just("raw"), who, st.integers(0, len(RAW) - 1)),
        st.tuples(st.just("frame"), who),
        st.tuples(st.just("release"), st.integers(0, 3)),
        st.tuples(st.just("refuse"), st.integers(0, 3)),
        st.tuples(st.just("close"), who),
        st.tuples(st.just("closed"), who),
        st.tuples(st.just("tick"), st.sampled_from([0.1, 1.0, 5.0])),
    ),
    max_size=60,
)


@settings(deadline=None, max_examples=300)
@given(actions=actions, hold=st.booleans())
def test_any_messages_keep_the_hub_consistent(actions: list[tuple[Any, ...]], hold: bool) -> None:
    """Whatever clients send, in whatever order, and however joins and
    closes interleave: nothing raises, the hub's sessions and rooms agree
    with the sessions' states, and what each client in a room was told is
    who else is in it."""
    clock = Clock()
    held = HeldRooms(max_room_size=3) if hold else None
    rooms = held if held is not None else LocalRooms(max_room_size=3)
    hub = make_hub(
        clock, rooms=rooms, join_timeout=8, rate_limit=4, rate_burst=3, rate_limit_strikes=3
    )
    clients = [Client(hub, n, ADDRESSES[i % len(ADDRESSES)]) for i, n in enumerate(NAMES)]
    counted_in = 0
    for action in actions:
        kind = action[0]
        client = clients[action[1]] if kind not in ("release", "refuse", "tick") else None
        reads = client is not None and client.state in (State.LOBBY, State.JOINING, State.IN_ROOM)
        if client is None:
            if kind == "tick":
                clock.advance(action[1])
            elif held is not None and held.pending:
                index = action[1] % len(held.pending)
                if kind == "release":
                    held.release(index)
                else:
                    held.refuse(RoomFull(3), index)
        elif kind == "join":
            client.join(action[2])
        elif kind == "leave":
            client.leave()
        elif kind == "relay":
            target = NAMES[action[3]] if action[3] < len(NAMES) else "nobody"
            client.relay(action[2], target)
        elif kind == "raw":
            client.receive(*RAW[action[2]])
        elif kind == "frame":
            client.session.frame_allowed()
            reads = False
        elif kind == "close":
            client.wire.close(1000, "bye")
            reads = False
        else:
            client.session.closed()
            reads = False
        counted_in += reads
        check_consistency(hub, clients)
        assert hub.messages_in() == counted_in


def check_consistency(hub: Hub, clients: list[Client]) -> None:
    rooms = hub.rooms
    in_room = [c for c in clients if c.state is State.IN_ROOM]
    for c in clients:
        room = rooms.room_of(c.client_id)
        if c.state is State.CLOSED:
            assert c.client_id not in hub.sessions
        else:
            assert hub.sessions[c.client_id] is c.session
        if c.state is State.IN_ROOM:
            assert c.session.room is not None and room is not None
            assert room.room_id == c.session.room.room_id
            assert c.client_id in room.member_ids()
            assert c.wire.open
            assert sorted(told_of(c)) == sorted(set(room.member_ids()) - {c.client_id})
        else:
            assert c.session.room is None
            assert room is None, c
    assert rooms.member_count == len(in_room)
    assert sum(len(room) for room in rooms.rooms()) == len(in_room)
    assert rooms.room_count == len({c.session.room.room_id for c in in_room if c.session.room})
    expected = Counter(s.limit_key for s in hub.sessions.values() if s.limit_key is not None)
    assert dict(hub.address_counts) == dict(expected)


def told_of(client: Client) -> list[str]:
    """Who else is in the client's room, as far as its frames tell."""
    frames = client.wire.frames
    start = max(i for i, f in enumerate(frames) if f["type"] == "joined")
    view: list[str] = list(frames[start]["payload"]["clients"])
    for frame in frames[start + 1 :]:
        other = frame["payload"].get("client_id")
        assert other != client.client_id or frame["type"] == "error"
        if frame["type"] == "new-client":
            assert other not in view
            view.append(other)
        elif frame["type"] == "leave-client":
            view.remove(other)
    return view


# --------------------------------------------------------------------------
# resuming (signaling.core.resume): away, taken over, expired
# --------------------------------------------------------------------------

GRACE = 15.0


def resumable(hub: Hub, client_id: str, limit_key: str = "192.0.2.1") -> Client:
    """A client that connected with ``?resume=1``."""
    client = Client.__new__(Client)
    client.hub = hub
    client.client_id = client_id
    client.wire = FakeWire()
    client.session = ResumableSession(
        hub, client.wire, client_id, f"tcp4:{limit_key}:4000", limit_key
    )
    client.wire.session = client.session
    client.welcome = json.loads(client.session.open())
    return client


def drop(client: Client) -> None:
    """The connection ends without a closing handshake, as the protocol
    reports it."""
    wire = client.wire
    wire.open = False
    client.session.lost(wire)
    client.session.closed(wire)


def resume(hub: Hub, token: str, last_seq: int | str | None, limit_key: str = "192.0.2.9") -> Any:
    """A new connection with ``?resume_token=&last_seq=``: (session, frames, wire)."""
    wire = FakeWire()
    session, frames = resume_connect(
        hub,
        wire,
        lambda: "fresh",
        f"tcp4:{limit_key}:4000",
        limit_key,
        None,
        resume=False,
        token=token,
        last_seq=None if last_seq is None else str(last_seq),
    )
    wire.session = session
    return session, [json.loads(f) for f in frames], wire


@pytest.fixture
def rhub(clock: Clock) -> Hub:
    return make_hub(clock, resume_grace=GRACE)


def resumable_pair(hub: Hub) -> tuple[Client, Client]:
    """``a`` (resumable) and ``b`` (not) in room r, their frames taken."""
    a = resumable(hub, "a")
    b = Client(hub, "b")
    a.join("r")
    b.join("r")
    a.take()
    b.take()
    return a, b


def test_opted_in_frames_are_numbered_and_kept(rhub: Hub) -> None:
    a = resumable(rhub, "a")
    token = a.welcome["payload"]["resume_token"]
    assert a.welcome == {
        "type": "notify-client-id",
        "payload": {"client_id": "a", "resume_token": token, "resumed": False},
    }
    assert len(token) >= 32 and rhub.resume_tokens == {token: a.session}
    a.join("r")
    a.send("leave")
    a.send("leave")
    frames = a.take()
    assert [f.get("seq") for f in frames] == [1, 2]
    assert frames[0] == {"seq": 1, **joined("r")}
    assert [seq for seq, _, _ in a.session.replay.frames] == [1, 2]


def test_a_drop_in_a_room_is_away_not_a_leave(rhub: Hub, clock: Clock) -> None:
    a, b = resumable_pair(rhub)
    drop(a)
    assert a.state is State.AWAY
    assert rhub.sessions_away == 1
    assert member_ids(rhub, "r") == ["a", "b"]
    assert b.take() == []
    # Frames for it are kept while away.
    b.relay("offer", "a", "sdp-during-gap")
    assert b.take() == []
    clock.advance(GRACE - 0.1)
    assert a.state is State.AWAY and b.take() == []


def test_take_over_replays_after_last_seq(rhub: Hub, clock: Clock) -> None:
    a, b = resumable_pair(rhub)  # a got joined (seq 1) and new-client b (seq 2)
    token = a.welcome["payload"]["resume_token"]
    b.relay("offer", "a", "before-drop")  # seq 3: written, perhaps never read
    drop(a)
    b.relay("candidate", "a", {"c": 1})  # seq 4: while away
    clock.advance(5)
    session, frames, wire = resume(rhub, token, 2)
    assert session is a.session and session.wire is wire
    assert frames[0]["type"] == "notify-client-id"
    new_token = frames[0]["payload"]["resume_token"]
    assert frames[0]["payload"] == {"client_id": "a", "resume_token": new_token, "resumed": True}
    assert "seq" not in frames[0]
    assert [(f["seq"], f["type"]) for f in frames[1:]] == [(3, "offer"), (4, "candidate")]
    assert frames[1]["payload"]["sdp"] == "before-drop"
    assert rhub.resume_tokens == {new_token: session}
    assert session.state is State.IN_ROOM and rhub.sessions_away == 0
    assert rhub.stats.sessions_resumed == 1
    # Normal traffic continues the numbering; the grace timer is gone.
    b.relay("answer", "a")
    assert [(f["seq"], f["type"]) for f in wire.take()] == [(5, "answer")]
    clock.advance(GRACE * 2)
    assert session.state is State.IN_ROOM and b.take() == []
    assert rhub.address_counts == Counter({"192.0.2.1": 1, "192.0.2.9": 1})
    # The old token is spent.
    _, refused, _ = resume(rhub, token, 0)
    assert refused[0]["payload"]["code"] == messages.RESUME_FAILED
    assert refused[1]["payload"] == {"client_id": "fresh", "resumed": False}


def test_grace_over_ends_as_a_disconnect(rhub: Hub, clock: Clock) -> None:
    a, b = resumable_pair(rhub)
    token = a.welcome["payload"]["resume_token"]
    drop(a)
    clock.advance(GRACE)
    assert b.take() == [leave_client("a")]
    assert a.state is State.CLOSED
    assert "a" not in rhub.sessions and rhub.resume_tokens == {}
    assert rhub.sessions_away == 0 and rhub.stats.sessions_expired == 1
    _, frames, _wire = resume(rhub, token, 2)
    assert [f["type"] for f in frames] == ["error", "notify-client-id"]
    assert frames[0]["payload"]["code"] == messages.RESUME_FAILED
    assert frames[1]["payload"]["client_id"] == "fresh"


def test_too_much_kept_while_away_ends_it(clock: Clock) -> None:
    hub = make_hub(clock, resume_grace=GRACE, max_send_buffer=600)
    a, b = resumable_pair(hub)
    b.relay("offer", "a", "x" * 200)  # before the drop: may be dropped from the buffer
    drop(a)
    b.relay("offer", "a", "x" * 300)
    assert a.state is State.AWAY
    b.relay("offer", "a", "x" * 300)  # past the bound with frames it never saw
    assert a.state is State.AWAY  # not inside the delivery
    clock.advance(0)
    assert a.state is State.CLOSED and b.take() == [leave_client("a")]
    assert hub.resume_tokens == {} and hub.sessions_away == 0


def test_last_seq_older_than_kept_fails(clock: Clock) -> None:
    hub = make_hub(clock, resume_grace=GRACE, max_send_buffer=300)
    a, b = resumable_pair(hub)
    token = a.welcome["payload"]["resume_token"]
    for _ in range(3):
        b.relay("offer", "a", "x" * 150)  # seqs 3 to 5; 3 is dropped
    drop(a)
    _, frames, _ = resume(hub, token, 2)
    assert frames[0]["payload"]["code"] == messages.RESUME_FAILED
    # The token is spent; the old session stays away until its grace ends.
    assert a.state is State.AWAY and hub.resume_tokens == {}
    clock.advance(GRACE)
    assert leave_client("a") in b.take()


def test_a_connected_session_keeps_only_what_a_drop_could_have_lost(clock: Clock) -> None:
    """While connected, frames older than a ping interval and two ping
    timeouts are let go (a drop is found sooner); while away, every frame is
    kept, however long the grace."""
    hub = make_hub(clock, resume_grace=300, ping_interval=20, ping_timeout=20)
    a, b = resumable_pair(hub)  # seqs 1 and 2
    clock.advance(59)
    b.relay("offer", "a", "three")
    assert [seq for seq, _, _ in a.session.replay.frames] == [1, 2, 3]
    clock.advance(2)  # 61 s after 1 and 2
    b.relay("offer", "a", "four")
    assert [seq for seq, _, _ in a.session.replay.frames] == [3, 4]
    drop(a)
    b.relay("offer", "a", "five")
    clock.advance(200)
    b.relay("offer", "a", "six")
    assert [seq for seq, _, _ in a.session.replay.frames] == [3, 4, 5, 6]
    _, frames, _ = resume(hub, a.welcome["payload"]["resume_token"], 4)
    assert [f.get("seq") for f in frames] == [None, 5, 6]


@pytest.mark.parametrize("last_seq", ["-1", "x", "99"])
def test_a_malformed_or_future_last_seq_fails(rhub: Hub, last_seq: str) -> None:
    a, _ = resumable_pair(rhub)
    drop(a)
    _, frames, _ = resume(rhub, a.welcome["payload"]["resume_token"], last_seq)
    assert frames[0]["payload"]["code"] == messages.RESUME_FAILED


def test_taking_over_a_connected_session_closes_the_older_connection(rhub: Hub) -> None:
    a, b = resumable_pair(rhub)
    session, _frames, wire = resume(rhub, a.welcome["payload"]["resume_token"], 2)
    assert session is a.session
    assert a.wire.closes == [(4003, "resumed elsewhere", None)]
    # The older connection's end does not end the session.
    a.session.lost(a.wire)
    a.session.closed(a.wire)
    assert session.state is State.IN_ROOM and session.wire is wire
    assert b.take() == []
    b.relay("offer", "a")
    assert [f["type"] for f in wire.take()] == ["offer"]


def test_a_clean_close_ends_at_once(rhub: Hub) -> None:
    a, b = resumable_pair(rhub)
    a.wire.close(1000, "bye")
    a.session.closed(a.wire)
    assert b.take() == [leave_client("a")]
    assert rhub.sessions == {"b": b.session} and rhub.resume_tokens == {}


def test_a_drop_while_joining_ends(clock: Clock, held: HeldRooms) -> None:
    hub = make_hub(clock, rooms=held, resume_grace=GRACE)
    a = resumable(hub, "a")
    a.join("r")
    drop(a)
    assert a.state is State.CLOSED and hub.resume_tokens == {}


def test_away_in_the_lobby_gets_its_join_timer_back(clock: Clock) -> None:
    hub = make_hub(clock, resume_grace=TIMEOUT * 2)
    a = resumable(hub, "a")
    drop(a)
    clock.advance(TIMEOUT + 1)  # the join timer does not run while away
    assert a.state is State.AWAY
    session, _, wire = resume(hub, a.welcome["payload"]["resume_token"], 0)
    assert session.state is State.LOBBY
    clock.advance(TIMEOUT)
    assert wire.frames[-1]["payload"]["code"] == messages.JOIN_TIMEOUT


def test_admin_close_of_an_away_session_ends_it(rhub: Hub) -> None:
    a, b = resumable_pair(rhub)
    drop(a)
    a.session.close(1001, "going away")
    assert b.take() == [leave_client("a")] and "a" not in rhub.sessions


def test_resume_off_ignores_resume(clock: Clock) -> None:
    hub = make_hub(clock, resume_grace=0)
    wire = FakeWire()
    session, frames = resume_connect(
        hub, wire, lambda: "n", "unix", None, None, resume=True, token=None, last_seq=None
    )
    assert type(session) is Session
    assert [json.loads(f) for f in frames] == [
        {"type": "notify-client-id", "payload": {"client_id": "n"}}
    ]


def test_a_thousand_drops_that_expire_leave_nothing(rhub: Hub, clock: Clock) -> None:
    b = Client(rhub, "b")
    b.join("r")
    for i in range(1000):
        c = resumable(rhub, f"c{i}")
        c.join("r" if i % 2 else f"room{i}")
        drop(c)
    assert rhub.sessions_away == 1000
    clock.advance(GRACE)
    assert rhub.sessions == {"b": b.session}
    assert rhub.resume_tokens == {} and rhub.sessions_away == 0
    assert rhub.rooms.room_count == 1
