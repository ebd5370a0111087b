"""--trust-proxy: the client address comes from X-Forwarded-For, as far as it is trusted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from .conftest import TIMEOUT, Client, RunningServer, on_reactor, wait_for
from .twistd_process import twistd

FORWARDED = "198.51.100.1, 203.0.113.7"


def address_seen(server: RunningServer, headers: dict[str, str]) -> str:
    with connect(server.url, proxy=None, open_timeout=TIMEOUT, additional_headers=headers) as ws:
        client = Client(ws)
        return on_reactor(lambda: server.factory.clients[client.id].client_address)


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
