"""The demo page and its client library in headless Chromium, through the real server."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor

from signaling.web.site import listening_factory
from signaling.wire.protocol import SignalingFactory

from ..conftest import on_reactor, wait_for
from .peers import RECORD_SENT, WAIT, WAIT_MS

pytestmark = pytest.mark.webrtc

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def demo_url(server, room: str, **query: str) -> str:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"http://127.0.0.1:{server.port}/?room={room}{extra}"


def open_meshed_pair(server, open_page, room: str, script: str | None = None, **query: str):
    """Two pages in ``room``, the first in the room before the second opens
    (so the first is the one that offers), meshed; returns both and their ids."""
    url = demo_url(server, room, **query)
    first = open_page(url, script)
    first_id = first.client_id()
    assert wait_for(lambda: server.rooms() == {room: {first_id}}, WAIT)
    second = open_page(url, script)
    second_id = second.client_id()
    first.wait_meshed({second_id})
    second.wait_meshed({first_id})
    return first, first_id, second, second_id


def test_three_pages_mesh_one_leaves_a_fourth_joins(server, open_page) -> None:
    url = demo_url(server, "mesh")
    pages = [open_page(url, RECORD_SENT) for _ in range(3)]
    ids = [page.client_id() for page in pages]
    assert len(set(ids)) == 3

    for page, own in zip(pages, ids, strict=True):
        page.wait_meshed(set(ids) - {own})
    # Trickle mode (the default) sends candidates as they are found.
    assert "candidate" in pages[0].sent_types()

    pages[0].page.get_by_role("button", name="Leave").click()
    assert wait_for(lambda: server.rooms() == {"mesh": set(ids[1:])}, WAIT)
    for page in pages[1:]:
        page.page.wait_for_function(
            "id => !document.querySelector(`.tile.remote[data-peer-id='${id}']`)",
            arg=ids[0],
            timeout=WAIT_MS,
        )
    for page, own in zip(pages[1:], ids[1:], strict=True):
        page.wait_meshed(set(ids[1:]) - {own})
    assert "You left the room." in pages[0].status()

    late = open_page(url)
    late_id = late.client_id()
    late.wait_meshed(set(ids[1:]))
    for page, own in zip(pages[1:], ids[1:], strict=True):
        page.wait_meshed({*ids[1:], late_id} - {own})

    ARTIFACTS.mkdir(exist_ok=True)
    late.page.screenshot(path=str(ARTIFACTS / "demo-mesh.png"))


def test_non_trickle_mode_sends_candidates_only_in_the_sdp(server, open_page) -> None:
    first, _, second, _ = open_meshed_pair(server, open_page, "sdp-only", RECORD_SENT, trickle="0")
    assert first.sent_types() == ["join", "offer"]
    assert second.sent_types() == ["join", "answer"]
    for page in (first, second):
        (sdp,) = page.page.evaluate("window.sentSdps")
        assert "a=candidate:" in sdp


def test_dropped_socket_reconnects_and_rejoins(make_server, open_page) -> None:
    # Without resuming (see test_browser_resume for a drop that resumes).
    server = make_server(resume_grace=0)
    stays, stays_id, drops, old_id = open_meshed_pair(server, open_page, "drop")

    on_reactor(lambda: server.connection(old_id).dropConnection(abort=True))
    drops.page.wait_for_function(
        "old => window.demo.client.id && window.demo.client.id !== old", arg=old_id, timeout=WAIT_MS
    )
    new_id = drops.client_id()
    # The server told the other page that the old id left; it meshes with the new one.
    stays.wait_meshed({new_id})
    drops.wait_meshed({stays_id})
    assert server.rooms() == {"drop": {stays_id, new_id}}


def test_unreachable_server_is_reported_and_retried(reactor_thread, open_page) -> None:
    factory = SignalingFactory()
    listening = on_reactor(reactor.listenTCP, 0, listening_factory(factory), interface="127.0.0.1")
    port = listening.getHost().port
    page = open_page(f"http://127.0.0.1:{port}/?room=restart")
    old_id = page.client_id()

    def stop() -> Any:
        for session in list(factory.hub.sessions.values()):
            session.abort()
        return listening.stopListening()

    on_reactor(stop)
    page.page.get_by_text("Cannot reach the signaling server").wait_for(timeout=WAIT_MS)

    listening = on_reactor(
        reactor.listenTCP, port, listening_factory(SignalingFactory()), interface="127.0.0.1"
    )
    try:
        page.page.wait_for_function(
            "old => window.demo.client.id && window.demo.client.id !== old",
            arg=old_id,
            timeout=WAIT_MS,
        )
        page.page.locator("#status").wait_for(state="hidden", timeout=WAIT_MS)
    finally:
        on_reactor(listening.stopListening)


DENY_CAMERA = """
navigator.mediaDevices.getUserMedia = () =>
    Promise.reject(new DOMException("Permission denied", "NotAllowedError"));
