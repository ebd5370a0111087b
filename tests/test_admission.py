"""Admission under floods: idle connections, descriptors, connection rates
and the log volume clients can cause, against the real ``twistd signaling``."""

from __future__ import annotations

import contextlib
import http.client
import re
import resource
import select
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from websockets.exceptions import ConnectionClosed, InvalidMessage
from websockets.sync.client import connect

from bench.twistd import ServerProcess, twistd
from signaling.core.limits import Limits
from signaling.wire.admission import AcceptErrorLog, Admission

from .conftest import on_reactor, wait_for

#: Runs the rest of its arguments with RLIMIT_NOFILE set to (soft, hard) from argv[1:3].
LIMIT_OPEN_FILES = [
    sys.executable,
    "-c",
    "import os, resource, sys\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))\n"
    "os.execvp(sys.argv[3], sys.argv[3:])",
]


def with_open_files(soft: int, hard: int) -> list[str]:
    return [*LIMIT_OPEN_FILES, str(soft), str(hard)]


def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def metric(port: int, name: str, labels: str = "") -> float:
    """One sample of /metrics (0 when absent)."""
    status, _, body = http_get(port, "/metrics")
    assert status == 200
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" (\S+)"
    match = re.search(pattern, body.decode())
    return float(match.group(1)) if match else 0.0


def honest_handshake(port: int) -> None:
    with connect(f"ws://127.0.0.1:{port}/connect", proxy=None, open_timeout=10) as ws:
        assert '"notify-client-id"' in ws.recv(10)


def honest_handshake_with_retry(port: int, attempts: int = 5) -> None:
    """As a client application does, with a short pause between tries: deep
    in the descriptor reserve the server closes every new connection until
    the ones it closed to make room are gone (a reactor turn or so), so an
    attempt may land in such a moment. A flood that held every descriptor
    would let no attempt in, however often."""
    for attempt in range(attempts):
        try:
            honest_handshake(port)
            return
        except (OSError, ConnectionClosed, InvalidMessage):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)


def idle_connection(port: int, source: str) -> socket.socket | None:
    """A TCP connection from ``source`` (an address in 127.0.0.0/8) that sends nothing."""
    sock = socket.socket()
    try:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    return sock


@contextlib.contextmanager
def idle_connections(port: int, source: str, count: int) -> Iterator[list[socket.socket | None]]:
    """``count`` idle connections from ``source``, opened one after another."""
    connections = [idle_connection(port, source) for _ in range(count)]
    try:
        yield connections
    finally:
        for sock in connections:
            if sock is not None:
                sock.close()


def closed_by_server(connections: list[socket.socket | None], wanted: int) -> int:
    """How many of ``connections`` the server closes (sending nothing) within
    10 s, far less than the handshake deadline of these tests; stops at ``wanted``."""
    assert all(connections)
    waiting = [sock for sock in connections if sock is not None]
    closed = 0
    deadline = time.monotonic() + 10
    while closed < wanted and time.monotonic() < deadline:
        readable, _, _ = select.select(waiting, [], [], max(deadline - time.monotonic(), 0))
        for sock in readable:
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(1) == b""
            closed += 1
            waiting.remove(sock)
    return closed


class Flood:
    """Threads opening idle connections from ``sources`` as fast as they can
    until the ``with`` block ends (or ``limit`` were opened), each thread
    keeping its newest ``keep`` open."""

    def __init__(self, port: int, sources: list[str], keep: int, limit: int = 50_000) -> None:
        self.port = port
        self.opened = 0
        self._lock = threading.Lock()
        self._left = limit
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(source, keep), daemon=True)
            for source in sources
        ]

    def _run(self, source: str, keep: int) -> None:
        held: list[socket.socket] = []
        try:
            while not self._stop.is_set():
                with self._lock:
                    if self._left <= 0:
                        return
                    self._left -= 1
                sock = idle_connection(self.port, source)
                if sock is None:
                    continue
                with self._lock:
                    self.opened += 1
                held.append(sock)
                if len(held) > keep:
                    held.pop(0).close()
        finally:
            for sock in held:
                sock.close()

    def wait_opened(self, count: int) -> None:
        deadline = time.monotonic() + 60
        while self.opened < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.opened >= count

    def __enter__(self) -> Flood:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)


