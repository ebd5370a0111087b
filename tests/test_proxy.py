"""--trust-proxy: the client address comes from X-Forwarded-For, as far as it is
trusted; how addresses are shown and counted by the per-address limit."""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import pytest
from twisted.logger import LogLevel
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect, unix_connect

from bench.twistd import twistd
from signaling.admin import Admin

from .conftest import TIMEOUT, Client, RunningServer, on_reactor, wait_for
from .twistd_process import free_port, wait_unix_listening

FORWARDED = "198.51.100.1, 203.0.113.7"


def address_seen(server: RunningServer, headers: dict[str, str]) -> str:
    with connect(server.url, proxy=None, open_timeout=TIMEOUT, additional_headers=headers) as ws:
        client = Client(ws)
        return on_reactor(lambda: server.connection(client.id).client_address)


@pytest.mark.parametrize(
    ("trusted", "expected"),
    [(1, "203.0.113.7"), (2, "198.51.100.1"), (5, "198.51.100.1")],
)
def test_address_from_trusted_proxies(
    make_server: Callable[..., RunningServer], trusted: int, expected: str
) -> None:
    server = make_server(trust_proxy=trusted)
    assert address_seen(server, {"X-Forwarded-For": FORWARDED}) == expected


def test_header_ignored_without_trust(server: RunningServer) -> None:
    assert address_seen(server, {"X-Forwarded-For": FORWARDED}).startswith("tcp4:127.0.0.1:")


def test_socket_address_when_no_header(make_server: Callable[..., RunningServer]) -> None:
    server = make_server(trust_proxy=1)
    assert address_seen(server, {}).startswith("tcp4:127.0.0.1:")


def test_the_log_names_the_real_client(
    make_server: Callable[..., RunningServer],
    events: list[dict[str, Any]],
) -> None:
    server = make_server(trust_proxy=1)
    address_seen(server, {"X-Forwarded-For": FORWARDED})

    def connects() -> list[dict[str, Any]]:
        return [e for e in list(events) if e.get("log_format", "").startswith("connect ")]

    assert wait_for(connects)
    assert connects()[0]["peer"] == "203.0.113.7"


def test_twistd_option(tmp_path: Path) -> None:
    with twistd(
        tmp_path,
        "--interface",
        "127.0.0.1",
        "--port",
        "0",
        "--trust-proxy",
        "1",
        "--log-level",
        "debug",
    ) as server:
        [port] = server.ports()
        with connect(
            f"ws://127.0.0.1:{port}/connect",
            proxy=None,
            open_timeout=TIMEOUT,
            additional_headers={"X-Forwarded-For": FORWARDED},
        ) as ws:
            Client(ws)
            server.wait_for(r"connect \S+ from 203\.0\.113\.7$")


# -- per-address limits ------------------------------------------------------------


@pytest.fixture
def held() -> Iterator[contextlib.ExitStack]:
    """Connections a test keeps open until it ends."""
    with contextlib.ExitStack() as stack:
        yield stack


def handshake_status(held: contextlib.ExitStack, server: RunningServer, forwarded: str) -> int:
    """The HTTP status of a refused handshake, or 101 if it opens (and is held open)."""
    try:
        held.enter_context(
            connect(
                server.url,
                proxy=None,
                open_timeout=TIMEOUT,
                additional_headers={"X-Forwarded-For": forwarded},
            )
        )
    except InvalidStatus as refused:
        return refused.response.status_code
    return 101


def test_ipv6_clients_are_counted_by_their_64(
    make_server: Callable[..., RunningServer], held: contextlib.ExitStack
) -> None:
    server = make_server(trust_proxy=1, max_connections_per_address=1)
    assert handshake_status(held, server, "2001:db8:0:1::1") == 101
    assert handshake_status(held, server, "2001:db8:0:1::2") == 503  # same /64
    assert handshake_status(held, server, "2001:db8:0:1:ffff::9") == 503
    assert handshake_status(held, server, "2001:db8:0:2::1") == 101  # the next /64


