"""Resuming after a network blip, against the real server on a real port:
connections opted in with ``?resume=1`` are cut without a close frame (a
TCP reset) and taken over with ``?resume_token=&last_seq=``. The server's
clock is a ``task.Clock``, so the grace ends when a test says."""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.task import Clock

from signaling.core.session import State
from signaling.wire.compat import NO_FAST_PATHS, FastPaths

from .conftest import Client, RunningServer, on_reactor, wait_for
from .rawws import RawWebSocket
from .test_observability import scrape

GRACE = 15.0


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def srv(make_server: Callable[..., RunningServer], clock: Clock) -> RunningServer:
    return make_server(clock=clock, resume_grace=GRACE)


def opted_in(server: RunningServer) -> RawWebSocket:
    return RawWebSocket(server.port, target="/connect?resume=1")


def resuming(server: RunningServer, token: str, last_seq: int) -> RawWebSocket:
    return RawWebSocket(server.port, target=f"/connect?resume_token={token}&last_seq={last_seq}")


def state_of(server: RunningServer, client_id: str) -> State | None:
    session = on_reactor(lambda: server.hub.sessions.get(client_id))
    return None if session is None else session.state


def silent(client: Client, timeout: float = 0.3) -> bool:
    """Whether ``client`` receives nothing within ``timeout``."""
    try:
        message = client.recv(timeout)
    except TimeoutError:
        return True
    raise AssertionError(f"unexpected {message}")


def pair(server: RunningServer) -> tuple[RawWebSocket, Client]:
    """An opted-in raw client ``a`` and a plain client ``b`` in room r,
    ``a`` having read ``joined`` (seq 1) and ``new-client`` (seq 2)."""
    a = opted_in(server)
    a.send("join", {"room_id": "r"})
    assert a.recv_json() == {"seq": 1, "type": "joined", "payload": {"room_id": "r", "clients": []}}
    b = server.client()
    assert b.join("r") == [a.id]
    assert a.recv_json() == {"seq": 2, "type": "new-client", "payload": {"client_id": b.id}}
    return a, b


def test_the_first_connection_gets_a_token_and_numbered_frames(srv: RunningServer) -> None:
    a = opted_in(srv)
    with a:
        assert set(a.hello) == {"client_id", "resume_token", "resumed"}
        assert a.hello["resumed"] is False and len(a.hello["resume_token"]) == 32
        a.send("leave", {})
        assert a.recv_json()["seq"] == 1


def test_drop_and_resume_within_the_grace(srv: RunningServer, clock: Clock) -> None:
    a, b = pair(srv)
    token = a.hello["resume_token"]
    # Written to the socket, never read: the client has seen up to seq 2.
    b.offer(a.id, "written to the dying socket")
    assert wait_for(lambda: on_reactor(lambda: srv.hub.sessions[a.id].seq) == 3)
    a.reset()
    assert wait_for(lambda: state_of(srv, a.id) is State.AWAY)
    b.offer(a.id, "sent during the gap")
    b.send("candidate", {"client_id": a.id, "candidate": {"candidate": "c"}})
    on_reactor(clock.advance, GRACE - 1)
    with resuming(srv, token, 2) as again:
        assert again.before == []
        assert again.id == a.id
        assert again.hello["resumed"] is True
        assert again.hello["resume_token"] not in (token, None)
        replayed = [again.recv_json() for _ in range(3)]
        assert [(m["seq"], m["type"]) for m in replayed] == [
            (3, "offer"),
            (4, "offer"),
            (5, "candidate"),
        ]
        assert replayed[0]["payload"] == {"client_id": b.id, "sdp": "written to the dying socket"}
        assert replayed[1]["payload"]["sdp"] == "sent during the gap"
        # Normal traffic, both ways; the grace no longer runs.
        again.send("answer", {"client_id": b.id, "sdp": "back"})
        assert b.expect("answer") == {"client_id": a.id, "sdp": "back"}
        b.offer(a.id, "after")
        assert again.recv_json()["seq"] == 6
        on_reactor(clock.advance, GRACE * 2)
        assert silent(b)  # never a leave-client
        assert srv.rooms() == {"r": {a.id, b.id}}
        stats = srv.hub.stats
        assert (stats.sessions_resumed, stats.sessions_expired) == (1, 0)