@contextlib.contextmanager
def enough_open_files(wanted: int) -> Iterator[None]:
    """This process may hold ``wanted`` descriptors (the flood's side)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


#: Turns off the limits that count by address.
NO_PER_ADDRESS_LIMITS = ("--max-pending-per-address", "0", "--connect-rate", "0")


def serve(
    tmp_path: Path, *args: str, wrapper: list[str] | None = None
) -> contextlib.AbstractContextManager[ServerProcess]:
    """The server on 127.0.0.1, with a handshake deadline far longer than
    any test's waits: connections closed early are closed by admission."""
    return twistd(
        tmp_path,
        "--interface",
        "127.0.0.1",
        "--port",
        "0",
        "--no-demo",
        "--handshake-timeout",
        "30",
        *args,
        wrapper=wrapper,
    )


def test_honest_clients_get_in_while_idle_connections_exhaust_descriptors(
    tmp_path: Path,
) -> None:
    # 256 descriptors and a 30 s handshake deadline: twenty attacker
    # addresses keep far more idle connections open than that.
    with (
        enough_open_files(8192),
        serve(tmp_path, wrapper=with_open_files(256, 256)) as server,
    ):
        port = server.port
        size_before = len(server.output)
        sources = [f"127.0.0.{n}" for n in range(2, 22)]
        # Each attacker address keeps 100 open, so more than the server's
        # 256 descriptors are always held by the flood.
        with Flood(port, sources, keep=100) as flood:
            flood.wait_opened(1000)
            for _ in range(10):
                honest_handshake_with_retry(port)
            status, _, _ = http_get(port, "/healthz")
            assert status == 200
            opened_meanwhile = flood.opened
        assert opened_meanwhile > 1000  # the honest clients did come in during the flood
        honest_handshake(port)
        assert metric(port, "signaling_connections_shed_total", 'reason="fd_reserve"') > 0
        logged = server.output[size_before:]
        assert len(logged) < 16_384, logged[-4000:]
        assert "Could not accept" not in logged
        assert "EMFILE recovery" not in logged


def test_idle_connections_from_one_address_cannot_crowd_out_others(tmp_path: Path) -> None:
    with (
        enough_open_files(4096),
        serve(
            tmp_path,
            "--max-pending-per-address",
            "20",
            "--connect-rate",
            "0",
            wrapper=with_open_files(2048, 2048),
        ) as server,
    ):
        port = server.port
        with idle_connections(port, "127.0.0.2", 300) as flood:
            # The oldest idle connections of that address are closed to keep it at 20.
            assert closed_by_server(flood, 280) >= 280
            for _ in range(5):
                honest_handshake(port)
        shed = metric(port, "signaling_connections_shed_total", 'reason="pending_per_address"')
        assert shed >= 280


