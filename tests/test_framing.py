"""The framing fast path, directly and through a real port."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signaling.wire.framing import GENERAL, NEED_MORE, next_frame, text_frame

from .conftest import RunningServer
from .rawws import RawWebSocket, client_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_whole_masked_frames_of_every_length_encoding(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    frame = client_frame(payload)
    assert next_frame(frame, 0, 1 << 20) == (len(frame), False, payload)
    assert next_frame(b"xy" + frame, 2, 1 << 20) == (len(frame) + 2, False, payload)
    for cut in range(len(frame) if size < 300 else 20):
        assert next_frame(frame[:cut], 0, 1 << 20)[0] == NEED_MORE


def test_binary_frame() -> None:
    frame = client_frame(b"\x00\x01", opcode=2)
    assert next_frame(frame, 0, 100) == (len(frame), True, b"\x00\x01")


@pytest.mark.parametrize(
    "frame",
    [
        client_frame(b"", opcode=9),  # ping
        client_frame(b"\x03\xe8", opcode=8),  # close
        client_frame(b"part", fin=False),  # first fragment
        client_frame(b"rest", opcode=0),  # continuation
        client_frame(b"abc", mask=False),  # unmasked: a protocol error
        bytes([0xC1]) + client_frame(b"abc")[1:],  # RSV1 set
        client_frame(b"x" * 101),  # over the size limit
    ],
)
def test_everything_else_goes_to_the_general_path(frame: bytes) -> None:
    assert next_frame(frame, 0, 100)[0] == GENERAL


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_text_frame_headers(size: int) -> None:
    frame = text_frame(b"a" * size)
    assert frame[0] == 0x81
    if size < 126:
        assert frame[1] == size and len(frame) == size + 2
    elif size < 65536:
        assert frame[1] == 126 and struct.unpack("!H", frame[2:4])[0] == size
    else:
        assert frame[1] == 127 and struct.unpack("!Q", frame[2:10])[0] == size


@settings(deadline=None)
@given(
    st.lists(st.tuples(st.binary(max_size=300), st.booleans()), max_size=20),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=10),
)
def test_any_split_of_a_stream_reads_the_same_messages(messages, cuts) -> None:
    stream = b"".join(client_frame(p, opcode=2 if b else 1) for p, b in messages)
    points = sorted({min(c, len(stream)) for c in cuts} | {len(stream)})
    received, partial, previous = [], b"", 0
    for point in points:  # what dataReceived does with each chunk
        buf = partial + stream[previous:point]
        previous = point
        offset = 0
        while True:
            end, is_binary, payload = next_frame(buf, offset, 1 << 20)
            if end < 0:
                assert end == NEED_MORE
                break
            received.append((payload, is_binary))
            offset = end
        partial = buf[offset:]
    assert received == [(p, b) for p, b in messages]
    assert partial == b""


# -- through the server ---------------------------------------------------------


def joined_pair(server: RunningServer) -> tuple[RawWebSocket, object]:
    raw = RawWebSocket(server.port)
    raw.send("join", {"room_id": "r"})
    assert raw.recv_json()["type"] == "joined"
    peer = server.client()
    assert peer.join("r") == [raw.id]
    assert raw.recv_json()["type"] == "new-client"
    return raw, peer


def offer(target: str, sdp: str) -> bytes:
    return json.dumps({"type": "offer", "payload": {"client_id": target, "sdp": sdp}}).encode()


def test_frames_split_byte_by_byte_and_batched(server: RunningServer) -> None:
    raw, peer = joined_pair(server)
    stream = b"".join(client_frame(offer(peer.id, f"sdp {i} ✓")) for i in range(5))
    for byte in stream[:200]:
        raw.sock.sendall(bytes([byte]))
    raw.sock.sendall(stream[200:])
    assert [peer.expect("offer")["sdp"] for _ in range(5)] == [f"sdp {i} ✓" for i in range(5)]


def test_fragmented_message_and_interleaved_ping(server: RunningServer) -> None:
    raw, peer = joined_pair(server)
    data = offer(peer.id, "fragmented")
    raw.sock.sendall(
        client_frame(offer(peer.id, "before"))
        + client_frame(data[:10], fin=False)
        + client_frame(b"hello", opcode=9)  # a ping between two fragments
        + client_frame(data[10:], opcode=0)
        + client_frame(offer(peer.id, "after"))
    )
    assert [peer.expect("offer")["sdp"] for _ in range(3)] == ["before", "fragmented", "after"]
    assert raw.recv_frame() == (10, b"hello")  # pong
    raw.sock.sendall(client_frame(offer(peer.id, "fast path again")))
    assert peer.expect("offer")["sdp"] == "fast path again"


def test_unmasked_frame_is_a_protocol_error(server: RunningServer) -> None:
    raw, peer = joined_pair(server)
    raw.sock.sendall(client_frame(offer(peer.id, "x"), mask=False))
    opcode, body = raw.recv_frame()
    assert opcode == 8 and struct.unpack("!H", body[:2])[0] == 1002
    assert peer.expect("leave-client") == {"client_id": raw.id}


def test_large_message_with_64_bit_length(make_server) -> None:
    server = make_server(max_message_size=200_000)
    raw, peer = joined_pair(server)
    sdp = "a=x\r\n" * 20_000  # 100 KB, above 65535
    raw.sock.sendall(client_frame(offer(peer.id, sdp)))
    assert peer.expect("offer")["sdp"] == sdp


def test_replies_are_written_straight_to_plain_sockets(server: RunningServer) -> None:
    """Plain TCP connections take the direct-send path (TLS ones never do)."""
    from .conftest import on_reactor

    raw, peer = joined_pair(server)
    assert on_reactor(lambda: server.connection(peer.id).writes_to_socket)
    raw.sock.sendall(b"".join(client_frame(offer(peer.id, f"burst {i}")) for i in range(20)))
    for i in range(20):  # a burst is queued through the transport, in order
        raw.sock.sendall(client_frame(offer(peer.id, f"single {i}")))
    assert [peer.expect("offer")["sdp"] for _ in range(40)] == [f"burst {i}" for i in range(20)] + [
        f"single {i}" for i in range(20)
    ]
