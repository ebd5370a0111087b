"""A minimal WebSocket client on asyncio, built to cost the generator little.

Everything that can be computed once is: the opening request is a constant,
client frames carry an all-zero masking key (so the masked payload is the
payload itself and frames can be built ahead of time), and incoming frames are
parsed in place from one ``bytearray`` with a moving offset.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

HOST = "127.0.0.1"

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_KEY = base64.b64encode(b"signaling-bench!").decode()
_ACCEPT = base64.b64encode(
    hashlib.sha1((_KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
)
#: Largest HTTP response head accepted before the handshake counts as failed.
_MAX_HEAD = 16384


def handshake_request(port: int) -> bytes:
    """The opening handshake every client sends (the key never varies)."""
    return (
        f"GET /connect HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {_KEY}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final, masked client frame; the key is zero, so no XOR is needed."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    return header + b"\0\0\0\0" + payload


def message_frame(kind: str, payload: dict[str, Any]) -> bytes:
    """A client frame holding ``{"type": kind, "payload": payload}``."""
    return client_frame(orjson.dumps({"type": kind, "payload": payload}))


#: Handshakes in flight at once when setting clients up (not in a storm):
#: fewer than the server's listen backlog, so that no SYN is dropped and
#: retried a second later.
CONNECTING = 40

CLOSE_NORMAL_FRAME = client_frame((1000).to_bytes(2, "big"), OP_CLOSE)


class Tally:
    """Errors seen by a scenario (counts by kind plus a few examples), and
    every client it opened, so that a failed scenario can abort them all."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: list[str] = []
        self.clients: list[WsClient] = []

    def error(self, kind: str, detail: str = "", count: int = 1) -> None:
        self.counts[kind] += count
        if len(self.examples) < 5:
            self.examples.append(f"{kind}: {detail}"[:300])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    async def close(self, clients: list[WsClient], timeout: float) -> None:
        """Close ``clients`` (see :func:`close_all`); count any the server kept."""
        stuck = await close_all(clients, timeout)
        if stuck:
            self.error("close", f"{stuck} connections not closed by the server")

    def abort_all(self) -> None:
        """Drop every connection the scenario opened (its ``finally``)."""
        for client in self.clients:
            client.abort()


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class WsClient(asyncio.Protocol):
    """One connection.  Text messages go to ``self.on_text``, which starts as
    the wait for ``notify-client-id`` and is then replaced by the scenario.
    """

    transport: asyncio.Transport
    client_id: str = ""
    close_code: int | None = None
    closing = False
    pings = 0

    def __init__(
        self, port: int, tally: Tally, on_ready: Callable[[WsClient], None] | None = None
    ) -> None:
        self.port = port
        self.tally = tally
        tally.clients.append(self)
        self.buffer = bytearray()
        self.fragments: list[bytes] | None = None
        self.upgraded = False
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.ready.add_done_callback(_retrieve)  # failures are reported by the scenario
        self.lost: asyncio.Future[None] = loop.create_future()
        self.on_text: Callable[[bytes], None] = self._expect_id
        #: Called with the client once its id arrived (before ``ready`` resolves).
        self.on_ready = on_ready

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(handshake_request(self.port))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before the client id: {exc}"))
        elif not self.closing:
            self.tally.error("connection lost", f"{self.client_id} code={self.close_code}")
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.upgraded and not self._upgrade():
            return
        offset = 0
        size = len(buffer)
        while size - offset >= 2:
            first = buffer[offset]
            length = buffer[offset + 1]
            if length & 0x80:
                self._fail("masked frame from the server")
                return
            start = offset + 2
            if length == 126:
                if size - offset < 4:
                    break
                length = (buffer[start] << 8) | buffer[start + 1]
                start += 2
            elif length == 127:
                if size - offset < 10:
                    break
                length = int.from_bytes(buffer[start : start + 8], "big")
                start += 8
            end = start + length
            if end > size:
                break
            payload = bytes(buffer[start:end])
            offset = end
            if first == 0x81:  # the usual case: a final text frame
                self.on_text(payload)
            else:
                self._control_or_fragment(first, payload)
            if self.closing and self.transport.is_closing():
                break
        if offset:
            del buffer[:offset]

    # -- frames ----------------------------------------------------------------

    def _upgrade(self) -> bool:
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _MAX_HEAD:
                self._fail("oversized handshake response")
            return False
        head = bytes(buffer[:end])
        if not head.startswith(b"HTTP/1.1 101") or _ACCEPT not in head:
            self._fail("handshake refused: " + head.split(b"\r\n", 1)[0].decode("latin-1"))
            return False
        del buffer[: end + 4]
        self.upgraded = True
        return True

    def _control_or_fragment(self, first: int, payload: bytes) -> None:
        opcode = first & 0x0F
        final = first & 0x80
        if opcode == OP_PING:
            self.pings += 1
            self.transport.write(client_frame(payload, OP_PONG))
        elif opcode == OP_PONG:
            pass
        elif opcode == OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if not self.closing:
                self.tally.error("closed by server", f"{self.client_id} code={self.close_code}")
                self.closing = True
                self.transport.write(client_frame(payload[:2], OP_CLOSE))
        elif opcode == OP_TEXT:
            self.fragments = [payload]
        elif opcode == OP_CONTINUATION and self.fragments is not None:
            self.fragments.append(payload)
            if final:
                whole = b"".join(self.fragments)
                self.fragments = None
                self.on_text(whole)
        else:
            self._fail(f"unexpected frame opcode {opcode}")

    def _fail(self, reason: str) -> None:
        if self.ready.done():
            self.tally.error("protocol", reason)
        else:  # whoever awaits the connection reports it
            self.ready.set_exception(ConnectionError(reason))
        self.closing = True
        self.transport.abort()

    def _expect_id(self, payload: bytes) -> None:
        message = orjson.loads(payload)
        if message.get("type") != "notify-client-id":
            self._fail(f"expected notify-client-id, got {payload[:200]!r}")
            return
        self.client_id = message["payload"]["client_id"]
        self.on_text = self.unexpected
        if self.on_ready is not None:
            self.on_ready(self)
        if not self.ready.done():
            self.ready.set_result(None)

    # -- for scenarios ---------------------------------------------------------

    def unexpected(self, payload: bytes) -> None:
        """Count a message the scenario did not expect (server errors by code)."""
        try:
            message = orjson.loads(payload)
            kind = message["type"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.tally.error("corrupt", repr(payload[:200]))
            return
        if kind == "error":
            self.tally.error("server error " + str(message["payload"].get("code")), str(message))
        else:
            self.tally.error("unexpected " + str(kind), repr(payload[:200]))

    def check(self, payload: bytes, expected: bytes) -> bool:
        """True if ``payload`` is ``expected``, byte for byte or as the same JSON."""
        if payload == expected:
            return True
        try:
            if orjson.loads(payload) == orjson.loads(expected):
                return True
        except orjson.JSONDecodeError:
            pass
        self.unexpected(payload)
        return False

    def send(self, frame: bytes) -> None:
        self.transport.write(frame)

    def close(self) -> None:
        """Start the closing handshake; the server answers and drops TCP."""
        if not self.closing and self.upgraded and not self.transport.is_closing():
            self.closing = True
            self.on_text = self._while_closing
            self.transport.write(CLOSE_NORMAL_FRAME)

    def _while_closing(self, payload: bytes) -> None:
        # Room mates closing at the same time leave: that is expected.
        if not payload.startswith(b'{"type":"leave-client"'):
            self.unexpected(payload)

    def abort(self) -> None:
        self.closing = True
        transport = getattr(self, "transport", None)
        if transport is not None and not transport.is_closing():
            transport.abort()


async def connect(
    port: int,
    tally: Tally,
    timeout: float,
    on_ready: Callable[[WsClient], None] | None = None,
) -> WsClient:
    """Open one client and wait for its id; bounded by ``timeout``."""
    loop = asyncio.get_running_loop()
    _, client = await asyncio.wait_for(
        loop.create_connection(lambda: WsClient(port, tally, on_ready), HOST, port), timeout
    )
    await asyncio.wait_for(asyncio.shield(client.ready), timeout)
    return client


def start_connection(
    port: int, tally: Tally, on_ready: Callable[[WsClient], None]
) -> asyncio.Future[tuple[asyncio.BaseTransport, WsClient]]:
    """Start opening one client and return at once: the cheapest way to open
    thousands together. Nothing here waits or times out; ``on_ready`` runs
    when the client's id arrives, and the caller bounds the whole. A socket
    that cannot even be made (too many open files) is a failed future."""
    loop = asyncio.get_running_loop()
    # Connecting the socket here skips the loop's address lookup.
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError as e:
        failed: asyncio.Future[tuple[asyncio.BaseTransport, WsClient]] = loop.create_future()
        failed.set_exception(e)
        return failed
    sock.setblocking(False)
    try:
        sock.connect((HOST, port))
    except BlockingIOError:
        pass  # in progress, as expected
    except OSError as e:
        sock.close()
        failed = loop.create_future()
        failed.set_exception(e)
        return failed
    return loop.create_task(
        loop.create_connection(lambda: WsClient(port, tally, on_ready), sock=sock)
    )


async def connect_many(
    port: int,
    tally: Tally,
    count: int,
    timeout: float,
    concurrency: int = CONNECTING,
    on_ready: Callable[[WsClient], None] | None = None,
) -> list[WsClient]:
    """Open ``count`` clients, at most ``concurrency`` handshakes at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> WsClient:
        async with gate:
            return await connect(port, tally, timeout, on_ready)

    return await asyncio.gather(*(one() for _ in range(count)))


async def close_all(clients: list[WsClient], timeout: float) -> int:
    """Close every client and wait (bounded) until the server dropped them;
    returns how many had to be aborted."""
    for client in clients:
        client.close()
    pending = [c.lost for c in clients if not c.lost.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    stuck = [c for c in clients if not c.lost.done()]
    for client in stuck:
        client.abort()
    return len(stuck)
