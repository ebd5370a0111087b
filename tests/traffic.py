"""One scripted exchange with a server, recorded frame by frame, to compare
the server's fast paths (signaling.wire.compat.FastPaths) with Autobahn's
public path: the same script must get the same frames either way."""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from signaling.wire.compat import FastPaths

    from .conftest import RunningServer

TIMEOUT = 5.0
#: What the server must allow for the script: its largest message.
MAX_MESSAGE_SIZE = 100_000
KEY = "dGhlIHNhbXBsZSBub25jZQ=="

TEXT, BINARY, CLOSE, PING, PONG = 1, 2, 8, 9, 10


def frame(payload: bytes, opcode: int = TEXT, fin: bool = True, length: int | None = None) -> bytes:
    """A client frame; masked with a fixed key (the masking is exercised
    all the same). ``length`` claims another payload length."""
    size = len(payload) if length is None else length
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        header = struct.pack("!BB", first, 0x80 | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, size)
    key = b"\x37\xfa\x21\x3d"
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header + key + masked


def message(kind: str, **payload: Any) -> bytes:
    return frame(json.dumps({"type": kind, "payload": payload}).encode())


class Peer:
    """A client on a bare socket that records every frame it receives."""

    def __init__(self, port: int, transcript: list[tuple[str, int, bytes]], name: str) -> None:
        self.name = name
        self.transcript = transcript
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.sendall(
            (
                "GET /connect HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        transcript.append((name, 0, head))
        _, hello = self.expect()
        self.id: str = json.loads(hello)["payload"]["client_id"]

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"{self.name}: closed by the server")
        self.buffer += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def expect(self, count: int = 1) -> tuple[int, bytes]:
        """Read ``count`` frames into the transcript; return the last."""
        for _ in range(count):
            first, second = self._take(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", self._take(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", self._take(8))
            opcode, payload = first & 0x0F, self._take(length)
            self.transcript.append((self.name, first, payload))
        return opcode, payload

    def finish(self, answer: bool = True) -> None:
        """Read up to the server's close frame, ``answer`` it (unless this
        side closed first), and read until the server ends the connection."""
        while self.expect()[0] != CLOSE:
            pass
        if answer:
            self.send(frame(self.transcript[-1][2][:2], CLOSE))
        self.sock.settimeout(TIMEOUT)
        rest = self.buffer
        try:
            while chunk := self.sock.recv(65536):
                rest += chunk
        except ConnectionResetError:
            rest += b"<reset>"
        self.transcript.append((self.name, -1, rest))
        self.sock.close()


def run_script(port: int) -> list[tuple[str, int, bytes]]:
    """Two clients meet in a room and exchange offers, answers and
    candidates of every frame length size (7, 16 and 64 bits), and errors,
    a binary frame, a fragmented message, a burst, pings, and closes;
    two more send invalid UTF-8 and an oversized message. Returns every
    frame each received (name, first byte, payload), client ids masked."""
    transcript: list[tuple[str, int, bytes]] = []
    a = Peer(port, transcript, "a")
    a.send(message("join", room_id="room"))
    a.expect()
    b = Peer(port, transcript, "b")
    b.send(message("join", room_id="room"))
    b.expect()
    a.expect()  # new-client
    for size in (10, 200, 70_000):
        a.send(message("offer", client_id=b.id, sdp="o" * size))
        b.expect()
        b.send(message("answer", client_id=a.id, sdp="a" * size))
        a.expect()
        a.send(message("candidate", client_id=b.id, candidate={"candidate": "c" * size}))
        b.expect()
    a.send(message("offer", client_id="nobody", sdp="x"))
    a.expect()
    a.send(frame(b"{not json"))
    a.expect()
    a.send(frame(b'{"type":"offer"}', BINARY))
    a.expect()
    fragmented = json.dumps({"type": "offer", "payload": {"client_id": b.id, "sdp": "f" * 300}})
    data = fragmented.encode()
    a.send(
        frame(data[:100], TEXT, fin=False)
        + frame(data[100:250], 0, fin=False)
        + frame(data[250:], 0, fin=True)
    )
    b.expect()
    a.send(b"".join(message("offer", client_id=b.id, sdp=f"burst {i}") for i in range(5)))
    b.expect(5)
    a.send(frame(b"are you there", PING))
    a.expect()
    b.send(frame(b"", PING))
    b.expect()
    a.send(frame(struct.pack("!H", 1000) + b"bye", CLOSE))
    a.finish(answer=False)
    b.expect()  # leave-client
    c = Peer(port, transcript, "c")
    c.send(frame(b'{"type":"join","payload":{"room_id":"\xff"}}'))
    c.finish()
    d = Peer(port, transcript, "d")
    d.send(frame(b"", length=MAX_MESSAGE_SIZE + 1))  # a header, announcing too much
    d.finish()
    b.send(frame(struct.pack("!H", 1001), CLOSE))
    b.finish(answer=False)
    ids = {peer.id.encode(): f"<{peer.name}>".encode() for peer in (a, b, c, d)}
    masked = []
    for name, first, payload in transcript:
        for client_id, label in ids.items():
            payload = payload.replace(client_id, label)  # noqa: PLW2901
        masked.append((name, first, payload))
    return masked


def exchange(make_server: Callable[..., RunningServer], paths: FastPaths) -> list[Any]:
    """The script's transcript from a new server with these fast paths."""
    server = make_server(max_message_size=MAX_MESSAGE_SIZE)
    server.factory.fast_paths = paths
    return run_script(server.port)
