"""What misbehaving clients can cost the real server: memory left behind by
closed connections, and floods of frames that are not messages."""

from __future__ import annotations

import socket
import threading

from .twistd_process import rss_bytes

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
        *("--max-connections-per-address", "0"),
    )
    pid = server.process.pid
    churn(server.port, 4000)  # warm up: allocator pools, interned strings, caches
    before = rss_bytes(pid)
    churn(server.port, 30000)
    grown = rss_bytes(pid) - before
    print(f"RSS grew by {grown / MIB:.1f} MiB over 30,000 connections")
    assert grown < 5 * MIB, f"RSS grew by {grown / MIB:.1f} MiB over 30,000 connections"