def test_resume_after_the_grace_fails_cleanly(srv: RunningServer, clock: Clock) -> None:
    a, b = pair(srv)
    a.reset()
    assert wait_for(lambda: state_of(srv, a.id) is State.AWAY)
    on_reactor(clock.advance, GRACE - 0.5)
    assert silent(b)
    on_reactor(clock.advance, 0.5)
    assert b.expect("leave-client") == {"client_id": a.id}
    with resuming(srv, a.hello["resume_token"], 2) as late:
        assert [m["payload"]["code"] for m in late.before] == ["resume_failed"]
        assert late.id != a.id and late.hello == {"client_id": late.id, "resumed": False}
        late.send("join", {"room_id": "r"})
        joined = late.recv_json()
        assert "seq" not in joined and joined["payload"]["clients"] == [b.id]
    assert srv.hub.stats.sessions_expired == 1


def test_a_token_used_twice(srv: RunningServer) -> None:
    a, b = pair(srv)
    token = a.hello["resume_token"]
    with a, resuming(srv, token, 2) as second:
        # The older socket, still connected, is closed: resumed elsewhere.
        assert a.recv_close()[0] == 4003
        assert second.id == a.id and second.hello["resumed"] is True
        b.offer(a.id, "to the new socket")
        assert second.recv_json()["payload"]["sdp"] == "to the new socket"
        with resuming(srv, token, 2) as third:  # spent
            assert [m["payload"]["code"] for m in third.before] == ["resume_failed"]
            assert third.id != a.id
        assert silent(b)
        assert state_of(srv, a.id) is State.IN_ROOM


def test_a_clean_close_ends_at_once(srv: RunningServer) -> None:
    a, b = pair(srv)
    with a:
        a.send_close(1000)
        assert b.expect("leave-client") == {"client_id": a.id}
    assert wait_for(lambda: on_reactor(lambda: a.id not in srv.hub.sessions))
    assert on_reactor(lambda: dict(srv.hub.resume_tokens)) == {}


def test_a_going_away_close_is_away(srv: RunningServer) -> None:
    a, b = pair(srv)
    with a:
        a.send_close(1001)
        assert wait_for(lambda: state_of(srv, a.id) is State.AWAY)
    with resuming(srv, a.hello["resume_token"], 2) as again:
        assert again.id == a.id
    assert silent(b)


def test_a_client_without_resume_sees_no_change(srv: RunningServer) -> None:
    a = srv.client()  # expect() checks that frames hold type and payload only
    b = srv.client()
    a.join("r")
    b.join("r")
    a.expect("new-client")
    sock = a.ws.socket  # cut without a close frame
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    assert b.expect("leave-client") == {"client_id": a.id}


