"""The first request on a connection decides who serves it: ``/connect`` goes
to the WebSocket protocol, any other path to the HTTP site."""

from __future__ import annotations

import base64
import json
import os
import select
import socket
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from websockets.sync.client import connect

from signaling.core import messages
from signaling.wire.compat import FastPaths

from .conftest import TIMEOUT, Client, RunningServer, on_reactor, wait_for


def upgrade_request(path: str = "/connect", **extra: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    headers = "".join(f"{name}: {value}\r\n" for name, value in extra.items())
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{headers}\r\n"
    ).encode()


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """Status line and body of one HTTP response (Content-Length bodies)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += sock.recv(65536)
    return lines[0], body


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def test_health_check_then_websocket_on_one_connection(server: RunningServer) -> None:
    """A keep-alive HTTP connection can still become a WebSocket later."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, body = read_response(sock)
        assert status.startswith(b"HTTP/1.1 200") and json.loads(body)["status"] == "ok"
        sock.sendall(upgrade_request())
        status, _ = read_response(sock)
        assert status.startswith(b"HTTP/1.1 101")
        assert wait_for(lambda: len(server.hub.sessions) == 1)


def test_query_string_on_connect_is_a_websocket(server: RunningServer) -> None:
    with connect(f"ws://127.0.0.1:{server.port}/connect?room=x", proxy=None) as ws:
        a = Client(ws)
        assert a.join("by-query") == []


@pytest.mark.parametrize("path", ["/connectx", "/connect/", "/nothing", "/connect/deeper"])
def test_other_paths_are_the_sites(server: RunningServer, path: str) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request(path))
        status, _ = read_response(sock)
        assert status.startswith(b"HTTP/1.1 404"), status
    assert not server.hub.sessions


def test_request_split_across_reads_is_routed(server: RunningServer) -> None:
    request = upgrade_request()
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start in range(0, len(request), 7):
            sock.sendall(request[start : start + 7])
        status, _ = read_response(sock)
        assert status.startswith(b"HTTP/1.1 101"), status


def test_non_get_on_connect_is_refused(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST /connect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
        status, _ = read_response(sock)
        assert status.startswith(b"HTTP/1.1 405"), status


def test_oversized_handshake_headers_get_431(make_server) -> None:
    server = make_server(max_handshake_size=2048)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request().rstrip(b"\r\n") + b"\r\nX-Padding: " + b"a" * 4096)
        status, _ = read_response(sock)
        assert status.startswith(b"HTTP/1.1 431"), status
        assert closed(sock)
    # a handshake within the limit is served
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request(**{"X-Padding": "a" * 1024}))
        status, _ = read_response(sock)
        assert status.startswith(b"HTTP/1.1 101"), status


def test_endless_request_line_gets_414(make_server) -> None:
    server = make_server(max_handshake_size=2048)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /connect?" + b"a" * 4096)
        status, _ = read_response(sock)
        assert status.startswith(b"HTTP/1.1 414"), status
        assert closed(sock)


def test_http_connection_keeps_only_what_is_left_of_the_deadline(make_server) -> None:
    clock = Clock()
    server = make_server(clock=clock, handshake_timeout=10, join_timeout=0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        assert wait_for(lambda: server.factory.countConnections == 1)  # accepted
        on_reactor(clock.advance, 6)
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # now the HTTP site's
        on_reactor(clock.advance, 3.5)
        sock.sendall(b"Host: 127.0.0.1\r\n")
        assert not select.select([sock], [], [], 0.1)[0]  # still open at 9.5 s
        on_reactor(clock.advance, 1)  # 10.5 s since it connected
        assert closed(sock)


def test_percent_encoded_connect_is_the_websocket(server: RunningServer) -> None:
    """twisted.web decodes path segments; the router does the same."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request("/%63onnect"))
        status, _ = read_response(sock)
        assert status.startswith(b"HTTP/1.1 101"), status


def test_percent_encoded_upgrade_after_health_check(
    server: RunningServer, events: list[dict[str, Any]]
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock)[0].startswith(b"HTTP/1.1 200")
        sock.sendall(upgrade_request("/%63onnect"))
        assert read_response(sock)[0].startswith(b"HTTP/1.1 101")
        assert wait_for(lambda: len(server.hub.sessions) == 1)
    assert not [e for e in list(events) if e.get("log_level", LogLevel.info) >= LogLevel.error]


def test_bare_lf_handshake_is_refused_at_once(server: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request().replace(b"\r\n", b"\n"))
        assert read_response(sock)[0].startswith(b"HTTP/1.1 400")


def test_oversized_headers_in_one_read_get_431(make_server) -> None:
    server = make_server(max_handshake_size=2048)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request(**{"X-Padding": "a" * 4096}))  # complete, but too long
        status, _ = read_response(sock)
        assert status.startswith(b"HTTP/1.1 431"), status
    assert server.hub.stats.refused_handshakes[431] == 1


def test_handshake_timeout_is_not_a_warning(make_server, events: list[dict[str, Any]]) -> None:
    clock = Clock()
    server = make_server(clock=clock, handshake_timeout=10, join_timeout=0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /connect HTTP/1.1\r\n")
        assert wait_for(lambda: server.factory.countConnections == 1)
        on_reactor(clock.advance, 10.5)
        assert closed(sock)
    assert wait_for(lambda: server.factory.countConnections == 0)
    loud = [e for e in list(events) if e.get("log_level", LogLevel.info) >= LogLevel.warn]
    assert not loud, loud


@pytest.mark.parametrize("plain", [True, False])
def test_failure_while_opening_does_not_leave_the_connection_open(
    make_server, monkeypatch: pytest.MonkeyPatch, plain: bool
) -> None:
    """Whether the error reaches the transport (one-pass handshakes) or is
    swallowed by Autobahn's Deferred, the connection ends by the deadline."""
    clock = Clock()
    server = make_server(clock=clock, handshake_timeout=10, join_timeout=0)
    server.factory.fast_paths = FastPaths(handshake=plain)

    def broken(client_id: str) -> bytes:
        raise RuntimeError("cannot greet")

    monkeypatch.setattr(messages, "notify_client_id", broken)
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(upgrade_request())
        assert wait_for(lambda: server.hub.stats.connections_total == 1)  # opened
        on_reactor(clock.advance, 10.5)
        assert closed(sock)
    assert wait_for(lambda: not server.hub.sessions)
    assert not server.hub.address_counts
