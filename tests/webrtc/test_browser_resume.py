"""Demo pages in headless Chromium whose signaling sockets are cut, through a
TCP proxy of the test's own, in the middle of a call: the browser client
resumes its session (same id, no rejoin, the call untouched), or, once the
server's grace is over, falls back to a new id and the call is made again."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.protocols import portforward
from websockets.sync.client import connect

from signaling.core import messages

from ..conftest import Client, RunningServer, on_reactor, wait_for
from .peers import RECORD_SENT, WAIT, WAIT_MS, DemoPage, record_events

pytestmark = pytest.mark.webrtc

# How long the proxy refuses connections after cutting them.
BLIP = 3.0

RECORD_EVENTS = record_events(
    "open",
    "joined",
    "peer-joined",
    "peer-left",
    "resumed",
    "resume-failed",
    "taken-over",
    "server-message",
)


class _Link(portforward.ProxyServer):
    """One proxied connection, from a page to the server."""

    def connectionMade(self) -> None:
        self.factory.links.add(self)
        super().connectionMade()

    def connectionLost(self, reason: Any) -> None:
        self.factory.links.discard(self)
        super().connectionLost(reason)


class CuttingProxy(portforward.ProxyFactory):
    """A TCP proxy on 127.0.0.1 to the server that can cut every connection
    abruptly (RST both ways, so no close frame passes) and refuse new ones
    (accepted, then closed at once) until told to let them through."""

    protocol = _Link

    def __init__(self, port: int) -> None:
        super().__init__("127.0.0.1", port)
        self.links: set[_Link] = set()
        self.accepting = True

    def buildProtocol(self, addr: Any) -> Any:
        return super().buildProtocol(addr) if self.accepting else None

    def cut(self) -> int:
        """Refuse new connections and abort every open one; how many."""
        self.accepting = False
        links = list(self.links)
        for link in links:
            if link.peer is not None:
                link.peer.transport.abortConnection()
            link.transport.abortConnection()
        return len(links)


@pytest.fixture
def proxied(make_server: Callable[..., RunningServer]) -> Iterator[Callable[..., Any]]:
    """Start a server (with the given limits) and a proxy to it; yields the
    server, the proxy and the proxy's port."""
    ports = []

    def start(**limits: Any) -> tuple[RunningServer, CuttingProxy, int]:
        server = make_server(**limits)
        proxy = CuttingProxy(server.port)
        port = on_reactor(reactor.listenTCP, 0, proxy, interface="127.0.0.1")
        ports.append(port)
        return server, proxy, port.getHost().port

    yield start
    for port in ports:
        on_reactor(port.stopListening)


def events(page: DemoPage, *types: str) -> list[dict[str, Any]]:
    found = page.page.evaluate("window.clientEvents")
    return [event for event in found if event["type"] in types]


def call(server: RunningServer, open_page: Any, url: str, room: str):
    """Two pages in a call in ``room``; both, and their ids."""
    first = open_page(url, RECORD_EVENTS + RECORD_SENT)
    first_id = first.client_id()
    assert wait_for(lambda: server.rooms() == {room: {first_id}}, WAIT)
    second = open_page(url, RECORD_EVENTS + RECORD_SENT)
    second_id = second.client_id()
    first.wait_meshed({second_id})
    second.wait_meshed({first_id})
    return first, first_id, second, second_id


def cut(proxy: CuttingProxy, pages: list[DemoPage]) -> None:
    """Cut every socket through the proxy; wait until each page saw it."""
    assert on_reactor(proxy.cut) >= len(pages)
    for page in pages:
        page.page.wait_for_function("() => window.demo.client.id === null", timeout=WAIT_MS)


def frames(page: DemoPage, peer_id: str) -> int:
    return page.peer_report()[peer_id]["frames"]


def test_a_call_survives_its_signaling_sockets_being_cut(proxied, open_page) -> None:
    server, proxy, port = proxied()
    url = f"http://127.0.0.1:{port}/?room=blip"
    first, first_id, second, second_id = call(server, open_page, url, "blip")
    pages = {first: second_id, second: first_id}
    for page, other in pages.items():
        # Marks the RTCPeerConnection, to tell whether it is still the same after.
        page.page.evaluate("id => { window.demo.client.peers.get(id).kept = true; }", other)

    cut(proxy, list(pages))
    assert wait_for(lambda: on_reactor(lambda: server.hub.sessions_away) == 2, WAIT)
    before = {page: frames(page, other) for page, other in pages.items()}
    # Sent while both are away: kept, and replayed on the resume.
    sent = on_reactor(
        lambda: server.hub.rooms.room("blip").broadcast(messages.server_message("while away"))
    )
    assert sent == 2
    # An ICE restart while away: its offer waits for the resume.
    offers = first.sent_types().count("offer")
    first.page.evaluate("id => window.demo.client.peers.get(id).restartIce()", second_id)
    time.sleep(BLIP)  # the blip itself: pages retry and are refused meanwhile
    # The video went on without the server.
    for page, other in pages.items():
        assert frames(page, other) > before[page], "video stopped while signaling was cut"
    proxy.accepting = True

    for page, own in ((first, first_id), (second, second_id)):
        page.page.wait_for_function("id => window.demo.client.id === id", arg=own, timeout=WAIT_MS)
    for page, other in pages.items():
        page.wait_meshed({other})
        assert page.page.evaluate("id => window.demo.client.peers.get(id).kept === true", other)
        assert page.tile_ids() == {other}
        assert events(page, "resumed") == [{"type": "resumed", "id": page.client_id()}]
        assert events(page, "peer-left", "resume-failed", "taken-over") == []
        assert events(page, "peer-joined") == [{"type": "peer-joined", "id": other}]
        assert [e["type"] for e in events(page, "joined")] == ["joined"]  # no rejoin
        assert events(page, "server-message") == [{"type": "server-message", "text": "while away"}]
        assert "while away" in page.status()
    # The offer made while away went out once resumed, and was answered.
    first.page.wait_for_function(
        "([id, offers]) => window.demo.client.peers.get(id).signalingState === 'stable'"
        " && window.sentTypes.filter((t) => t === 'offer').length > offers",
        arg=[second_id, offers],
        timeout=WAIT_MS,
    )
    hub = server.hub
    assert on_reactor(lambda: (hub.sessions_away, hub.stats.sessions_resumed)) == (0, 2)
    assert server.rooms() == {"blip": {first_id, second_id}}


