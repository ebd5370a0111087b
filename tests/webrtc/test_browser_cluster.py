"""Demo pages in headless Chromium on different server processes that share
rooms through Redis: a call between them, and one of them leaving.

Each test starts its own ``redis-server`` on a free port of 127.0.0.1 (so it
runs inside the loopback-only network namespace of ``.ci/run``, where the
host's Redis cannot be reached) and two ``twistd signaling --redis`` processes
with a key prefix of the test's own."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.twistd import ServerProcess

from ..conftest import wait_for
from ..redis_rooms import require_redis_rooms
from ..redis_servers import PrivateRedis, redis_keys
from ..test_cluster import healthz, registered
from .peers import WAIT, WAIT_MS, DemoPage, record_events

pytestmark = pytest.mark.webrtc

RECORD_EVENTS = record_events("joined", "peer-joined", "peer-left")


class Cluster:
    """Server processes sharing rooms through a private Redis under one prefix."""

    def __init__(self, redis: PrivateRedis, run_twistd: Callable[..., ServerProcess]) -> None:
        self.redis = redis
        self.run_twistd = run_twistd
        self.prefix = f"signaling-browser-test:{uuid.uuid4().hex}:"

    def start(self) -> ServerProcess:
        process = self.run_twistd(
            "--port",
            "0",
            "--interface",
            "127.0.0.1",
            "--redis",
            self.redis.url(),
            "--redis-prefix",
            self.prefix,
        )
        assert wait_for(lambda: registered(process.port), 10), process.output
        return process

    def room_keys(self) -> list[str]:
        return [key for key in redis_keys(self.prefix, self.redis.port) if ":room:" in key]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of the test's own (it fails under CI=true when missing);
    stopped after the server processes (requested before ``run_twistd``)."""
    require_redis_rooms()
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster(private_redis: PrivateRedis, run_twistd: Callable[..., ServerProcess]) -> Cluster:
    return Cluster(private_redis, run_twistd)


def events(page: DemoPage, kind: str) -> list[dict[str, Any]]:
    return [e for e in page.page.evaluate("window.clientEvents") if e["type"] == kind]


def call_across_processes(
    cluster: Cluster, open_page: Callable[..., DemoPage], room: str
) -> tuple[DemoPage, str, DemoPage, str, ServerProcess, ServerProcess]:
    """A page on process A in ``room`` first, then one on process B; both meshed."""
    one, two = cluster.start(), cluster.start()
    assert one.port != two.port
    first = open_page(f"http://127.0.0.1:{one.port}/?room={room}", RECORD_EVENTS)
    first_id = first.client_id()
    first.page.wait_for_function(
        "() => window.clientEvents.some((e) => e.type === 'joined')", timeout=WAIT_MS
    )
    assert events(first, "joined") == [{"type": "joined", "room": room, "peers": []}]

    second = open_page(f"http://127.0.0.1:{two.port}/?room={room}", RECORD_EVENTS)
    second_id = second.client_id()
    # Process B learnt of the page on process A only through Redis.
    second.page.wait_for_function(
        "() => window.clientEvents.some((e) => e.type === 'joined')", timeout=WAIT_MS
    )
    assert events(second, "joined") == [{"type": "joined", "room": room, "peers": [first_id]}]
    first.wait_meshed({second_id})
    second.wait_meshed({first_id})
    # Each process holds one of the two pages.
    assert healthz(one.port)[1]["clients"] == 1
    assert healthz(two.port)[1]["clients"] == 1
    return first, first_id, second, second_id, one, two


def test_pages_on_two_processes_call_each_other(
    cluster: Cluster, open_page: Callable[..., DemoPage]
) -> None:
    first, first_id, second, second_id, _, _ = call_across_processes(cluster, open_page, "across")
    assert events(first, "peer-joined") == [{"type": "peer-joined", "id": second_id}]
    assert events(second, "peer-joined") == [{"type": "peer-joined", "id": first_id}]
    assert cluster.room_keys(), "the room is not in the private Redis"


def test_page_on_one_process_sees_the_other_process_page_leave(
    cluster: Cluster, open_page: Callable[..., DemoPage]
) -> None:
    stays, _, goes, goes_id, one, two = call_across_processes(cluster, open_page, "parting")
    goes.page.close()

    stays.page.wait_for_function(
        "() => window.clientEvents.some((e) => e.type === 'peer-left')", timeout=WAIT_MS
    )
    assert events(stays, "peer-left") == [{"type": "peer-left", "id": goes_id}]
    stays.page.wait_for_function(
        "id => !document.querySelector(`.tile.remote[data-peer-id='${id}']`)",
        arg=goes_id,
        timeout=WAIT_MS,
    )
    assert stays.peer_report() == {}
    assert wait_for(lambda: healthz(two.port)[1]["clients"] == 0, WAIT)
    assert healthz(one.port)[1]["clients"] == 1
