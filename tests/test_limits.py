"""Liveness rules and limits, each against a real port.

Timers that would make a test slow run on an injected Clock, advanced in the
reactor thread; Autobahn's keepalive and the handshake timeout run on real
time with short settings.
"""

from __future__ import annotations

import select
import socket

import pytest
from twisted.internet.task import Clock
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from .conftest import Client, RunningServer, on_reactor, wait_for
from .rawws import RawWebSocket


def pair(server: RunningServer, room: str = "room") -> tuple[Client, Client]:
    a, b = server.client(), server.client()
    a.join(room)
    b.join(room)
    a.expect("new-client")
    return a, b


def handshake_status(server: RunningServer, **kwargs) -> int:
    """Open a connection and return the HTTP status of a refused handshake."""
    with pytest.raises(InvalidStatus) as info:
        connect(server.url, proxy=None, open_timeout=5, **kwargs)
    return info.value.response.status_code


# -- liveness -------------------------------------------------------------------


def test_peer_that_stops_answering_pings_is_dropped(make_server) -> None:
    clock = Clock()
    server = make_server(clock=clock, ping_interval=20, ping_timeout=10)
    alive = server.client()  # websockets answers pings by itself
    alive.join("room")
    silent = RawWebSocket(server.port)  # never answers a ping
    silent.send("join", {"room_id": "room"})
    assert silent.recv_json()["type"] == "joined"
    assert alive.expect("new-client") == {"client_id": silent.id}

    def answered() -> bool:
        session = server.hub.sessions[alive.id]
        return session.last_seen >= server.connection(alive.id)._ping_sent_at

    on_reactor(clock.advance, 20)  # both get a ping
    opcode, _ = silent.recv_frame()
    assert opcode == 9
    assert wait_for(lambda: on_reactor(answered))
    on_reactor(clock.advance, 9)
    assert on_reactor(lambda: set(server.hub.sessions)) == {alive.id, silent.id}
    on_reactor(clock.advance, 1)  # interval + timeout: the silent one is gone
    assert alive.expect("leave-client") == {"client_id": silent.id}
    assert on_reactor(lambda: server.hub.stats.keepalive_timeouts) == 1
    assert silent.is_closed_by_peer()
    for _ in range(3):  # the one that answers stays, ping after ping
        on_reactor(clock.advance, 20)
        assert wait_for(lambda: on_reactor(answered))
        on_reactor(clock.advance, 10)
    assert on_reactor(lambda: set(server.hub.sessions)) == {alive.id}


def test_no_ping_while_the_client_is_talking(make_server) -> None:
    clock = Clock()
    server = make_server(
        clock=clock, ping_interval=20, ping_timeout=10, rate_limit=0, join_timeout=0
    )
    talker = RawWebSocket(server.port)  # would fail a ping, but talks instead
    for _ in range(5):
        on_reactor(clock.advance, 15)
        talker.send("leave", {})
        assert talker.recv_json()["payload"]["code"] == "not_in_room"
    assert on_reactor(lambda: server.hub.stats.keepalive_timeouts) == 0
    on_reactor(clock.advance, 20)  # quiet for an interval: pinged
    assert talker.recv_frame()[0] == 9
    on_reactor(clock.advance, 10)
    assert talker.is_closed_by_peer()


def test_connection_that_never_joins_is_closed(make_server) -> None:
    clock = Clock()
    server = make_server(clock=clock, join_timeout=30)
    idle, joined = server.client(), server.client()
    joined.join("room")
    on_reactor(clock.advance, 29)
    idle.send("dance", {})
    idle.expect_error("unknown_type")  # still open just before the deadline
    on_reactor(clock.advance, 1.5)
    assert "30" in idle.expect_error("join_timeout")["message"]
    assert idle.expect_closed() == 1008
    on_reactor(clock.advance, 100)
    joined.send("dance", {})  # joined clients have no deadline...
    joined.expect_error("unknown_type")
    joined.send("leave", {})
    joined.send("leave", {})
    joined.expect_error("not_in_room")  # the leave has been handled
    on_reactor(clock.advance, 31)  # ...until they leave their room
    joined.expect_error("join_timeout")
    assert joined.expect_closed() == 1008


