"""Graceful shutdown: 1001 to every client, a bounded wait, then exit 0."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from bench.twistd import twistd
from signaling.ops.shutdown import POLL_INTERVAL, GracefulShutdown

from .conftest import TIMEOUT, Client, RunningServer, on_reactor, wait_for
from .rawws import RawWebSocket


def start_shutdown(server: RunningServer, timeout: float) -> tuple[Clock, Callable[[], Deferred]]:
    """Start a GracefulShutdown on ``server`` with a fake clock; return it and its stop."""
    clock = Clock()
    service = GracefulShutdown(server.hub, timeout, clock)
    on_reactor(service.startService)

    def stop() -> Deferred:
        stopped: list[Deferred] = []
        on_reactor(lambda: stopped.append(service.stopService()))
        return stopped[0]

    return clock, stop


def test_clients_get_1001_and_the_wait_ends_when_they_have_gone(server: RunningServer) -> None:
    a, b = server.client(), server.client()
    a.join("room")
    b.join("room")
    a.expect("new-client")
    clock, stop = start_shutdown(server, timeout=5)
    done = stop()
    assert server.hub.draining
    assert a.expect_closed() == 1001
    assert b.expect_closed() == 1001
    assert a.ws.close_reason == "server shutting down"
    assert wait_for(lambda: not on_reactor(lambda: server.hub.sessions))
    on_reactor(clock.advance, POLL_INTERVAL)
    assert on_reactor(lambda: done.called)
    assert clock.seconds() < 5  # ended by the clients, not by the timeout


def test_new_handshakes_are_refused_while_draining(server: RunningServer) -> None:
    silent = RawWebSocket(server.port)  # keeps the drain going
    try:
        _, stop = start_shutdown(server, timeout=5)
        stop()
        with pytest.raises(InvalidStatus) as info:
            connect(server.url, proxy=None, open_timeout=TIMEOUT).close()
        assert info.value.response.status_code == 503
    finally:
        silent.close()


def test_a_client_that_never_answers_is_dropped_at_the_timeout(server: RunningServer) -> None:
    silent = RawWebSocket(server.port)
    polite = server.client()
    try:
        clock, stop = start_shutdown(server, timeout=5)
        done = stop()
        assert polite.expect_closed() == 1001
        assert silent.recv_close()[0] == 1001
        on_reactor(clock.advance, 4.9)
        assert not on_reactor(lambda: done.called)
        assert on_reactor(lambda: len(server.hub.sessions)) == 1
        on_reactor(clock.advance, 0.1)
        assert on_reactor(lambda: done.called)
        assert silent.is_closed_by_peer()
        assert wait_for(lambda: not on_reactor(lambda: server.hub.sessions))
    finally:
        silent.close()


def test_a_closed_client_still_draining_is_cut_off_at_the_timeout(server: RunningServer) -> None:
    """A client that answered a close but does not read is CLOSED while its
    last bytes wait in the socket; the timeout must still end it."""
    silent = RawWebSocket(server.port)
    try:
        [protocol] = on_reactor(lambda: [s.wire for s in server.hub.sessions.values()])
        # Where the end of a close leaves a client whose socket does not drain.
        on_reactor(lambda: setattr(protocol, "state", protocol.STATE_CLOSED))
        clock, stop = start_shutdown(server, timeout=5)
        done = stop()
        on_reactor(clock.advance, 5)
        assert on_reactor(lambda: done.called)
        assert silent.is_closed_by_peer()
        assert wait_for(lambda: not on_reactor(lambda: server.hub.sessions))
    finally:
        silent.close()


def test_nothing_to_wait_for_without_clients(server: RunningServer) -> None:
    _, stop = start_shutdown(server, timeout=5)
    done = stop()
    assert on_reactor(lambda: done.called)


def _client(port: int) -> Any:
    return connect(f"ws://127.0.0.1:{port}/connect", proxy=None, open_timeout=TIMEOUT)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_closes_clients_with_1001_and_twistd_exits_0(tmp_path: Path, signum: int) -> None:
    with twistd(tmp_path, "--interface", "127.0.0.1", "--port", "0") as server:
        [port] = server.ports()
        with _client(port) as a, _client(port) as b:
            a.recv(TIMEOUT)
            b.recv(TIMEOUT)
            server.signal(signum)
            for ws in (a, b):
                with pytest.raises(Exception):  # noqa: B017 - ConnectionClosed of some kind
                    ws.recv(TIMEOUT)
                assert ws.close_code == 1001
            assert server.wait_exit() == 0
        server.wait_for(r"closing 2 connections")
        server.wait_for(r"closed 2 connections: 2 closed cleanly, 0 dropped")
        server.wait_for(r"Server Shut Down")


def test_a_silent_client_does_not_hold_twistd_past_the_shutdown_timeout(tmp_path: Path) -> None:
    with twistd(
        tmp_path, "--interface", "127.0.0.1", "--port", "0", "--shutdown-timeout", "1.5"
    ) as server:
        [port] = server.ports()
        silent = RawWebSocket(port)
        try:
            started = time.monotonic()
            server.signal(signal.SIGTERM)
            assert silent.recv_close()[0] == 1001
            assert server.wait_exit(timeout=10) == 0
            elapsed = time.monotonic() - started
            assert silent.is_closed_by_peer()
        finally:
            silent.close()
        assert 1.4 <= elapsed < 5, elapsed
        server.wait_for(r"closed 1 connections: 0 closed cleanly, 1 dropped after the 1.5s")


def test_a_second_signal_drops_the_remaining_clients_at_once(tmp_path: Path) -> None:
    with twistd(
        tmp_path, "--interface", "127.0.0.1", "--port", "0", "--shutdown-timeout", "60"
    ) as server:
        [port] = server.ports()
        silent = RawWebSocket(port)
        try:
            server.signal(signal.SIGTERM)
            server.wait_for(r"closing 1 connections")
            started = time.monotonic()
            server.signal(signal.SIGINT)
            assert server.wait_exit(timeout=10) == 0
            assert time.monotonic() - started < 5
        finally:
            silent.close()
        server.wait_for(r"SIGINT again: dropping the remaining connections")
        server.wait_for(r"closed 1 connections: 0 closed cleanly, 1 dropped on a second signal")


def _health(port: int) -> tuple[int, dict[str, Any]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}/healthz", timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_drain_delay_keeps_serving_while_health_checks_fail(tmp_path: Path) -> None:
    with twistd(
        tmp_path, "--interface", "127.0.0.1", "--port", "0", "--drain-delay", "1.5"
    ) as server:
        [port] = server.ports()
        assert _health(port)[0] == 200
        with _client(port) as a_ws, _client(port) as b_ws:
            a, b = Client(a_ws), Client(b_ws)
            a.join("staying")
            b.join("staying")
            a.expect("new-client")
            started = time.monotonic()
            server.signal(signal.SIGTERM)
            server.wait_for(r"SIGTERM: draining for 1.5s")
            # load balancers asking now are told to go elsewhere...
            status, health = _health(port)
            assert (status, health["status"]) == (503, "draining")
            with pytest.raises(InvalidStatus) as refused:
                _client(port)
            assert refused.value.response.status_code == 503
            # ...while the clients already here carry on
            a.offer(b.id, "v=0 during the drain")
            assert b.expect("offer") == {"client_id": a.id, "sdp": "v=0 during the drain"}
            for client in (a, b):
                assert client.expect_closed() == 1001
            assert time.monotonic() - started >= 1.4
            assert server.wait_exit() == 0


def test_a_second_signal_ends_the_drain_delay(tmp_path: Path) -> None:
    with twistd(
        tmp_path, "--interface", "127.0.0.1", "--port", "0", "--drain-delay", "60"
    ) as server:
        [port] = server.ports()
        with _client(port) as ws:
            ws.recv(TIMEOUT)
            server.signal(signal.SIGTERM)
            server.wait_for(r"SIGTERM: draining for 60")
            started = time.monotonic()
            server.signal(signal.SIGTERM)
            with pytest.raises(Exception):  # noqa: B017 - ConnectionClosed of some kind
                ws.recv(TIMEOUT)
            assert ws.close_code == 1001
            assert server.wait_exit(timeout=10) == 0
            assert time.monotonic() - started < 5
        server.wait_for(r"SIGTERM again: shutting down now")
