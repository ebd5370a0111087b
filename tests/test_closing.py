"""What happens around a close: the room hears of it at once, and nothing
the client still sends counts."""

from __future__ import annotations

import json
import struct

from signaling.admin import Admin

from .conftest import RunningServer, on_reactor, wait_for
from .rawws import client_frame
from .test_framing import joined_pair, offer


def test_member_dropped_while_someone_joins_leaves_the_registry_consistent(make_server) -> None:
    """A member found not reading while a newcomer's new-client is delivered
    to it is dropped after the join, never in the middle of it."""
    server = make_server(max_send_buffer=10)
    a = server.client()
    a.join("r")
    protocol = server.connection(a.id)
    # A stopped reading long ago: its transport is paused with a full queue.
    on_reactor(protocol.pauseProducing)
    on_reactor(setattr, protocol, "_queued_bytes", lambda: 1 << 30)
    b = server.client()
    assert b.join("r") == [a.id]
    assert b.expect("leave-client") == {"client_id": a.id}  # right after, not never
    registry = server.hub.rooms
    assert server.rooms() == {"r": {b.id}}
    assert on_reactor(lambda: registry.room("r") is registry.room_of(b.id))
    c = server.client()
    assert c.join("r") == [b.id]  # the same room, not a second one
    b.close()
    assert c.expect("leave-client") == {"client_id": b.id}
    c.close()
    assert wait_for(lambda: server.rooms() == {} and server.member_count() == 0)
    assert wait_for(lambda: on_reactor(lambda: len(server.hub.sessions)) == 0)


def test_nothing_counts_once_the_server_started_closing(server: RunningServer) -> None:
    raw, peer = joined_pair(server)
    on_reactor(Admin(server.factory).kick, raw.id)
    assert peer.expect("leave-client") == {"client_id": raw.id}
    # The client has not read the close frame yet and still sends.
    raw.sock.sendall(
        client_frame(json.dumps({"type": "join", "payload": {"room_id": "x"}}).encode())
    )
    raw.sock.sendall(client_frame(offer(peer.id, "too late")))
    other = server.client()
    assert other.join("x") == []  # the closing client joined nothing
    peer.offer(other.id, "marker")  # and peer got nothing from it: its next frame is an error
    assert peer.expect_error("unknown_client")["client_id"] == other.id


def test_close_reply_after_a_partly_read_frame_is_clean(server: RunningServer) -> None:
    raw, peer = joined_pair(server)
    protocol = on_reactor(lambda: server.connection(raw.id))
    frame = client_frame(offer(peer.id, "x" * 3000))
    raw.sock.sendall(frame[:1000])
    assert wait_for(lambda: on_reactor(lambda: len(protocol._partial)) == 1000)
    on_reactor(Admin(server.factory).kick, raw.id)
    # The client finishes its frame, then answers the close as RFC 6455 says.
    raw.sock.sendall(frame[1000:] + client_frame(struct.pack("!H", 4000), opcode=8))
    assert wait_for(lambda: on_reactor(lambda: protocol.state) == protocol.STATE_CLOSED)
    assert on_reactor(lambda: (protocol.wasClean, protocol.remoteCloseCode)) == (True, 4000)


def test_protocol_error_takes_the_member_out_at_once(server: RunningServer) -> None:
    raw, peer = joined_pair(server)
    raw.sock.sendall(client_frame(b"x", opcode=3))  # a reserved opcode: Autobahn fails it
    assert peer.expect("leave-client") == {"client_id": raw.id}
    opcode, body = raw.recv_frame()
    assert opcode == 8 and struct.unpack("!H", body[:2])[0] == 1002