def test_slow_opening_handshake_is_cut_off(make_server) -> None:
    clock = Clock()
    server = make_server(clock=clock, handshake_timeout=10, join_timeout=0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /connect HTTP/1.1\r\n")
        for _ in range(9):  # a byte a second would keep twisted.web's idle timer happy
            on_reactor(clock.advance, 1)
            sock.sendall(b"X")
        assert not select.select([sock], [], [], 0.1)[0]  # still open
        on_reactor(clock.advance, 1.5)  # 10 s since it connected
        try:
            assert sock.recv(1024) == b""
        except ConnectionResetError:
            pass  # aborted: closed either way
    # a connection that became a WebSocket in time is not affected
    client = server.client()
    on_reactor(clock.advance, 60)
    client.send("dance", {})
    client.expect_error("unknown_type")


# -- rate limit -------------------------------------------------------------------


def test_rate_limit_refuses_then_recovers_then_closes(make_server) -> None:
    clock = Clock()
    server = make_server(clock=clock, rate_limit=10, rate_burst=3, rate_limit_strikes=3)
    a, b = pair(server)  # a has spent one token on its join
    a.offer(b.id, "1")
    a.offer(b.id, "2")
    a.offer(b.id, "3")
    assert a.expect_error("rate_limited")["message"]
    assert [b.expect("offer")["sdp"] for _ in range(2)] == ["1", "2"]
    on_reactor(clock.advance, 0.1)  # one token back at 10/s
    a.offer(b.id, "4")
    assert b.expect("offer")["sdp"] == "4"  # refusals stop once it slows down
    a.offer(b.id, "5")
    a.offer(b.id, "6")
    a.expect_error("rate_limited")
    a.expect_error("rate_limited")
    a.offer(b.id, "7")  # the third refusal in a row closes it
    assert a.expect_closed() == 1008
    assert b.expect("leave-client") == {"client_id": a.id}
    stats = on_reactor(lambda: dict(server.hub.stats.errors))
    assert stats == {"rate_limited": 3}


def test_rate_limit_zero_turns_it_off(make_server) -> None:
    server = make_server(clock=Clock(), rate_limit=0)
    a, b = pair(server)
    for i in range(500):
        a.offer(b.id, str(i))
    assert [b.expect("offer")["sdp"] for _ in range(500)] == [str(i) for i in range(500)]


# -- rooms -----------------------------------------------------------------------------


def test_full_room_refuses(make_server) -> None:
    server = make_server(max_room_size=2)
    a, b = pair(server)
    c = server.client()
    c.send("join", {"room_id": "room"})
    assert "2" in c.expect_error("room_full")["message"]
    assert server.rooms() == {"room": {a.id, b.id}}
    assert c.join("other") == []  # c is in no room after the refusal
    c.send("leave", {})
    b.close()
    assert a.expect("leave-client") == {"client_id": b.id}
    assert c.join("room") == [a.id]


def test_room_count_limit(make_server) -> None:
    server = make_server(max_rooms=1)
    a, b = server.client(), server.client()
    a.join("one")
    b.send("join", {"room_id": "two"})
    b.expect_error("too_many_rooms")
    assert b.join("one") == [a.id]


# -- connections ------------------------------------------------------------------------


def test_total_connections_limit(make_server) -> None:
    server = make_server(max_connections=2, max_connections_per_address=0)
    a, _ = server.client(), server.client()
    assert handshake_status(server) == 503
    a.close()
    assert wait_for(lambda: len(on_reactor(lambda: server.hub.sessions)) == 1)
    server.client()  # room again


def test_connections_per_address_limit(make_server) -> None:
    server = make_server(max_connections_per_address=2)
    server.client()
    server.client()
    assert handshake_status(server) == 503
    assert on_reactor(lambda: dict(server.hub.stats.refused_handshakes)) == {503: 1}


# -- origin -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("HTTPS://APP.EXAMPLE.COM", True),
        ("https://eu.example.org", True),
        ("https://a.b.example.org", True),
        (None, True),  # non-browser clients send no Origin
        ("https://evil.example.net", False),
        ("http://app.example.com", False),
        ("https://app.example.com:8443", False),
        ("https://example.org.evil.net", False),
        ("null", False),
    ],
)
def test_allowed_origins(make_server, origin: str | None, allowed: bool) -> None:
    server = make_server(allowed_origins=("https://app.example.com", "https://*.example.org"))
    headers = {"Origin": origin} if origin else None
    if allowed:
        with connect(server.url, proxy=None, additional_headers=headers) as ws:
            assert "notify-client-id" in ws.recv(5)
    else:
        assert handshake_status(server, additional_headers=headers) == 403


