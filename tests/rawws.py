"""A bare-socket WebSocket client for misbehaving peers.

Well-behaved clients (``websockets``) answer pings and read everything; the
tests of keepalive, backpressure and shutdown need one that does neither,
and the tests of TLS versions one whose socket they can inspect.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import struct
from typing import Any


def client_frame(payload: bytes, opcode: int = 1, fin: bool = True, mask: bool = True) -> bytes:
    """One client frame, masked with a random key unless told otherwise."""
    first = (0x80 if fin else 0) | opcode
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        header = struct.pack("!BB", first, bit | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, bit | 127, length)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawWebSocket:
    """Speaks just enough RFC 6455 to join a room, then does what it is told.

    It opens ``/connect`` (over TLS with ``tls``) and reads up to the
    server's greeting; ``id`` is the client id the server gave it.
    """

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        rcvbuf: int | None = None,
        tls: ssl.SSLContext | None = None,
        target: str = "/connect",
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect((host, port))
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=host)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self._buffer = b""
        while b"\r\n\r\n" not in self._buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during handshake")
            self._buffer += chunk
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise ConnectionError(status.decode())
        #: What came before ``notify-client-id`` (a failed resume's error).
        self.before: list[dict[str, Any]] = []
        hello = self.recv_json()
        while hello["type"] != "notify-client-id":
            self.before.append(hello)
            hello = self.recv_json()
        #: The ``notify-client-id`` payload.
        self.hello: dict[str, Any] = hello["payload"]
        self.id: str = hello["payload"]["client_id"]

    def send_text(self, text: str) -> None:
        self.sock.sendall(client_frame(text.encode()))

    def send(self, kind: str, payload: dict[str, Any]) -> None:
        self.send_text(json.dumps({"type": kind, "payload": payload}))

    def _read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def recv_frame(self) -> tuple[int, bytes]:
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
        return first & 0x0F, self._read(length)

    def recv_json(self) -> dict[str, Any]:
        """The next text message, skipping control frames (without answering pings)."""
        while True:
            opcode, data = self.recv_frame()
            if opcode == 1:
                return json.loads(data)
            if opcode == 8:
                raise ConnectionError("close frame received")

    def recv_close(self) -> tuple[int, bytes]:
        """The code and reason of the server's close frame, skipping the frames before it."""
        while True:
            opcode, data = self.recv_frame()
            if opcode == 8:
                return struct.unpack("!H", data[:2])[0], data[2:]

    def is_closed_by_peer(self, timeout: float = 5.0) -> bool:
        """Drain what arrives; True once the server has closed the TCP connection."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return True

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """End the TCP connection with a reset: no close frame, no FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def send_close(self, code: int) -> None:
        """Send a close frame with ``code``."""
        self.sock.sendall(client_frame(struct.pack("!H", code), opcode=8))

    def __enter__(self) -> RawWebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