def test_after_the_grace_the_client_rejoins_under_a_new_id(proxied, open_page) -> None:
    server, proxy, port = proxied(resume_grace=1)
    url = f"http://127.0.0.1:{port}/?room=late"
    first, first_id, second, second_id = call(server, open_page, url, "late")

    cut(proxy, [first, second])
    assert wait_for(lambda: on_reactor(lambda: server.hub.stats.sessions_expired) == 2, WAIT)
    assert server.rooms() == {}
    proxy.accepting = True

    new_ids = []
    for page, old in ((first, first_id), (second, second_id)):
        page.page.wait_for_function(
            "old => window.demo.client.id && window.demo.client.id !== old",
            arg=old,
            timeout=WAIT_MS,
        )
        new_ids.append(page.client_id())
    assert wait_for(lambda: server.rooms() == {"late": set(new_ids)}, WAIT)
    first.wait_meshed({new_ids[1]})
    second.wait_meshed({new_ids[0]})
    for page, old_peer in ((first, second_id), (second, first_id)):
        (failed,) = events(page, "resume-failed")
        assert failed["code"] == "resume_failed"
        assert {"type": "peer-left", "id": old_peer} in events(page, "peer-left")
        assert events(page, "resumed") == []
        assert [e["type"] for e in events(page, "joined")] == ["joined", "joined"]
        # The server's resume_failed is not shown as an error.
        assert page.page.locator("#status").is_hidden()


def test_a_session_taken_over_with_its_token_stops_the_page(proxied, open_page) -> None:
    server, _, port = proxied()
    page = open_page(f"http://127.0.0.1:{port}/?room=stolen", RECORD_EVENTS)
    own = page.client_id()
    assert wait_for(lambda: server.rooms() == {"stolen": {own}}, WAIT)
    token, last_seq = page.page.evaluate(
        "() => [window.demo.client._resumeToken, window.demo.client._lastSeq]"
    )
    # Someone else resumes the page's session with its token, page still connected.
    url = f"{server.url}?resume_token={token}&last_seq={last_seq}"
    with connect(url, proxy=None, open_timeout=WAIT) as ws:
        thief = Client(ws)
        assert thief.id == own
        page.page.wait_for_function(
            "() => window.clientEvents.some((e) => e.type === 'taken-over')", timeout=WAIT_MS
        )
        assert events(page, "taken-over") == [
            {"type": "taken-over", "code": 4003, "reason": "resumed elsewhere"}
        ]
        assert "another tab" in page.status()
        # It does not come back (a retry would have opened a fresh session by now).
        time.sleep(1.5)
        assert page.page.evaluate("window.demo.client.id") is None
        assert on_reactor(lambda: set(server.hub.sessions)) == {own}
        assert server.rooms() == {"stolen": {own}}


def test_too_many_messages_while_away_give_up_resuming(proxied, open_page) -> None:
    """The messages kept for the peers while away are bounded: past 1,000
    the client gives up resuming, and the call is made again under new ids."""
    server, proxy, port = proxied(resume_grace=3)
    url = f"http://127.0.0.1:{port}/?room=chatty"
    first, first_id, second, second_id = call(server, open_page, url, "chatty")
    cut(proxy, [first])
    first.page.evaluate(
        "peer => { for (let i = 0; i < 1001; i++)"
        " window.demo.client._send('candidate', {client_id: peer, candidate: null}); }",
        second_id,
    )
    (abandoned,) = events(first, "resume-failed")
    assert abandoned["code"] == "resume_abandoned"
    assert {"type": "peer-left", "id": second_id} in events(first, "peer-left")
    proxy.accepting = True
    first.page.wait_for_function(
        "old => window.demo.client.id && window.demo.client.id !== old",
        arg=first_id,
        timeout=WAIT_MS,
    )
    new_id = first.client_id()
    # The old session stays away on the server until its grace ends.
    assert wait_for(lambda: server.rooms() == {"chatty": {second_id, new_id}}, WAIT)
    second.wait_meshed({new_id})
    first.wait_meshed({second_id})
    assert events(first, "resumed") == []