def test_ipv4_mapped_addresses_count_as_ipv4(
    make_server: Callable[..., RunningServer], held: contextlib.ExitStack
) -> None:
    server = make_server(trust_proxy=1, max_connections_per_address=1)
    assert handshake_status(held, server, "203.0.113.7") == 101
    assert handshake_status(held, server, "::ffff:203.0.113.7") == 503
    assert handshake_status(held, server, "203.0.113.8") == 101


def unix_status(held: contextlib.ExitStack, path: Path, headers: dict[str, str]) -> int:
    try:
        ws = held.enter_context(
            unix_connect(
                str(path),
                "ws://localhost/connect",
                open_timeout=TIMEOUT,
                additional_headers=headers,
            )
        )
    except InvalidStatus as refused:
        return refused.response.status_code
    Client(ws)
    return 101


def test_unix_socket_peers_are_not_counted_per_address(
    tmp_path: Path, held: contextlib.ExitStack
) -> None:
    """Behind a proxy on a unix socket, without --trust-proxy: every client
    comes from the one socket, so none is limited by it; the server warns
    once and counts the forwarded requests."""
    path = tmp_path / "signaling.sock"
    metrics = free_port()
    with twistd(
        tmp_path,
        "--listen",
        f"unix:{path}",
        "--max-connections-per-address",
        "2",
        "--metrics-listen",
        f"tcp:{metrics}:interface=127.0.0.1",
    ) as server:
        server.wait_for(r"starting on .*signaling\.sock")
        wait_unix_listening(path)
        for _ in range(4):
            assert unix_status(held, path, {"X-Forwarded-For": "203.0.113.7"}) == 101
        server.wait_for(r"X-Forwarded-For or Forwarded, but --trust-proxy is 0")
        scraped = urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=TIMEOUT).read().decode()
        assert "signaling_untrusted_forwarded_requests_total 4.0" in scraped
        assert "signaling_connections_open 4.0" in scraped
    assert server.output.count("--trust-proxy is 0") == 1


def test_unix_socket_clients_are_counted_by_the_trusted_address(
    tmp_path: Path, held: contextlib.ExitStack
) -> None:
    path = tmp_path / "signaling.sock"
    with twistd(
        tmp_path,
        "--listen",
        f"unix:{path}",
        "--trust-proxy",
        "1",
        "--max-connections-per-address",
        "2",
    ) as server:
        server.wait_for(r"starting on .*signaling\.sock")
        wait_unix_listening(path)
        assert unix_status(held, path, {"X-Forwarded-For": "203.0.113.7"}) == 101
        assert unix_status(held, path, {"X-Forwarded-For": "203.0.113.7"}) == 101
        assert unix_status(held, path, {"X-Forwarded-For": "203.0.113.7"}) == 503
        assert unix_status(held, path, {"X-Forwarded-For": "203.0.113.8"}) == 101
        server.wait_for(
            r"handshake \('too many connections from this address'\) from 203\.0\.113\.7: 503"
        )
        # No forwarded address (a request straight to the socket): not counted.
        for _ in range(3):
            assert unix_status(held, path, {}) == 101
    assert "--trust-proxy is 0" not in server.output


# -- the untrusted header: one warning, counted --------------------------------------


def test_forwarded_headers_without_trust_warn_once_and_count(
    make_server: Callable[..., RunningServer], events: list[dict[str, Any]]
) -> None:
    server = make_server()
    address_seen(server, {"X-Forwarded-For": FORWARDED})
    address_seen(server, {"Forwarded": "for=198.51.100.1"})
    base = f"http://127.0.0.1:{server.port}"
    request = Request(f"{base}/healthz", headers={"X-Forwarded-For": "198.51.100.1"})
    assert urlopen(request, timeout=TIMEOUT).status == 200
    assert urlopen(f"{base}/healthz", timeout=TIMEOUT).status == 200  # no header: not counted
    scraped = urlopen(f"{base}/metrics", timeout=TIMEOUT).read().decode()
    assert "signaling_untrusted_forwarded_requests_total 3.0" in scraped
    warnings = [e for e in list(events) if "--trust-proxy is 0" in e.get("log_format", "")]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == LogLevel.warn


