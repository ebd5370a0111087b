"""Opening a WebSocket by hand on a socket, for clients that must misbehave or avoid threads."""

from __future__ import annotations

import base64
import os
import socket


def open_by_hand(sock: socket.socket, host: str = "127.0.0.1") -> bytes:
    """Send the opening handshake for /connect; return what arrived up to the server's greeting."""
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /connect HTTP/1.1\r\n"
            f"Host: {host}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    received = b""
    while b"notify-client-id" not in received:
        data = sock.recv(65536)
        assert data, received
        received += data
    assert received.startswith(b"HTTP/1.1 101 "), received
    return received
