"""What misbehaving clients can cost the real server: memory left behind by
closed connections, and floods of frames that are not messages."""

from __future__ import annotations

import contextlib
import gc
import socket
import struct
import threading
import weakref

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from websockets.sync.client import connect

from .conftest import Client, on_reactor, wait_for
from .rawws import RawWebSocket, client_frame

MIB = 1024 * 1024
UPGRADE = (
    b"GET /connect HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
#: A masked close frame with code 1000 (the mask is zero: the bytes are as sent).
CLOSE_NORMAL = b"\x88\x82\0\0\0\0\x03\xe8"


def _connect_and_close(port: int, count: int) -> None:
    """``count`` connections open at once, then all close: each lives long
    enough to be an old object by the time it goes (as on a real server)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sockets.append(sock)
            sock.sendall(UPGRADE)
        for sock in sockets:
            received = b""
            while b"notify-client-id" not in received:
                chunk = sock.recv(4096)
                assert chunk, f"closed during the handshake: {received!r}"
                received += chunk
        for sock in sockets:
            sock.sendall(CLOSE_NORMAL)
        for sock in sockets:
            while sock.recv(65536):
                pass
    finally:
        for sock in sockets:
            sock.close()


def churn(port: int, total: int, workers: int = 4, batch: int = 250) -> None:
    """``total`` connect/close cycles, from ``workers`` threads in batches."""
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(total // workers // batch):
                _connect_and_close(port, batch)
        except BaseException as e:  # reported by the test's thread
            failures.append(e)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures


def test_closed_connections_leave_no_memory_behind(run_twistd) -> None:
    server = run_twistd(
        *("--interface", "127.0.0.1", "--port", "0"),
        # One client address for everything: no per-address limits.
        *("--max-connections-per-address", "0", "--max-pending-per-address", "0"),
        *("--connect-rate", "0"),
    )
    churn(server.port, 4000)  # warm up: allocator pools, interned strings, caches
    before = server.rss_bytes()
    churn(server.port, 30000)
    grown = server.rss_bytes() - before
    print(f"RSS grew by {grown / MIB:.1f} MiB over 30,000 connections")
    assert grown < 5 * MIB, f"RSS grew by {grown / MIB:.1f} MiB over 30,000 connections"


# -- frames that are not messages ---------------------------------------------


def honest_pair(port: int, stack: contextlib.ExitStack) -> tuple[Client, Client]:
    """Two well-behaved clients in a room of their own."""
    url = f"ws://127.0.0.1:{port}/connect"
    x, y = (
        Client(stack.enter_context(connect(url, proxy=None, open_timeout=5, close_timeout=1)))
        for _ in range(2)
    )
    x.join("honest")
    y.join("honest")
    x.expect("new-client")
    return x, y


def assert_relays(x: Client, y: Client, text: str) -> None:
    x.offer(y.id, text)
    assert y.expect("offer", timeout=2)["sdp"] == text


@pytest.mark.parametrize("options", [(), ("--rate-limit", "0")], ids=["rate-limit", "send-buffer"])
def test_ping_flood_from_a_client_that_never_reads_is_closed(run_twistd, options) -> None:
    """Pings count against the rate limit, and their pongs against
    --max-send-buffer: either way the flooder goes, with memory bounded."""
    server = run_twistd(*("--interface", "127.0.0.1", "--port", "0"), *options)
    with contextlib.ExitStack() as stack:
        x, y = honest_pair(server.port, stack)
        flooder = RawWebSocket(server.port, rcvbuf=4096)
        pings = client_frame(b"p" * 125, opcode=9) * 1000
        baseline = peak = server.rss_bytes()
        sent = 0
        try:
            while sent < 1_000_000:  # 131 MB of pings
                flooder.sock.sendall(pings)
                sent += 1000
                if sent % 50_000 == 0:
                    peak = max(peak, server.rss_bytes())
                    assert_relays(x, y, f"after {sent} pings")
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while it was still sending
        peak = max(peak, server.rss_bytes())
        assert flooder.is_closed_by_peer(), f"{sent} pings and still connected"
        print(f"closed after {sent} pings; server grew {(peak - baseline) / MIB:.1f} MiB")
        assert peak - baseline < 16 * MIB, f"server grew by {(peak - baseline) / MIB:.1f} MiB"
        assert_relays(x, y, "after the flood")


def message_in_frames(text: bytes, count: int) -> bytes:
    """``text`` as one message of ``count`` frames (the middle ones empty)."""
    middle = b"".join(client_frame(b"", opcode=0, fin=False) for _ in range(count - 2))
    return client_frame(text[:1], fin=False) + middle + client_frame(text[1:], opcode=0)


def expect_close(ws: RawWebSocket) -> tuple[int, bytes]:
    """The server's close frame (skipping other frames): code and reason;
    then the connection must end in order, without a reset."""
    closing = ws.recv_close()
    assert ws.is_closed_by_peer()
    return closing


def test_message_in_more_fragments_than_allowed_is_closed_with_1009(run_twistd) -> None:
    server = run_twistd("--interface", "127.0.0.1", "--port", "0", "--max-fragments", "16")
    ws = RawWebSocket(server.port)
    ws.sock.sendall(message_in_frames(b'{"type": "join", "payload": {"room_id": "r"}}', 16))
    assert ws.recv_json()["type"] == "joined"
    ws.sock.sendall(message_in_frames(b'{"type": "leave"}', 17))
    assert expect_close(ws) == (1009, b"more than 16 frames in one message")


def test_flood_of_empty_continuation_frames_is_closed(run_twistd) -> None:
    server = run_twistd("--interface", "127.0.0.1", "--port", "0")
    with contextlib.ExitStack() as stack:
        x, y = honest_pair(server.port, stack)
        ws = RawWebSocket(server.port)
        empty = client_frame(b"", opcode=0, fin=False)
        ws.sock.sendall(client_frame(b"{", fin=False) + empty * 100_000)
        assert expect_close(ws) == (1009, b"more than 128 frames in one message")
        assert_relays(x, y, "after the flood")


def test_continuation_frames_count_against_the_rate_limit(run_twistd) -> None:
    server = run_twistd(
        *("--interface", "127.0.0.1", "--port", "0"),
        *("--max-fragments", "0", "--rate-burst", "20", "--rate-limit-strikes", "10"),
    )
    ws = RawWebSocket(server.port)
    empty = client_frame(b"", opcode=0, fin=False)
    ws.sock.sendall(client_frame(b"{", fin=False) + empty * 1000)
    assert expect_close(ws) == (1008, b"rate limit exceeded")


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (struct.pack("!H", 999), 1002),
        (struct.pack("!H", 1005), 1002),
        (struct.pack("!H", 5000), 1002),
        (b"\x03", 1002),
        (struct.pack("!H", 1000) + b"\xff\xfe", 1007),
        (struct.pack("!H", 1000) + b"bye", 1000),
        (struct.pack("!H", 4000), 1000),
    ],
    ids=["999", "1005", "5000", "one-byte", "reason-not-utf8", "normal", "private"],
)
def test_close_frames_are_answered_with_a_close_frame(run_twistd, payload, code) -> None:
    server = run_twistd("--interface", "127.0.0.1", "--port", "0")
    ws = RawWebSocket(server.port)
    ws.sock.sendall(client_frame(payload, opcode=8))
    assert expect_close(ws)[0] == code


@pytest.mark.parametrize("ending", ["close", "abrupt", "bad-close", "kicked"])
def test_a_closed_connection_is_freed_without_a_collection(server, ending) -> None:
    """Nothing of a closed connection refers to itself: reference counting
    frees it, with the cyclic collector off (a busy server rarely runs a
    full collection)."""
    gc.collect()
    gc.disable()
    try:
        ws = RawWebSocket(server.port)
        protocol = weakref.ref(on_reactor(lambda: server.connection(ws.id)))
        if ending == "close":
            ws.sock.sendall(CLOSE_NORMAL)
        elif ending == "abrupt":
            ws.sock.close()
        elif ending == "bad-close":
            ws.sock.sendall(client_frame(struct.pack("!H", 999), opcode=8))
        else:
            on_reactor(lambda: server.connection(ws.id).close(4000, "kicked"))
            ws.recv_frame()
            ws.sock.sendall(CLOSE_NORMAL)
        assert wait_for(lambda: protocol() is None), gc.get_referrers(protocol())
    finally:
        gc.enable()
        ws.close()


@pytest.mark.parametrize("then", ["close", "upgrade"])
def test_a_plain_http_connection_is_freed_without_a_collection(server, then) -> None:
    """The same for a connection that began as plain HTTP (a health check),
    whether it then closes or upgrades to a WebSocket on the same socket."""
    gc.collect()
    gc.disable()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            pending = server.factory.admission.pending
            http = weakref.ref(on_reactor(lambda: next(iter(pending)).protocol))
            if then == "upgrade":
                sock.sendall(UPGRADE)
                assert sock.recv(65536).startswith(b"HTTP/1.1 101 ")
                assert wait_for(lambda: http() is None), gc.get_referrers(http())
        assert wait_for(lambda: http() is None), gc.get_referrers(http())
    finally:
        gc.enable()


def test_client_that_closes_but_never_reads_is_cut_off(make_server) -> None:
    """Its close is answered, but the answer waits behind what it did not
    read: the connection still ends, after the closing handshake's timeout."""
    server = make_server(rate_limit=0, max_send_buffer=0)
    stalled = RawWebSocket(server.port, rcvbuf=4096)
    stalled.send("join", {"room_id": "r"})
    assert stalled.recv_json()["type"] == "joined"
    # A small kernel buffer on the server's side too: otherwise the kernel
    # may take all 2.5 MB and the transport never has to queue any.
    on_reactor(
        lambda: server.connection(stalled.id).transport.socket.setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
        )
    )
    sender = server.client()
    sender.join("r")
    for _ in range(100):  # 2.5 MB it never reads
        sender.offer(stalled.id, "x" * 25_000)
    assert wait_for(lambda: on_reactor(lambda: server.connection(stalled.id)._paused))
    stalled.sock.sendall(CLOSE_NORMAL)
    assert wait_for(lambda: stalled.id not in server.hub.sessions)
    stalled.close()


def test_closing_floods_and_silent_peers_costs_no_warning(make_server, info_events) -> None:
    """Each of these is one client's doing, so it must not put a warning
    in the log: a flooder that ignores the close, a bad close frame, a
    peer that stops answering pings."""
    clock = Clock()
    server = make_server(clock=clock, rate_burst=5, rate_limit_strikes=5)
    flooder = RawWebSocket(server.port)
    flooder.sock.sendall(client_frame(b"", opcode=9) * 50)
    bad_close = RawWebSocket(server.port)
    bad_close.sock.sendall(client_frame(struct.pack("!H", 999), opcode=8))
    silent = RawWebSocket(server.port)
    on_reactor(clock.advance, 20)  # a keepalive ping...
    on_reactor(clock.advance, 20)  # ...unanswered
    assert wait_for(lambda: not server.hub.sessions)
    warnings = [e for e in info_events if e["log_level"] >= LogLevel.warn]
    assert not warnings, [e.get("log_format") for e in warnings]
    for ws in (flooder, bad_close, silent):
        ws.close()