def test_open_files_limit_is_raised_to_the_hard_limit(tmp_path: Path) -> None:
    with serve(tmp_path, wrapper=with_open_files(256, 1024)) as server:
        server.wait_for(r"open files limit raised from 256 to 1024")
        limits = Path(f"/proc/{server.process.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert line.split()[3:5] == ["1024", "1024"], line
        honest_handshake(server.port)
        assert server.output.count("open files limit") == 1


def test_connection_rate_per_address_closes_the_excess_at_once(tmp_path: Path) -> None:
    with serve(
        tmp_path, "--handshake-timeout", "60", "--connect-rate", "5", "--connect-burst", "20"
    ) as server:
        port = server.port
        with idle_connections(port, "127.0.0.2", 200) as flood:
            assert closed_by_server(flood, 150) >= 150
            for _ in range(5):
                honest_handshake(port)  # another address is not limited
        shed = metric(port, "signaling_connections_shed_total", 'reason="connect_rate"')
        assert shed >= 150


def test_error_replies_are_counted_but_logged_a_few_times_a_minute(tmp_path: Path) -> None:
    with serve(tmp_path, "--client-log-rate", "5", "--rate-limit", "0") as server:
        port = server.port
        mark = server.mark()
        with connect(f"ws://127.0.0.1:{port}/connect", proxy=None, open_timeout=10) as ws:
            ws.recv(10)
            for _ in range(500):
                ws.send('{"type": "leave"}')
            for _ in range(500):
                assert '"not_in_room"' in ws.recv(10)
        assert metric(port, "signaling_errors_total", 'code="not_in_room"') == 500
        lines = server.output.splitlines()[mark:]
        assert len([line for line in lines if " not_in_room: " in line]) == 5, lines


def access_lines(server: ServerProcess, mark: int) -> list[str]:
    return [line for line in server.output.splitlines()[mark:] if '"GET /healthz HTTP/1.1"' in line]


@pytest.mark.parametrize(("rate", "logged"), [("5", 5), ("0", 40)])  # 0: every request
def test_the_access_log_is_bounded_too(tmp_path: Path, rate: str, logged: int) -> None:
    """Plain HTTP requests are the client's to repeat: within a minute,
    ``--access-log-rate`` lines, however many requests."""
    with serve(tmp_path, "--access-log-rate", rate) as server:
        port = server.port
        mark = server.mark()
        keep_alive = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for _ in range(40):
                keep_alive.request("GET", "/healthz")
                assert keep_alive.getresponse().read()
        finally:
            keep_alive.close()
        # Each line is written before its response is sent.
        assert wait_for(lambda: len(access_lines(server, mark)) >= logged)
        server.stop()
        assert len(access_lines(server, mark)) == logged


def test_healthz_only_at_its_path_and_503_says_when_to_retry(tmp_path: Path) -> None:
    with serve(tmp_path, "--max-connections", "1", "--hide-version") as server:
        port = server.port
        assert http_get(port, "/healthz/anything")[0] == 404
        assert http_get(port, "/metrics/anything")[0] == 404
        status, headers, body = http_get(port, "/healthz")
        assert status == 200
        assert headers["Server"] == "signaling"
        assert b"version" not in body
        with connect(f"ws://127.0.0.1:{port}/connect", proxy=None, open_timeout=10) as ws:
            ws.recv(10)
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(
                b"GET /connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n"
            )
            response = b""
            while b"\r\n\r\n" not in response:
                chunk = sock.recv(4096)
                assert chunk, response
                response += chunk
            sock.close()
        assert response.startswith(b"HTTP/1.1 503 ")
        assert b"\r\nRetry-After: 5\r\n" in response
        with connect(f"ws://127.0.0.1:{port}/connect", proxy=None, open_timeout=10) as ws:
            assert ws.response.headers["Server"] == "signaling"


def test_accept_errors_are_counted_and_logged_once(tmp_path: Path) -> None:
    # No reserve and no caps: the flood runs the server out of descriptors.
    with (
        enough_open_files(4096),
        serve(
            tmp_path,
            "--fd-reserve",
            "0",
            *NO_PER_ADDRESS_LIMITS,
            wrapper=with_open_files(64, 64),
        ) as server,
    ):
        port = server.port
        mark = server.mark()
        with Flood(port, ["127.0.0.2"], keep=200) as flood:
            flood.wait_opened(1000)
        # The flood's connections are closed: descriptors are free again soon.
        deadline = time.monotonic() + 20
        while True:
            try:
                honest_handshake(port)
                break
            except (OSError, InvalidMessage):
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert metric(port, "signaling_connections_shed_total", 'reason="accept_error"') > 0
        logged = "".join(server.output.splitlines(keepends=True)[mark:])
        assert logged.count("could not accept a connection (EMFILE)") == 1, logged[-4000:]
        assert "EMFILE recovery" not in logged
        assert "Could not accept" not in logged


def test_accept_error_log_counts_pauses_and_sums_up(info_events: list[dict[str, Any]]) -> None:
    clock = Clock()
    counted: list[None] = []
    paused: list[None] = []
    forwarded: list[dict[str, Any]] = []
    observe = AcceptErrorLog(
        clock,
        lambda: counted.append(None),
        forward=forwarded.append,
        pause=lambda: paused.append(None),
    )
    failure = {"log_format": "Could not accept new connection ({acceptError})"}
    for _ in range(10):
        observe({**failure, "acceptError": "ENFILE"})
    observe({**failure, "acceptError": "ECONNABORTED"})  # the client's doing
    observe({"log_format": "EMFILE recovery: Closed socket from {address}", "address": "x"})
    observe({"log_format": "Re-reserving EMFILE recovery file descriptor."})
    observe({"log_format": "something else"})
    assert (len(counted), len(paused)) == (11, 10)
    assert [event["log_format"] for event in forwarded] == ["something else"]
    [first] = [formatEvent(event) for event in info_events]
    assert first.startswith("could not accept a connection (ENFILE)")
    clock.advance(60)
    assert formatEvent(info_events[-1]) == (
        "10 more connections could not be accepted in the last 60 s"
    )
    assert len(info_events) == 2


def test_pending_connections_cap_closes_the_busiest_address_oldest(tmp_path: Path) -> None:
    with (
        enough_open_files(4096),
        serve(
            tmp_path,
            "--max-pending-connections",
            "40",
            *NO_PER_ADDRESS_LIMITS,
        ) as server,
    ):
        port = server.port
        with (
            idle_connections(port, "127.0.0.3", 5) as few,
            idle_connections(port, "127.0.0.2", 100) as many,
        ):
            assert closed_by_server(many, 65) >= 65
            for _ in range(5):
                honest_handshake(port)
            # The five from the other address were never the busiest.
            assert closed_by_server(few, 1) == 0
        shed = metric(port, "signaling_connections_shed_total", 'reason="pending"')
        assert shed >= 65


class FakeTransport:
    disconnected = False

    def __init__(self, host: str) -> None:
        self.host = host
        self.aborted = False

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", self.host, 1)

    def abortConnection(self) -> None:
        self.aborted = True
        self.disconnected = True


def test_descriptor_reserve_evicts_from_the_busiest_address_then_refuses() -> None:
    clock = Clock()
    admission = Admission(Limits(fd_reserve=10), clock, fd_limit=100)
    flood = [FakeTransport("192.0.2.1") for _ in range(5)]
    client = FakeTransport("198.51.100.7")
    for fd, transport in enumerate([*flood, client], start=80):
        assert admission.hold(transport, transport.getPeer(), fd)  # below 90: no eviction
    newcomer = FakeTransport("203.0.113.9")
    assert admission.hold(newcomer, newcomer.getPeer(), 90)  # into the reserve
    assert [t.aborted for t in flood] == [True, False, False, False, False]
    more = FakeTransport("192.0.2.1")
    assert admission.hold(more, more.getPeer(), 95)
    assert [t.aborted for t in flood] == [True, True, False, False, False]
    assert not (client.aborted or newcomer.aborted)
    # Deep in the reserve (its upper half), addresses with connections
    # pending are refused at accept, new ones still get in...
    assert not admission.admit(IPv4Address("TCP", "192.0.2.1", 2))
    assert admission.admit(IPv4Address("TCP", "192.0.2.200", 2))
    late = FakeTransport("192.0.2.200")
    assert admission.hold(late, late.getPeer(), 98)
    # ...until its last quarter, for the rest of this reactor turn.
    assert not admission.admit(IPv4Address("TCP", "192.0.2.201", 2))
    clock.advance(0)  # the aborted connections have closed
    assert admission.admit(IPv4Address("TCP", "192.0.2.201", 2))
    # With nothing pending to close, a connection in the reserve is refused.
    admission.release(client)
    for transport in list(admission.pending):
        admission.release(transport)
    assert not admission.hold(client, client.getPeer(), 95)


@pytest.mark.parametrize("handshake_timeout", [10.0, 0.0])
def test_plain_http_connections_stop_counting_as_pending_when_they_close(
    make_server: Any, handshake_timeout: float
) -> None:
    """A health check's connection is pending (not a WebSocket) while open
    and no longer once closed: not when its deadline passes, nor never
    when there is no deadline."""
    server = make_server(handshake_timeout=handshake_timeout)
    pending = server.factory.admission.pending
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert on_reactor(lambda: len(pending)) == 1  # keep-alive: still open
    assert wait_for(lambda: on_reactor(lambda: len(pending)) == 0)


def test_the_metrics_port_logs_as_the_main_port_does(tmp_path: Path) -> None:
    """--metrics-listen: the same access log line (client address format
    included) and the same budget."""
    with serve(
        tmp_path, "--metrics-listen", "tcp:0:interface=127.0.0.1", "--access-log-rate", "2"
    ) as server:
        found = server.wait_for(r"metrics at http://127\.0\.0\.1:(\d+)/metrics")
        mark = server.mark()
        for _ in range(5):
            with urllib.request.urlopen(
                f"http://127.0.0.1:{found.group(1)}/metrics", timeout=10
            ) as response:
                assert response.status == 200
        output = server.stop()
    lines = [line for line in output.splitlines()[mark:] if '"GET /metrics HTTP/1.1"' in line]
    assert len(lines) == 2, lines
    assert all(re.search(r'"tcp4:127\.0\.0\.1:\d+" - - ', line) for line in lines), lines


def test_the_access_log_hides_room_tokens(tmp_path: Path) -> None:
    """A room token in the demo page's URL (or in the Referer a page sends)
    is a credential: the access log shows the request without its value."""
    with serve(tmp_path) as server:
        mark = server.mark()
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            connection.request(
                "GET",
                "/?room=abc&token=SECRET-IN-URL&resume_token=SECRET-TOO&x=1",
                headers={"Referer": "https://app.example/?token=SECRET-IN-REFERER"},
            )
            assert connection.getresponse().read()
        finally:
            connection.close()

        def logged() -> list[str]:
            return [line for line in server.output.splitlines()[mark:] if '"GET /?room=' in line]

        assert wait_for(lambda: bool(logged()))
        [line] = logged()
        assert "SECRET" not in line
        assert "/?room=abc&token=REDACTED&resume_token=REDACTED&x=1" in line
        assert "https://app.example/?token=REDACTED" in line