def test_resume_off(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(resume_grace=0)
    with opted_in(server) as a:
        assert a.hello == {"client_id": a.id}
        a.send("leave", {})
        assert "seq" not in a.recv_json()


def test_a_thousand_drops_that_expire_leave_nothing(
    make_server: Callable[..., RunningServer], clock: Clock
) -> None:
    server = make_server(
        clock=clock,
        resume_grace=GRACE,
        max_connections_per_address=0,
        connect_rate=0,
        max_room_size=0,
    )
    peer = server.client()
    peer.join("r")
    for i in range(1000):
        c = opted_in(server)
        if i % 10 == 0:
            c.send("join", {"room_id": "r"})
            assert c.recv_json()["type"] == "joined"
        c.reset()
    hub = server.hub
    assert wait_for(lambda: on_reactor(lambda: hub.sessions_away) == 1000, timeout=20)
    on_reactor(clock.advance, GRACE)
    assert on_reactor(lambda: (list(hub.sessions), len(hub.resume_tokens), hub.sessions_away)) == (
        [peer.id],
        0,
        0,
    )
    assert server.rooms() == {"r": {peer.id}}
    with contextlib.suppress(TimeoutError):
        while True:
            message: dict[str, Any] = peer.recv(0.2)
            assert message["type"] in ("new-client", "leave-client")


def test_metrics_count_away_resumed_and_expired(srv: RunningServer, clock: Clock) -> None:
    def figures() -> tuple[float, ...]:
        samples = scrape(srv.port)
        return tuple(
            samples[(name, ())]
            for name in (
                "signaling_sessions_away",
                "signaling_sessions_resumed_total",
                "signaling_sessions_expired_total",
                "signaling_connections_open",
            )
        )

    a, _ = pair(srv)
    c = opted_in(srv)
    assert figures() == (0, 0, 0, 3)
    a.reset()
    c.reset()
    assert wait_for(lambda: on_reactor(lambda: srv.hub.sessions_away) == 2)
    assert figures() == (2, 0, 0, 3)
    with resuming(srv, a.hello["resume_token"], 2):
        assert figures() == (1, 1, 0, 3)
        on_reactor(clock.advance, GRACE)
        assert figures() == (0, 1, 1, 2)


def test_with_redis_a_resume_on_the_other_process_moves_the_session(
    run_twistd: Callable[..., Any], shared_rooms: tuple[str, ...]
) -> None:
    def start() -> Any:
        return run_twistd(
            *("--interface", "127.0.0.1", "--port", "0", "--resume-grace", "30"),
            *shared_rooms,
        )

    one, two = start(), start()
    a = RawWebSocket(one.port, target="/connect?resume=1")
    a.send("join", {"room_id": "r"})
    assert a.recv_json()["type"] == "joined"
    b = RawWebSocket(two.port)
    b.send("join", {"room_id": "r"})
    assert b.recv_json()["payload"]["clients"] == [a.id]
    assert a.recv_json()["type"] == "new-client"  # seq 2
    token = a.hello["resume_token"]
    a.reset()
    b.send("offer", {"client_id": a.id, "sdp": "across processes, during the gap"})
    # On the other process: the session moves there.
    with RawWebSocket(two.port, target=f"/connect?resume_token={token}&last_seq=2") as again:
        assert again.before == []
        assert again.id == a.id and again.hello["resumed"] is True
        offer = again.recv_json()
        assert (offer["seq"], offer["payload"]["sdp"]) == (3, "across processes, during the gap")
        again.send("answer", {"client_id": b.id, "sdp": "back"})
        assert b.recv_json()["type"] == "answer"
    # Used: on its first process the token resumes nothing any more.
    with RawWebSocket(one.port, target=f"/connect?resume_token={token}&last_seq=2") as late:
        assert [m["payload"]["code"] for m in late.before] == ["resume_failed"]
    b.close()


def test_no_answer_to_pings_is_away(srv: RunningServer, clock: Clock) -> None:
    a, b = pair(srv)  # the raw client never answers a ping
    with a:
        on_reactor(clock.advance, 20)  # --ping-interval: pinged
        # b answers (its pong must be in before the timeout, or b goes too)
        assert wait_for(lambda: on_reactor(lambda: srv.hub.sessions[b.id].last_seen) >= 20)
        on_reactor(clock.advance, 20)  # --ping-timeout: dropped
        assert state_of(srv, a.id) is State.AWAY
        assert a.is_closed_by_peer()
    with resuming(srv, a.hello["resume_token"], 2) as again:
        assert again.id == a.id
    assert silent(b)


@pytest.mark.parametrize("paths", [NO_FAST_PATHS, FastPaths(write=False)], ids=["none", "no-write"])
def test_resume_without_the_fast_paths(srv: RunningServer, paths: FastPaths) -> None:
    srv.factory.fast_paths = paths
    a, b = pair(srv)
    a.reset()
    assert wait_for(lambda: state_of(srv, a.id) is State.AWAY)
    b.offer(a.id, "gap")
    with resuming(srv, a.hello["resume_token"], 2) as again:
        assert again.id == a.id
        assert again.recv_json() == {
            "seq": 3,
            "type": "offer",
            "payload": {"client_id": b.id, "sdp": "gap"},
        }
    with resuming(srv, "no-such-token", 0) as fresh:
        assert [m["payload"]["code"] for m in fresh.before] == ["resume_failed"]
