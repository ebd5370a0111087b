"""The admin API on its own: real connections to a real server, no SSH."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.task import Clock
from websockets.exceptions import ConnectionClosed

from signaling.admin import (
    KICKED,
    ROOM_CLOSED,
    Admin,
    ClientInfo,
    Snapshot,
    UnknownClient,
    UnknownRoom,
)

from .conftest import Client, RunningServer, on_reactor, wait_for


def call(admin: Admin, name: str, *args: Any, **kwargs: Any) -> Any:
    """Call an admin function in the reactor thread, as the console does."""
    return on_reactor(getattr(admin, name), *args, **kwargs)


def close_frame(client: Client) -> tuple[int, str]:
    """Wait for the server to close ``client``; its close code and reason."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            client.ws.recv(5)
    received = info.value.rcvd
    assert received is not None
    return received.code, received.reason


def marker(sender: Client, target: Client) -> None:
    """The next message ``target`` gets must be this offer: nothing came before."""
    sender.offer(target.id, "marker")
    assert target.expect("offer") == {"client_id": sender.id, "sdp": "marker"}


@pytest.fixture
def clocked(make_server: Callable[..., RunningServer]) -> tuple[RunningServer, Clock, Admin]:
    clock = Clock()
    clock.advance(1000)
    server = make_server(clock=clock, join_timeout=0)
    return server, clock, Admin(server.factory)


def test_rooms_lists_members_in_join_order(server: RunningServer) -> None:
    admin = Admin(server.factory)
    assert call(admin, "rooms") == {}
    a, b, c, lone = server.client(), server.client(), server.client(), server.client()
    a.join("one")
    b.join("two")
    c.join("one")
    assert call(admin, "rooms") == {"one": [a.id, c.id], "two": [b.id]}
    ids = [info.client_id for info in call(admin, "clients")]
    assert sorted(ids) == sorted([a.id, b.id, c.id, lone.id])


def test_client_details(clocked: tuple[RunningServer, Clock, Admin]) -> None:
    server, clock, admin = clocked
    a = server.client()
    on_reactor(clock.advance, 7.5)
    host, port = a.ws.local_address[:2]
    assert call(admin, "client", a.id) == ClientInfo(
        client_id=a.id,
        address=f"tcp4:{host}:{port}",
        room_id=None,
        connected_at=1000.0,
        connected_for=7.5,
        messages_in=0,
        messages_out=1,  # notify-client-id
    )
    a.join("r")  # in 1, out 2
    b = server.client()
    b.join("r")
    a.expect("new-client")  # out 3
    a.send("bogus")
    a.expect_error("unknown_type")  # in 2, out 4
    marker(a, b)  # in 3
    a.send("leave")
    a.send("join", {"room_id": "s"})
    a.expect("joined")  # in 5, out 5
    info = call(admin, "client", a.id)
    assert (info.room_id, info.messages_in, info.messages_out) == ("s", 5, 5)
    info = call(admin, "client", b.id)
    assert (info.room_id, info.messages_in, info.messages_out) == ("r", 1, 4)


def test_unknown_ids_are_clear_errors(server: RunningServer) -> None:
    admin = Admin(server.factory)
    a = server.client()
    a.join("r")
    with pytest.raises(UnknownClient, match="no open connection with client id 'nope'"):
        call(admin, "client", "nope")
    with pytest.raises(UnknownClient):
        call(admin, "kick", "nope")
    with pytest.raises(UnknownRoom, match="no room 'nope'"):
        call(admin, "close_room", "nope")
    with pytest.raises(UnknownRoom):
        call(admin, "say", "nope", "hello")
    assert call(admin, "rooms") == {"r": [a.id]}


def test_kick_closes_with_code_and_room_gets_leave_client(server: RunningServer) -> None:
    admin = Admin(server.factory)
    a, b, c = server.client(), server.client(), server.client()
    for client in (a, b, c):
        client.join("r")
    a.expect("new-client")
    a.expect("new-client")
    b.expect("new-client")
    assert call(admin, "kick", b.id, reason="spamming") is None
    assert close_frame(b) == (KICKED, "spamming")
    assert a.expect("leave-client") == {"client_id": b.id}
    assert c.expect("leave-client") == {"client_id": b.id}
    assert call(admin, "rooms") == {"r": [a.id, c.id]}
    assert wait_for(lambda: b.id not in server.hub.sessions)
    marker(a, c)


