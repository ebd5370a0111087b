"""aiortc peers through the real server: with each other and with Chromium."""

from __future__ import annotations

import asyncio

import pytest

from .peers import WAIT, AiortcPeer, LoopThread

pytestmark = pytest.mark.webrtc


def connected(peer: AiortcPeer, other: AiortcPeer) -> bool:
    pc = peer.pcs.get(other.id)
    return pc is not None and pc.connectionState == "connected"


async def two_peers_chat(url: str) -> None:
    first = AiortcPeer(url, "py", channel=True)
    second = AiortcPeer(url, "py", channel=True)
    assert await first.start() == []
    assert await second.start() == [first.id]
    try:
        await first.wait(lambda: connected(first, second), "a connection")
        await second.wait(lambda: connected(second, first), "a connection")
        await first.wait(lambda: first.channels[second.id].readyState == "open", "an open channel")
        await second.wait(lambda: first.id in second.channels, "the channel")
        assert second.channels[first.id].readyState == "open"

        first.channels[second.id].send("hello from the first")
        assert await asyncio.wait_for(second.received.get(), WAIT) == (
            first.id,
            "hello from the first",
        )
        second.channels[first.id].send("hello back")
        assert await asyncio.wait_for(first.received.get(), WAIT) == (second.id, "hello back")
        # The newcomer answered an offer that already held every candidate.
        assert first.sent_types == ["join", "offer"]
        assert second.sent_types == ["join", "answer"]
    finally:
        await first.close()
        await second.close()


def test_two_aiortc_peers_exchange_data_channel_messages(server, aiortc_loopback) -> None:
    asyncio.run(asyncio.wait_for(two_peers_chat(server.url), 2 * WAIT))


@pytest.mark.parametrize("first", ["chromium", "aiortc"])
def test_aiortc_and_chromium_exchange_video(server, open_page, aiortc_loopback, first) -> None:
    url = f"http://127.0.0.1:{server.port}/?room=mixed"
    loop = LoopThread()
    peer = AiortcPeer(server.url, "mixed", video=True)
    try:
        if first == "chromium":
            page = open_page(url)
            page_id = page.client_id()
            assert loop.run(peer.start()) == [page_id]
        else:
            assert loop.run(peer.start()) == []
            page = open_page(url)
            page_id = page.client_id()

        report = page.wait_meshed({peer.id})
        assert report[peer.id]["width"] == 640  # aiortc's test pattern

        async def video_from_page() -> None:
            await peer.wait(lambda: len(peer.frame_widths.get(page_id, [])) >= 10, "frames")

        loop.run(video_from_page())
        assert all(width > 0 for width in peer.frame_widths[page_id])
        assert peer.pcs[page_id].connectionState == "connected"
    finally:
        loop.run(peer.close())
        loop.stop()