def test_any_origin_by_default(server: RunningServer) -> None:
    for origin in ("https://anything.example", "null"):
        with connect(server.url, proxy=None, additional_headers={"Origin": origin}) as ws:
            assert "notify-client-id" in ws.recv(5)


# -- slow consumers -------------------------------------------------------------------------


def test_slow_consumer_is_closed_and_others_carry_on(make_server) -> None:
    server = make_server(rate_limit=0, max_send_buffer=256 * 1024)
    sender = server.client()
    sender.join("room")
    slow = RawWebSocket(server.port, rcvbuf=4096)
    slow.send("join", {"room_id": "room"})
    assert sender.expect("new-client") == {"client_id": slow.id}
    # another pair keeps talking throughout
    x, y = pair(server, "elsewhere")
    sdp = "v=0\r\n" + "a=x\r\n" * 4000  # about 20 KB
    for i in range(1000):  # up to 20 MB towards a client that never reads
        if on_reactor(server.hub.rooms.room_of, slow.id) is None:
            break
        sender.offer(slow.id, sdp)
        if i % 20 == 0:
            x.offer(y.id, f"still here {i}")
            assert y.expect("offer")["sdp"] == f"still here {i}"
    else:
        pytest.fail("the slow consumer was never dropped")
    assert sender.expect("leave-client") == {"client_id": slow.id}
    assert on_reactor(lambda: server.hub.stats.slow_consumers) == 1
    assert server.rooms() == {"room": {sender.id}, "elsewhere": {x.id, y.id}}
    assert slow.is_closed_by_peer()


def test_a_client_that_keeps_reading_is_not_dropped(make_server) -> None:
    """What counts is what is queued, not all that passed while the queue was long."""
    server = make_server(rate_limit=0, max_send_buffer=200 * 1024)
    sender = server.client()
    sender.join("room")
    reader = RawWebSocket(server.port, rcvbuf=4096)
    reader.send("join", {"room_id": "room"})
    assert reader.recv_json()["type"] == "joined"
    sender.expect("new-client")
    # Small kernel buffers on the server's side, so the queue is the server's own.
    on_reactor(
        lambda: server.connection(reader.id).transport.socket.setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
    )
    sdp = "a=x\r\n" * 2000  # 10 KB
    lag = 12  # about 120 KB behind: over Twisted's 64 KiB pause mark, under the limit
    for i in range(120):  # 1.2 MB in all
        sender.offer(reader.id, f"{i} {sdp}")
        if i >= lag:
            assert reader.recv_json()["payload"]["sdp"].startswith(f"{i - lag} ")
    assert on_reactor(lambda: server.hub.stats.slow_consumers) == 0
    assert server.rooms() == {"room": {sender.id, reader.id}}


def test_timers_end_with_a_dropped_connection(make_server) -> None:
    """A connection the server dropped (closed for flooding, or ended after
    a close while its last bytes drain) gets no keepalive verdict or join
    timeout afterwards: they would count, log and drop it a second time."""
    clock = Clock()
    server = make_server(clock=clock, ping_interval=20, ping_timeout=10, join_timeout=25)
    silent = RawWebSocket(server.port)  # never answers a ping, never joins
    on_reactor(clock.advance, 20)  # a ping goes out
    assert silent.recv_frame()[0] == 9
    protocol = server.connection(silent.id)

    def drop_then_let_the_timers_fire() -> None:
        # In one turn of the reactor: the transport is still there.
        protocol._drop_quietly(abort=False)
        clock.advance(10)  # past the ping timeout and the join timeout

    on_reactor(drop_then_let_the_timers_fire)
    stats = server.hub.stats
    assert on_reactor(lambda: (stats.keepalive_timeouts, dict(stats.errors))) == (0, {})
    assert silent.is_closed_by_peer()
