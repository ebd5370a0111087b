"""The access-control boundary in the core: a session asks its hub's gate
before the rooms, and a grant's identity, room bound and ICE servers reach
the clients (fake wires, a hand-moved clock; the gates' implementations
are tested in test_tokens.py, test_webhook.py and test_ice.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.task import Clock

from signaling.core import messages
from signaling.core.access import (
    CLOSE_UNAUTHORIZED,
    OPEN,
    Gate,
    GateDone,
    Gates,
    Grant,
    JoinRequest,
    Unauthorized,
    identity_of,
)
from signaling.core.hub import Hub
from signaling.core.limits import Limits
from signaling.core.rooms import JoinRefused, RoomsUnavailable
from signaling.core.session import Session, State

from .fakes import FakeWire, HeldRooms


class Gatekeeper:
    """A gate with a fixed answer; records what it was asked and told."""

    def __init__(self, outcome: Grant | JoinRefused = OPEN) -> None:
        self.outcome = outcome
        self.asked: list[JoinRequest] = []
        self.ended: list[tuple[str, str]] = []
        self.held: list[GateDone] = []
        self.hold = False

    def check(self, request: JoinRequest, done: GateDone) -> None:
        self.asked.append(request)
        if self.hold:
            self.held.append(done)
        else:
            done(self.outcome)

    def left(self, room_id: str, client_id: str) -> None:
        self.ended.append((room_id, client_id))


class Client:
    def __init__(self, hub: Hub, client_id: str, url_token: str | None = None) -> None:
        self.wire = FakeWire()
        self.session = Session(
            hub, self.wire, client_id, "tcp4:192.0.2.1:4000", "192.0.2.1", url_token
        )
        self.wire.session = self.session
        self.session.open()
        self.client_id = client_id

    def send(self, kind: str, **payload: Any) -> None:
        self.session.receive(json.dumps({"type": kind, "payload": payload}).encode(), False)

    def take(self) -> list[Any]:
        return self.wire.take()


def make_hub(gate: Gate | None = None, rooms: Any = None, **limits: Any) -> Hub:
    limits.setdefault("join_timeout", 30.0)
    hub = Hub(Clock(), Limits(**limits), rooms=rooms)
    hub.gate = gate
    return hub


def test_without_a_gate_joined_keeps_its_shape() -> None:
    hub = make_hub()
    a = Client(hub, "a")
    a.take()
    a.send("join", room_id="r", token="ignored")
    assert a.take() == [{"type": "joined", "payload": {"room_id": "r", "clients": []}}]


def test_the_gate_hears_the_join_and_its_token_and_metadata() -> None:
    gate = Gatekeeper()
    hub = make_hub(gate)
    a = Client(hub, "a", url_token="from-url")
    a.send("join", room_id="r", token="from-join", metadata={"seat": 3})
    b = Client(hub, "b", url_token="from-url")
    b.send("join", room_id="r")
    assert gate.asked == [
        JoinRequest("r", "a", "tcp4:192.0.2.1:4000", "from-join", {"seat": 3}),
        JoinRequest("r", "b", "tcp4:192.0.2.1:4000", "from-url", None),
    ]


def test_a_grant_shows_the_identity_to_the_others_and_lists_members() -> None:
    hub = make_hub(Gatekeeper(Grant(identity={"sub": "alice", "name": "Alice"})))
    a, b = Client(hub, "a"), Client(hub, "b")
    a.send("join", room_id="r")
    assert a.take()[-1]["payload"] == {"room_id": "r", "clients": [], "members": []}
    hub.gate = Gatekeeper(Grant())  # b joins with no identity
    b.send("join", room_id="r")
    assert a.take() == [{"type": "new-client", "payload": {"client_id": "b"}}]
    assert b.take()[-1]["payload"] == {
        "room_id": "r",
        "clients": ["a"],
        "members": [{"client_id": "a", "sub": "alice", "name": "Alice"}],
    }
    hub.gate = Gatekeeper(Grant(identity={"sub": "carol", "metadata": {"role": "host"}}))
    c = Client(hub, "c")
    c.send("join", room_id="r")
    notice = {"client_id": "c", "sub": "carol", "metadata": {"role": "host"}}
    assert a.take() == [{"type": "new-client", "payload": notice}]
    assert c.take()[-1]["payload"]["members"] == [
        {"client_id": "a", "sub": "alice", "name": "Alice"},
        {"client_id": "b"},
    ]


def test_unauthorized_is_answered_then_closes_4001() -> None:
    hub = make_hub(Gatekeeper(Unauthorized("token expired")))
    a = Client(hub, "a")
    a.take()
    a.send("join", room_id="r")
    [error] = a.take()
    assert error["payload"] == {
        "code": "unauthorized",
        "message": "token expired",
        "in_reply_to": "join",
    }
    assert a.wire.closes == [(CLOSE_UNAUTHORIZED, "unauthorized", None)]
    assert hub.rooms.room("r") is None


def test_a_check_that_cannot_be_made_leaves_the_connection_open() -> None:
    gate = Gatekeeper(RoomsUnavailable("the authorization service did not answer in time"))
    hub = make_hub(gate)
    a = Client(hub, "a")
    a.take()
    a.send("join", room_id="r")
    assert [f["payload"]["code"] for f in a.take()] == ["unavailable"]
    assert a.wire.open and a.session.state is State.LOBBY
    gate.outcome = OPEN
    a.send("join", room_id="r")
    assert a.take()[-1]["type"] == "joined"


def test_a_grant_bounds_the_room() -> None:
    hub = make_hub(Gatekeeper(Grant(max_room_size=2)))
    clients = [Client(hub, name) for name in "abc"]
    for client in clients:
        client.send("join", room_id="r")
    assert clients[2].take()[-1]["payload"]["code"] == "room_full"
    assert len(hub.rooms.room("r")) == 2  # type: ignore[arg-type]


def test_ice_servers_go_in_joined_a_grant_s_first() -> None:
    hub = make_hub()
    hub.ice_servers = lambda client_id: [{"urls": ["stun:192.0.2.9"], "for": client_id}]
    a = Client(hub, "a")
    a.send("join", room_id="r")
    assert a.take()[-1]["payload"]["ice_servers"] == [{"urls": ["stun:192.0.2.9"], "for": "a"}]
    assert "members" not in a.wire.frames[-1]["payload"]
    own = [{"urls": ["turn:192.0.2.10"], "username": "u", "credential": "c"}]
    hub.gate = Gatekeeper(Grant(ice_servers=own))
    b = Client(hub, "b")
    b.send("join", room_id="r")
    assert b.take()[-1]["payload"]["ice_servers"] == own


def test_closing_while_the_gate_decides_joins_nothing_and_ends_the_grant() -> None:
    gate = Gatekeeper()
    gate.hold = True
    hub = make_hub(gate)
    a = Client(hub, "a")
    a.send("join", room_id="r")
    a.wire.close(1000, "bye")
    gate.held.pop()(OPEN)
    assert hub.rooms.room("r") is None
    assert gate.ended == [("r", "a")]


def test_every_join_let_through_ends_once() -> None:
    gate = Gatekeeper()
    rooms = HeldRooms()
    hub = make_hub(gate, rooms=rooms)
    a = Client(hub, "a")
    a.send("join", room_id="r")
    rooms.release()
    a.send("leave")
    assert gate.ended == [("r", "a")]
    a.send("join", room_id="s")
    rooms.release()
    a.wire.close(1000, "bye")
    assert gate.ended == [("r", "a"), ("s", "a")]
    # refused by the rooms after the gate let it through
    b, c = Client(hub, "b"), Client(hub, "c")
    rooms.local.max_room_size = 1
    b.send("join", room_id="t")
    rooms.release()
    c.send("join", room_id="t")
    rooms.release()
    assert c.take()[-1]["payload"]["code"] == "room_full"
    assert gate.ended[-1] == ("t", "c")
    # closed while the rooms held the join: undone, and ended once
    d = Client(hub, "d")
    d.send("join", room_id="u")
    d.wire.close(1000, "bye")
    assert gate.ended[-1] == ("u", "d")  # at the close, should the rooms never answer
    rooms.release()
    assert gate.ended.count(("u", "d")) == 1


def test_gates_ask_in_order_until_a_refusal_and_combine_grants() -> None:
    first = Gatekeeper(Grant(identity={"sub": "alice"}, max_room_size=10))
    second = Gatekeeper(
        Grant(identity={"name": "Alice"}, max_room_size=4, ice_servers=[{"urls": "stun:x"}])
    )
    outcomes: list[Grant | JoinRefused] = []
    gates = Gates([first, second])
    gates.check(JoinRequest("r", "a", ""), outcomes.append)
    assert outcomes == [
        Grant(identity={"sub": "alice", "name": "Alice"}, max_room_size=4,
              ice_servers=[{"urls": "stun:x"}])
    ]  # fmt: skip
    refusing = Gatekeeper(Unauthorized("no"))
    never = Gatekeeper()
    Gates([refusing, never]).check(JoinRequest("r", "a", ""), outcomes.append)
    assert isinstance(outcomes[-1], Unauthorized) and never.asked == []
    gates.left("r", "a")
    assert first.ended == second.ended == [("r", "a")]


@pytest.mark.parametrize(
    ("one", "other", "expected"), [(0, 0, 0), (0, 5, 5), (5, 0, 5), (3, 5, 3), (5, 3, 3)]
)
def test_a_later_grant_only_tightens_the_room_bound(one: int, other: int, expected: int) -> None:
    assert Grant(max_room_size=one).then(Grant(max_room_size=other)).max_room_size == expected


def test_identity_of_takes_the_known_fields_only() -> None:
    claims = {"sub": "u1", "name": None, "metadata": [1], "room": "r", "exp": 1}
    assert identity_of(claims) == {"sub": "u1", "metadata": [1]}


def test_join_token_and_metadata_are_parsed() -> None:
    message = messages.parse(
        b'{"type":"join","payload":{"room_id":"r","token":"t","metadata":{"a":[1]}}}'
    )
    assert message == messages.Join("r", "t", {"a": [1]})
    assert messages.parse(b'{"type":"join","payload":{"room_id":"r"}}') == messages.Join("r")
    for bad in (b'"token":5', b'"metadata":' + b"[" * 40 + b"]" * 40):
        with pytest.raises(messages.ProtocolError) as refused:
            messages.parse(b'{"type":"join","payload":{"room_id":"r",' + bad + b"}}")
        assert refused.value.code == messages.INVALID_MESSAGE
