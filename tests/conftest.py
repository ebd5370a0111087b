"""Fixtures: the real server on 127.0.0.1 (port 0) and real WebSocket clients.

The Twisted reactor runs in a background thread for the whole test session;
each test gets its own listening port, factory and registry.  Tests drive the
server with the synchronous ``websockets`` client, exactly as a remote peer
would, and read server state through ``blockingCallFromThread``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet import reactor
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import LogLevel, globalLogPublisher
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from bench.twistd import ServerProcess, source_env, twistd_argv
from signaling.core.limits import Limits
from signaling.logs import set_level
from signaling.web.site import listening_factory
from signaling.wire.protocol import SignalingFactory, SignalingProtocol

from .certs import CertificateAuthority

TIMEOUT = 5.0


@pytest.fixture
def ca() -> CertificateAuthority:
    """A throwaway root and intermediate CA, for TLS tests."""
    return CertificateAuthority()


@pytest.fixture
def ca_file(tmp_path: Path, ca: CertificateAuthority) -> Path:
    """The root certificate of ``ca``, for clients to trust."""
    return ca.write_root(tmp_path / "ca.pem")


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notification socket (a path)."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(TIMEOUT)
        yield sock, str(path)


@pytest.fixture(scope="session")
def reactor_thread() -> Iterator[Any]:
    thread = threading.Thread(
        target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True
    )
    thread.start()
    yield reactor
    reactor.callFromThread(reactor.stop)
    thread.join(TIMEOUT)


def on_reactor(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``f`` in the reactor thread and return its result."""
    return blockingCallFromThread(reactor, f, *args, **kwargs)


def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Client:
    """A real WebSocket client speaking the signaling protocol."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        hello = self.recv()
        assert hello["type"] == "notify-client-id", hello
        self.id: str = hello["payload"]["client_id"]

    def send(self, kind: str, payload: Any = None, **fields: Any) -> None:
        message: dict[str, Any] = {"type": kind}
        if payload is not None:
            message["payload"] = payload
        message.update(fields)
        self.ws.send(json.dumps(message))

    def send_raw(self, data: str | bytes, text: bool | None = None) -> None:
        self.ws.send(data, text=text)

    def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        data = self.ws.recv(timeout)
        assert isinstance(data, str), f"expected a text frame, got {data!r}"
        return json.loads(data)

    def expect(self, kind: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Receive the next message, which must be of ``kind``; return its payload."""
        message = self.recv(timeout)
        assert message["type"] == kind, message
        assert set(message) == {"type", "payload"}, message
        return message["payload"]

    def expect_error(self, code: str) -> dict[str, Any]:
        payload = self.expect("error")
        assert payload["code"] == code, payload
        assert isinstance(payload["message"], str) and payload["message"], payload
        return payload

    def join(self, room_id: str) -> list[str]:
        """Join and return the ids the server says were already there."""
        self.send("join", {"room_id": room_id})
        payload = self.expect("joined")
        assert payload["room_id"] == room_id
        return payload["clients"]

    def offer(self, target: str, sdp: str) -> None:
        self.send("offer", {"client_id": target, "sdp": sdp})

    def expect_closed(self, timeout: float = TIMEOUT) -> int | None:
        """Wait for the server to close the connection; return its close code."""
        with pytest.raises(ConnectionClosed) as info:
            while True:
                self.ws.recv(timeout)
        received = info.value.rcvd
        return received.code if received is not None else None

    def close(self) -> None:
        self.ws.close()


class RunningServer:
    """A server listening on 127.0.0.1 and the clients a test opened to it."""

    def __init__(self, factory: SignalingFactory, port: Any, stack: contextlib.ExitStack):
        self.factory = factory
        self.hub = factory.hub
        self.port = port.getHost().port
        self.url = f"ws://127.0.0.1:{self.port}/connect"
        self._stack = stack

    def client(self) -> Client:
        ws = self._stack.enter_context(
            connect(
                self.url,
                open_timeout=TIMEOUT,
                close_timeout=1,
                compression=None,
                proxy=None,
                max_size=None,
            )
        )
        return Client(ws)

    def rooms(self) -> dict[str, set[str]]:
        """Every room and its members, read in the reactor thread."""
        return on_reactor(
            lambda: {room.room_id: set(room.member_ids()) for room in self.hub.rooms.rooms()}
        )

    def member_count(self) -> int:
        return on_reactor(lambda: self.hub.rooms.member_count)

    def connection(self, client_id: str) -> SignalingProtocol:
        """The server's connection to a client (call in the reactor thread)."""
        return cast(SignalingProtocol, self.hub.sessions[client_id].wire)


@pytest.fixture
def make_server(reactor_thread: Any) -> Iterator[Callable[..., RunningServer]]:
    """Start servers with given limits (and clock); stop them after the test."""
    ports = []
    with contextlib.ExitStack() as stack:

        def start(clock: Any = None, trust_proxy: int = 0, **limits: Any) -> RunningServer:
            factory = SignalingFactory(
                clock=clock, limits=Limits(**limits), trust_proxy=trust_proxy
            )
            port = on_reactor(
                reactor.listenTCP, 0, listening_factory(factory), interface="127.0.0.1"
            )
            ports.append(port)
            return RunningServer(factory, port, stack)

        yield start
    for port in ports:
        on_reactor(port.stopListening)


@pytest.fixture
def server(make_server: Callable[..., RunningServer]) -> RunningServer:
    return make_server()


@pytest.fixture
def run_twistd(tmp_path: Any) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``twistd -n signaling ARGS`` in a temporary directory; stop it after."""
    started: list[ServerProcess] = []

    def run(
        *args: str, python: str = sys.executable, env: dict[str, str] | None = None
    ) -> ServerProcess:
        process = ServerProcess(twistd_argv(python, *args), tmp_path, env or source_env())
        started.append(process)
        process.ports(1)  # listening (or the test fails here with its log)
        return process

    yield run
    for process in started:
        process.stop()


@pytest.fixture
def log_level() -> Iterator[None]:
    yield
    set_level(LogLevel.info)


def _captured_at(level: LogLevel) -> Iterator[list[dict[str, Any]]]:
    set_level(level)
    captured: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(captured.append)
    yield captured
    globalLogPublisher.removeObserver(captured.append)


@pytest.fixture
def info_events(log_level: None) -> Iterator[list[dict[str, Any]]]:
    """The events emitted at the default level, info."""
    yield from _captured_at(LogLevel.info)


@pytest.fixture
def events(log_level: None) -> Iterator[list[dict[str, Any]]]:
    """The events emitted with ``--log-level debug``."""
    yield from _captured_at(LogLevel.debug)


@pytest.fixture
def shared_rooms() -> Iterator[tuple[str, ...]]:
    """Options with which server processes share rooms: the shared Redis,
    under a key prefix of the test's own (skipped, or failed under CI, when
    Redis or the client is missing)."""
    from .redis_rooms import require_redis_rooms
    from .redis_servers import SHARED_URL, shared_prefix

    require_redis_rooms()
    with shared_prefix() as prefix:
        yield ("--redis", SHARED_URL, "--redis-prefix", prefix)