"""


def test_page_without_camera_says_so_and_still_sees_others(server, open_page) -> None:
    url = demo_url(server, "watch")
    # The page without media joins first, so it is the one that offers.
    watcher = open_page(url, DENY_CAMERA)
    watcher_id = watcher.client_id()
    assert wait_for(lambda: server.rooms() == {"watch": {watcher_id}}, WAIT)
    assert "Camera and microphone access was denied" in watcher.status()
    assert watcher.page.locator("#toggle-camera").is_disabled()
    sender = open_page(url)
    sender_id = sender.client_id()
    watcher.wait_meshed({sender_id})
    report = sender.page.evaluate(
        "id => window.demo.client.peers.get(id).connectionState", watcher_id
    )
    assert report == "connected"


@pytest.mark.parametrize("trickle", ["1", "0"])
def test_colliding_offers_are_resolved(server, open_page, trickle: str) -> None:
    """Both sides renegotiate at once: the newcomer (polite) yields, the
    other side's offer wins, then the newcomer's change is negotiated too."""
    first, first_id, second, second_id = open_meshed_pair(
        server, open_page, "glare", RECORD_SENT, trickle=trickle
    )
    errors = """() => {
        window.clientErrors = [];
        window.demo.client.addEventListener("error", (e) => window.clientErrors.push(e.detail));
    }"""
    for page in (first, second):
        page.page.evaluate(errors)
    offers_sent = [page.sent_types().count("offer") for page in (first, second)]

    # Hold the server still while each side adds a receive-only transceiver
    # and sends its offer, so that each offer reaches a peer that has one out.
    add = "id => window.demo.client.peers.get(id).addTransceiver('audio', {direction: 'recvonly'})"
    gate = threading.Event()
    reactor.callFromThread(gate.wait, WAIT)
    try:
        first.page.evaluate(add, second_id)
        second.page.evaluate(add, first_id)
        for page, sent in zip((first, second), offers_sent, strict=True):
            page.page.wait_for_function(
                "n => window.sentTypes.filter((t) => t === 'offer').length > n",
                arg=sent,
                timeout=WAIT_MS,
            )
    finally:
        gate.set()

    settled = """id => {
        const pc = window.demo.client.peers.get(id);
        return pc.signalingState === "stable"
            && pc.getTransceivers().filter((t) => t.mid !== null).length === 4;
    }"""
    first.page.wait_for_function(settled, arg=second_id, timeout=WAIT_MS)
    second.page.wait_for_function(settled, arg=first_id, timeout=WAIT_MS)
    first.wait_meshed({second_id})
    second.wait_meshed({first_id})
    for page in (first, second):
        assert page.page.evaluate("() => window.clientErrors") == []
    # The newcomer's offer lost the collision, so it offered once more.
    assert second.sent_types().count("offer") == offers_sent[1] + 2
    assert first.sent_types().count("offer") == offers_sent[0] + 1


def test_phone_sized_page_stacks_tiles_without_sideways_scrolling(server, open_page) -> None:
    url = demo_url(server, "phone")
    other = open_page(url)
    other_id = other.client_id()
    phone = open_page(url)
    phone.page.set_viewport_size({"width": 390, "height": 844})
    phone.wait_meshed({other_id})
    layout = phone.page.evaluate(
        """() => ({
            scrollWidth: document.documentElement.scrollWidth,
            tiles: [...document.querySelectorAll(".tile")].map((t) => t.getBoundingClientRect()),
            buttons: [...document.querySelectorAll(".controls button")]
                .map((b) => b.getBoundingClientRect()),
        })"""
    )
    assert layout["scrollWidth"] <= 390
    local, remote = layout["tiles"]
    assert local["x"] == remote["x"] and remote["y"] >= local["y"] + local["height"]
    assert local["width"] > 300
    assert all(b["right"] <= 390 and b["height"] >= 40 for b in layout["buttons"])
    ARTIFACTS.mkdir(exist_ok=True)
    phone.page.screenshot(path=str(ARTIFACTS / "demo-phone.png"))

    tracks = "() => window.demo.stream.getTracks().map((t) => [t.kind, t.enabled])"
    assert sorted(phone.page.evaluate(tracks)) == [["audio", True], ["video", True]]
    phone.page.get_by_role("button", name="Mute").click()
    phone.page.get_by_role("button", name="Camera off").click()
    assert sorted(phone.page.evaluate(tracks)) == [["audio", False], ["video", False]]
    assert phone.page.get_by_role("button", name="Unmute").get_attribute("aria-pressed") == "true"
    phone.page.get_by_role("button", name="Camera on").click()
    assert sorted(phone.page.evaluate(tracks)) == [["audio", False], ["video", True]]


def test_room_comes_from_query_or_fragment_else_a_random_one(server, open_page) -> None:
    base = f"http://127.0.0.1:{server.port}/"
    by_fragment = open_page(base + "#team%20a")
    by_fragment_id = by_fragment.client_id()
    random = open_page(base)
    random_id = random.client_id()
    assert wait_for(lambda: len(server.rooms()) == 2, WAIT)
    rooms = server.rooms()
    assert rooms.pop("team a") == {by_fragment_id}
    ((room, members),) = rooms.items()
    assert members == {random_id} and len(room) == 12
    assert random.page.url == f"{base}?room={room}"
    assert random.page.input_value("#room-link") == f"{base}?room={room}"
    assert by_fragment.page.input_value("#room-link") == f"{base}?room=team%20a"
