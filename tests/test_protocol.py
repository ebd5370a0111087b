"""The wire protocol against a real listening server and real WebSocket clients.

No test sleeps to prove that something did *not* arrive: the server handles
frames in order and TCP keeps each connection's order, so a marker message
sent after the action must be the next thing a client sees.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request

import pytest

from signaling.core.limits import Limits
from signaling.wire.protocol import SignalingFactory, SignalingProtocol

from .conftest import Client, RunningServer, on_reactor, wait_for

SDP = (
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "a=msid-semantic: WMS ストリーム\r\n"
)
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,}$")


def marker(sender: Client, target: Client, text: str = "marker") -> None:
    """Prove ``target`` got nothing else before: the next message must be this one."""
    sender.offer(target.id, text)
    assert target.expect("offer") == {"client_id": sender.id, "sdp": text}


def pair(server: RunningServer, room: str = "room") -> tuple[Client, Client]:
    a, b = server.client(), server.client()
    assert a.join(room) == []
    assert b.join(room) == [a.id]
    assert a.expect("new-client") == {"client_id": b.id}
    return a, b


# -- connecting and joining ------------------------------------------------


def test_notify_client_id_on_open(server: RunningServer) -> None:
    clients = [server.client() for _ in range(5)]
    ids = [c.id for c in clients]
    assert len(set(ids)) == 5
    assert all(ID_PATTERN.match(i) for i in ids), ids


def test_join_notifies_existing_members(server: RunningServer) -> None:
    a, b = pair(server)
    c = server.client()
    assert c.join("room") == [a.id, b.id]
    assert a.expect("new-client") == {"client_id": c.id}
    assert b.expect("new-client") == {"client_id": c.id}
    assert server.rooms() == {"room": {a.id, b.id, c.id}}
    marker(a, c)  # c got no new-client about itself


def test_join_while_in_room_is_an_error(server: RunningServer) -> None:
    a, b = pair(server)
    a.send("join", {"room_id": "other"})
    error = a.expect_error("already_in_room")
    assert error["room_id"] == "room" and error["in_reply_to"] == "join"
    assert server.rooms() == {"room": {a.id, b.id}}
    marker(a, b)


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"room_id": ""},
        {"room_id": 7},
        {"room_id": None},
        {"room_id": ["r"]},
        {"room_id": "x" * 257},
    ],
)
def test_invalid_room_id(server: RunningServer, payload: dict) -> None:
    a = server.client()
    a.send("join", payload)
    a.expect_error("invalid_room_id")
    assert server.rooms() == {}
    assert a.join("x" * 256) == []  # the documented maximum is accepted


def test_room_id_length_is_configurable(make_server) -> None:
    server = make_server(max_room_id_length=4)
    a = server.client()
    a.send("join", {"room_id": "abcde"})
    a.expect_error("invalid_room_id")
    assert a.join("abcd") == []


# -- relaying ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["offer", "answer"])
def test_sdp_relayed_to_target_only_with_sender_stamped(server: RunningServer, kind: str) -> None:
    a, b = pair(server)
    c = server.client()
    c.join("room")
    a.expect("new-client")
    b.expect("new-client")
    # A claims to be C; the server ignores that and stamps A's real id.
    a.send(kind, {"client_id": b.id, "sdp": SDP, "from": c.id, "sender": c.id})
    assert b.expect(kind) == {"client_id": a.id, "sdp": SDP}
    marker(b, c)  # C received nothing of A's offer
    marker(b, a)  # and A got no echo or error


@pytest.mark.parametrize(
    "candidate",
    [
        {
            "candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
        },
        "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
        None,
    ],
)
def test_candidate_relayed_unchanged(server: RunningServer, candidate) -> None:
    a, b = pair(server)
    a.send("candidate", {"client_id": b.id, "candidate": candidate})
    assert b.expect("candidate") == {"client_id": a.id, "candidate": candidate}


def test_order_from_one_sender_to_one_target(make_server) -> None:
    server = make_server(rate_limit=0)
    a, b = pair(server)
    for i in range(300):
        a.offer(b.id, f"{i}")
    assert [b.expect("offer")["sdp"] for _ in range(300)] == [str(i) for i in range(300)]


def test_relay_to_other_room_reaches_no_one(server: RunningServer) -> None:
    a, b = pair(server, "one")
    c, d = pair(server, "two")
    a.offer(c.id, SDP)
    error = a.expect_error("unknown_client")
    assert error["client_id"] == c.id and error["in_reply_to"] == "offer"
    marker(d, c)
    marker(a, b)


@pytest.mark.parametrize("target", ["nobody", "", "self"])
def test_relay_to_unknown_or_self_is_an_error(server: RunningServer, target: str) -> None:
    a, b = pair(server)
    target_id = a.id if target == "self" else target
    a.send("answer", {"client_id": target_id, "sdp": SDP})
    assert a.expect_error("unknown_client")["client_id"] == target_id
    marker(a, b)


@pytest.mark.parametrize("kind", ["offer", "answer", "candidate"])
def test_relay_before_join_is_an_error(server: RunningServer, kind: str) -> None:
    a, b = pair(server)
    lonely = server.client()
    field = "candidate" if kind == "candidate" else "sdp"
    lonely.send(kind, {"client_id": a.id, field: "x"})
    assert lonely.expect_error("not_in_room")["in_reply_to"] == kind
    marker(b, a)


# -- leaving ----------------------------------------------------------------


def test_leave_message_keeps_socket_and_allows_rejoin(server: RunningServer) -> None:
    a, b = pair(server)
    a.send("leave", {})
    assert b.expect("leave-client") == {"client_id": a.id}
    assert server.rooms() == {"room": {b.id}}
    assert a.join("elsewhere") == []
    assert server.rooms() == {"room": {b.id}, "elsewhere": {a.id}}
    b.send("leave")
    assert wait_for(lambda: server.rooms() == {"elsewhere": {a.id}})
    assert b.join("room") == []  # the emptied room was deleted and is new again


def test_leave_when_not_in_room(server: RunningServer) -> None:
    a = server.client()
    a.send("leave", {})
    assert a.expect_error("not_in_room")["in_reply_to"] == "leave"


def test_factory_tracks_open_connections(server: RunningServer) -> None:
    a = server.client()
    b = server.client()
    assert on_reactor(lambda: set(server.hub.sessions)) == {a.id, b.id}
    assert on_reactor(lambda: server.hub.sessions[a.id].room) is None
    a.close()
    assert wait_for(lambda: on_reactor(lambda: set(server.hub.sessions)) == {b.id})


def test_disconnect_tells_the_room_and_room_is_deleted(server: RunningServer) -> None:
    a, b = pair(server)
    c = server.client()
    c.join("room")
    a.expect("new-client")
    b.expect("new-client")
    a.close()
    assert b.expect("leave-client") == {"client_id": a.id}
    assert c.expect("leave-client") == {"client_id": a.id}
    b.ws.socket.close()  # abrupt: no closing handshake
    assert c.expect("leave-client") == {"client_id": b.id}
    c.send("leave", {})
    assert wait_for(lambda: server.rooms() == {})
    assert server.member_count() == 0


# -- bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ('{"type": "join"', "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('"join"', "invalid_message"),
        ("null", "invalid_message"),
        ("{}", "invalid_message"),
        ('{"type": 5, "payload": {}}', "invalid_message"),
        ('{"type": null}', "invalid_message"),
        ('{"type": "dance", "payload": {}}', "unknown_type"),
        ('{"type": "join"}', "invalid_message"),
        ('{"type": "join", "payload": "{\\"room_id\\": \\"r\\"}"}', "invalid_message"),
        ('{"type": "offer", "payload": {"sdp": "x"}}', "invalid_message"),
        ('{"type": "offer", "payload": {"client_id": "x"}}', "invalid_message"),
        ('{"type": "answer", "payload": {"client_id": "x", "sdp": 5}}', "invalid_message"),
        ('{"type": "candidate", "payload": {"client_id": "x", "candidate": 5}}', "invalid_message"),
        ('{"type": "candidate", "payload": {"client_id": "x"}}', "invalid_message"),
        ('{"type": "leave", "payload": 5}', "invalid_message"),
        ("[" * 5000 + "]" * 5000, "invalid_json"),
        (
            '{"type": "join", "payload": {"room_id": "r", "x": ' + "[" * 5000 + "]" * 5000 + "}}",
            "invalid_json",
        ),
    ],
)
def test_bad_frames_get_an_error_and_the_connection_carries_on(
    server: RunningServer, frame: str, code: str
) -> None:
    a, b = pair(server)
    a.send_raw(frame)
    a.expect_error(code)
    marker(a, b)  # a's connection still works, b saw nothing
    marker(b, a)
    assert server.rooms() == {"room": {a.id, b.id}}


def test_binary_frame_gets_an_error(server: RunningServer) -> None:
    a, b = pair(server)
    a.send_raw(json.dumps({"type": "offer", "payload": {"client_id": b.id, "sdp": "x"}}).encode())
    a.expect_error("unsupported_frame")
    marker(a, b)


def test_invalid_utf8_closes_1007_and_room_is_told(server: RunningServer) -> None:
    a, b = pair(server)
    a.send_raw(b'{"type": "leave", "payload": {"x": "\xff\xfe"}}', text=True)
    assert a.expect_closed() == 1007
    assert b.expect("leave-client") == {"client_id": a.id}


def test_oversize_message_closes_1009_and_others_carry_on(make_server) -> None:
    server = make_server(max_message_size=2048)
    a, b = pair(server)
    a.offer(b.id, "x" * 1900)  # under the limit: relayed
    assert b.expect("offer")["sdp"] == "x" * 1900
    a.offer(b.id, "x" * 3000)
    assert a.expect_closed() == 1009
    assert b.expect("leave-client") == {"client_id": a.id}
    c = server.client()
    assert c.join("room") == [b.id]
    assert b.expect("new-client") == {"client_id": c.id}


def test_servers_in_one_process_keep_their_own_settings(make_server) -> None:
    small, default = make_server(max_message_size=2048), make_server()
    a, b = pair(default)
    a.offer(b.id, "x" * 3000)
    assert b.expect("offer")["sdp"] == "x" * 3000
    c, d = pair(small)
    c.offer(d.id, "x" * 3000)
    assert c.expect_closed() == 1009
    # Autobahn's settings are shared through each factory's protocol class
    assert small.factory.protocol is not default.factory.protocol
    assert "maxMessagePayloadSize" not in vars(default.connection(a.id))


def test_default_message_size_limit_is_64k(server: RunningServer) -> None:
    a, b = pair(server)
    big = "x" * (64 * 1024 - 200)
    a.offer(b.id, big)
    assert b.expect("offer")["sdp"] == big
    a.offer(b.id, "x" * (64 * 1024 + 1))
    assert a.expect_closed() == 1009


def test_other_paths_are_404(server: RunningServer) -> None:
    for path in ("/other", "/connect/x", "/static/", "/static/nope.js", "/index.html"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5)
        assert info.value.code == 404


def test_plain_http_get_of_endpoint_is_refused(server: RunningServer) -> None:
    for query in ("", "?redirect=http%3A%2F%2Fexample.com%2F"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/connect{query}", timeout=5)
        assert info.value.code == 426, info.value.code


# -- many peers -----------------------------------------------------------------


def test_six_peer_full_mesh(server: RunningServer) -> None:
    """Every existing member offers to each newcomer, who answers each offer."""
    peers: list[Client] = []
    for _ in range(6):
        newcomer = server.client()
        assert newcomer.join("mesh") == [p.id for p in peers]
        for p in peers:
            assert p.expect("new-client") == {"client_id": newcomer.id}
            p.offer(newcomer.id, f"offer {p.id}->{newcomer.id}")
        offers = {}
        for _ in peers:
            payload = newcomer.expect("offer")
            offers[payload["client_id"]] = payload["sdp"]
        assert offers == {p.id: f"offer {p.id}->{newcomer.id}" for p in peers}
        for sender in offers:
            newcomer.send("answer", {"client_id": sender, "sdp": f"answer {newcomer.id}->{sender}"})
        for p in peers:
            assert p.expect("answer") == {
                "client_id": newcomer.id,
                "sdp": f"answer {newcomer.id}->{p.id}",
            }
        peers.append(newcomer)
    assert server.rooms() == {"mesh": {p.id for p in peers}}
    for p in peers:
        p.close()
    # the last one out deletes the room
    assert wait_for(lambda: server.rooms() == {})


def test_concurrent_joins_give_one_new_client_per_pair(server: RunningServer) -> None:
    n = 20
    clients = [server.client() for _ in range(n)]
    barrier = threading.Barrier(n)
    before: dict[str, list[str]] = {}

    def join(c: Client) -> None:
        barrier.wait()
        c.send("join", {"room_id": "crowd"})

    threads = [threading.Thread(target=join, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    for c in clients:
        # Each client hears about everyone who joined after it: new-client
        # frames may come before or after its own joined reply.
        heard, joined = [], None
        while joined is None or len(heard) < n - 1 - len(joined):
            message = c.recv()
            if message["type"] == "joined":
                joined = message["payload"]["clients"]
            else:
                assert message["type"] == "new-client", message
                heard.append(message["payload"]["client_id"])
        before[c.id] = joined
        assert len(heard) == len(set(heard))
        later = {other.id for other in clients if other is not c} - set(joined)
        assert set(heard) == later
    ids = [c.id for c in clients]
    for i, x in enumerate(ids):
        for y in ids[i + 1 :]:
            # exactly one of the two learned of the other through new-client
            assert (x in before[y]) != (y in before[x])
    assert server.rooms() == {"crowd": set(ids)}
    for c in clients[1:]:
        marker(clients[0], c)  # nothing stray arrived anywhere


def test_factory_subclass_keeps_its_own_protocol_class() -> None:
    class Custom(SignalingProtocol):
        pass

    class CustomFactory(SignalingFactory):
        protocol = Custom

    factory = CustomFactory(limits=Limits(max_message_size=1234))
    assert issubclass(factory.protocol, Custom)
    assert factory.protocol.maxMessagePayloadSize == 1234
    factory.resetProtocolOptions()
    assert issubclass(factory.protocol, Custom)
    assert factory.protocol.maxMessagePayloadSize == factory.maxMessagePayloadSize