def test_no_warning_when_the_proxy_is_trusted(
    make_server: Callable[..., RunningServer], events: list[dict[str, Any]]
) -> None:
    server = make_server(trust_proxy=1)
    address_seen(server, {"X-Forwarded-For": FORWARDED})
    request = Request(
        f"http://127.0.0.1:{server.port}/healthz", headers={"X-Forwarded-For": FORWARDED}
    )
    assert urlopen(request, timeout=TIMEOUT).status == 200
    assert on_reactor(lambda: server.hub.stats.untrusted_forwarded) == 0
    assert not [e for e in list(events) if "--trust-proxy is 0" in e.get("log_format", "")]


# -- one form of the client address everywhere ----------------------------------------

SOCKET_ADDRESS = r"tcp4:127\.0\.0\.1:\d+"


@pytest.mark.parametrize(
    ("trust", "headers", "pattern"),
    [
        (0, {}, SOCKET_ADDRESS),
        (0, {"X-Forwarded-For": FORWARDED}, SOCKET_ADDRESS),
        (1, {"X-Forwarded-For": FORWARDED}, r"203\.0\.113\.7"),
    ],
)
def test_admin_and_refusals_show_the_same_address(
    make_server: Callable[..., RunningServer],
    info_events: list[dict[str, Any]],
    trust: int,
    headers: dict[str, str],
    pattern: str,
) -> None:
    server = make_server(trust_proxy=trust, max_connections_per_address=1)
    with connect(server.url, proxy=None, open_timeout=TIMEOUT, additional_headers=headers) as ws:
        client = Client(ws)
        shown = on_reactor(lambda: Admin(server.factory).client(client.id).address)
        assert re.fullmatch(pattern, shown)
        with pytest.raises(InvalidStatus):
            connect(server.url, proxy=None, open_timeout=TIMEOUT, additional_headers=headers)
    [refusal] = [
        e
        for e in list(info_events)
        if e.get("log_format", "").startswith("failing WebSocket opening handshake")
    ]
    assert re.fullmatch(pattern, refusal["peer"])


def http_get(port: int, path: str, headers: dict[str, str]) -> int:
    return urlopen(
        Request(f"http://127.0.0.1:{port}{path}", headers=headers), timeout=TIMEOUT
    ).status


@pytest.mark.parametrize(
    ("trust", "headers", "shown"),
    [
        ("1", {"X-Forwarded-For": FORWARDED}, r"203\.0\.113\.7"),
        ("1", {}, SOCKET_ADDRESS),
        ("0", {"X-Forwarded-For": FORWARDED}, SOCKET_ADDRESS),
    ],
)
def test_access_log_shows_the_client_address(
    tmp_path: Path, trust: str, headers: dict[str, str], shown: str
) -> None:
    with twistd(
        tmp_path, "--interface", "127.0.0.1", "--port", "0", "--trust-proxy", trust
    ) as server:
        assert http_get(server.port, "/healthz?access-log", headers) == 200
        server.wait_for(rf'"{shown}" - - \[[^]]+\] "GET /healthz\?access-log HTTP/1\.1" 200 ')


def test_access_log_shows_unix_for_a_unix_socket_peer(tmp_path: Path) -> None:
    path = tmp_path / "signaling.sock"
    with twistd(tmp_path, "--listen", f"unix:{path}") as server:
        server.wait_for(r"starting on .*signaling\.sock")
        wait_unix_listening(path)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(path))
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
        server.wait_for(r'"unix" - - \[[^]]+\] "GET /healthz HTTP/1\.1" 200 ')
