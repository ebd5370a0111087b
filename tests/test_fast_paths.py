"""The server's fast paths (signaling.wire.compat.FastPaths) behave as
Autobahn's public path does: the same traffic, through real ports, gets
the same frames with any of them off."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from autobahn.websocket.protocol import WebSocketProtocol, WebSocketServerProtocol

from signaling.wire import protocol
from signaling.wire.compat import ALL_FAST_PATHS, NO_FAST_PATHS, FastPaths

from .conftest import RunningServer, on_reactor
from .traffic import exchange

CONFIGURATIONS = {
    "all-on": ALL_FAST_PATHS,
    "handshake-off": FastPaths(handshake=False),
    "read-off": FastPaths(read=False),
    "write-off": FastPaths(write=False),
    "all-off": NO_FAST_PATHS,
}


@pytest.fixture
def expected(make_server: Callable[..., RunningServer]) -> list[Any]:
    """The transcript with every fast path on."""
    return exchange(make_server, ALL_FAST_PATHS)


def test_the_script_covers_what_it_should(expected: list[Any]) -> None:
    frames = [(name, first, payload) for name, first, payload in expected if first > 0]
    sizes = {len(payload) for _, first, payload in frames if first == 0x81}
    assert max(sizes) > 65535 and any(125 < size < 65536 for size in sizes)
    assert ("a", 0x8A, b"are you there") in frames  # the pong
    closes = {name: payload[:2] for name, first, payload in frames if first == 0x88}
    assert closes == {"a": b"\x03\xe8", "b": b"\x03\xe8", "c": b"\x03\xef", "d": b"\x03\xf1"}
    errors = [payload for _, first, payload in frames if b'"type":"error"' in payload]
    assert len(errors) == 3
    assert [payload for name, _, payload in expected if name == "b"][-1] == b""  # ended


@pytest.mark.parametrize("paths", list(CONFIGURATIONS.values()), ids=list(CONFIGURATIONS))
def test_the_same_traffic_gets_the_same_frames(
    make_server: Callable[..., RunningServer], expected: list[Any], paths: FastPaths
) -> None:
    assert exchange(make_server, paths) == expected


class Calls:
    """Counts the calls of a few functions, by name."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: dict[str, int] = {}
        self.monkeypatch = monkeypatch

    def watch(self, owner: Any, name: str) -> None:
        original = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.counts[name] = self.counts.get(name, 0) + 1
            return original(*args, **kwargs)

        self.monkeypatch.setattr(owner, name, counted)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    calls = Calls(monkeypatch)
    calls.watch(protocol, "plain_upgrade")  # the handshake fast path
    calls.watch(protocol, "next_frame")  # the read fast path
    calls.watch(protocol, "text_frame")  # the write fast path
    calls.watch(WebSocketServerProtocol, "processHandshake")
    calls.watch(WebSocketProtocol, "processData")
    calls.watch(WebSocketProtocol, "sendMessage")
    yield calls


@pytest.mark.parametrize("paths", list(CONFIGURATIONS.values()), ids=list(CONFIGURATIONS))
def test_each_path_off_is_autobahns(
    make_server: Callable[..., RunningServer], calls: Calls, paths: FastPaths
) -> None:
    """The comparisons above compare the fast paths with Autobahn's, not a
    path with itself: each on is taken, and each off leaves it to Autobahn."""
    exchange(make_server, paths)
    taken = on_reactor(lambda: dict(calls.counts))
    assert ("plain_upgrade" in taken) == paths.handshake
    assert taken.get("processHandshake", 0) == (0 if paths.handshake else 4)  # four clients
    assert ("next_frame" in taken) == paths.read
    # On the read path, Autobahn reads only what is not a whole data frame
    # (fragments, control frames); off it, every frame of the script.
    if paths.read:
        assert 0 < taken["processData"] < taken["next_frame"]
    else:
        assert taken["processData"] > 40
    assert ("text_frame" in taken) == paths.write
    assert ("sendMessage" in taken) != paths.write