def test_kick_refuses_a_reason_too_long_for_a_close_frame(server: RunningServer) -> None:
    admin = Admin(server.factory)
    a, b = server.client(), server.client()
    a.join("r")
    b.join("r")
    a.expect("new-client")
    with pytest.raises(ValueError, match="123 bytes"):
        call(admin, "kick", b.id, reason="é" * 62)
    with pytest.raises(TypeError):
        call(admin, "kick", b.id, reason=4)
    marker(a, b)  # still connected


def two_rooms(server: RunningServer) -> tuple[Client, Client, Client]:
    """``a`` and ``b`` in room "r" (``a`` has had its new-client), ``other`` in "elsewhere"."""
    a, b, other = server.client(), server.client(), server.client()
    a.join("r")
    b.join("r")
    a.expect("new-client")
    other.join("elsewhere")
    return a, b, other


def test_close_room_closes_every_member_and_nothing_else(server: RunningServer) -> None:
    admin = Admin(server.factory)
    a, b, other = two_rooms(server)
    assert call(admin, "close_room", "r") == 2
    assert close_frame(a) == (ROOM_CLOSED, "room closed by the server operator")
    assert close_frame(b) == (ROOM_CLOSED, "room closed by the server operator")
    assert wait_for(lambda: server.rooms() == {"elsewhere": {other.id}})
    assert [info.client_id for info in call(admin, "clients")] == [other.id]
    other.send("leave")
    assert other.join("r") == []  # the room is gone, and other is still served


def test_say_sends_a_server_message_to_one_room(server: RunningServer) -> None:
    admin = Admin(server.factory)
    a, b, other = two_rooms(server)
    assert call(admin, "say", "r", "restart at noon ☕") == 2
    assert a.expect("server-message") == {"text": "restart at noon ☕"}
    assert b.expect("server-message") == {"text": "restart at noon ☕"}
    assert call(admin, "say", "elsewhere", "only you") == 1
    assert other.expect("server-message") == {"text": "only you"}  # nothing before it
    with pytest.raises(TypeError):
        call(admin, "say", "r", b"bytes")
    assert call(admin, "client", a.id).messages_out == 4  # id, joined, new-client, say


def test_stats_count_connections_rooms_messages_and_uptime(
    clocked: tuple[RunningServer, Clock, Admin],
) -> None:
    server, clock, admin = clocked
    assert call(admin, "stats") == Snapshot(0, 0, 0, 0, 0, 0.0)
    a, b, lone = server.client(), server.client(), server.client()
    a.join("r")
    b.join("r")
    a.expect("new-client")
    on_reactor(clock.advance, 60)
    # in: 2 joins; out: 3 ids, 2 joined, 1 new-client
    assert call(admin, "stats") == Snapshot(3, 1, 2, 2, 6, 60.0)
    b.close()
    assert a.expect("leave-client") == {"client_id": b.id}
    lone.join("s")
    # Totals keep what closed connections counted: +1 in, +1 out (leave-client), +1 joined.
    assert call(admin, "stats") == Snapshot(2, 2, 2, 3, 8, 60.0)


def test_namespace_offers_the_documented_names(server: RunningServer) -> None:
    admin = Admin(server.factory)
    namespace = admin.namespace()
    functions = [
        "rooms",
        "cluster_rooms",
        "clients",
        "client",
        "kick",
        "close_room",
        "say",
        "stats",
    ]
    assert set(namespace) == {*functions, "admin", "factory", "hub", "registry"}
    assert namespace["hub"] is server.hub
    assert namespace["factory"] is server.factory
    assert namespace["registry"] is server.hub.rooms
    for name in functions:
        assert namespace[name] == getattr(admin, name)
