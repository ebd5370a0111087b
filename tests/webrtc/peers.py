"""Drivers for real WebRTC peers: demo pages in Chromium, aiortc peers."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine
from typing import Any

WAIT = 25.0  # seconds: the bound on every wait for a peer
WAIT_MS = WAIT * 1000

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",  # grants the camera; also no mDNS candidates
    "--allow-loopback-in-peer-connection",  # else no 127.0.0.1 candidates at all
]

# Runs in the page: id -> {state, width, frames} for every peer of the client.
_PEER_REPORT = """async () => {
    const report = {};
    for (const [id, pc] of window.demo.client.peers) {
        let frames = 0;
        for (const s of (await pc.getStats()).values()) {
            if (s.type === "inbound-rtp" && s.kind === "video") frames += s.framesDecoded || 0;
        }
        const tile = document.querySelector(`.tile.remote[data-peer-id="${id}"] video`);
        report[id] = {state: pc.connectionState, width: tile ? tile.videoWidth : -1, frames};
    }
    return report;
}"""


class DemoPage:
    """The demo page in one Chromium tab, read through ``window.demo``."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.page_errors: list[str] = []
        #: Errors in the browser console, and requests that failed or got 4xx/5xx.
        self.console_errors: list[str] = []
        self.failed_requests: list[str] = []
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("console", self._console)
        page.on("response", self._response)
        page.on("requestfailed", lambda request: self.failed_requests.append(request.url))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.failed_requests.append(f"{response.status} {response.url}")

    def client_id(self) -> str:
        """Wait until the client has an id from the server; return it."""
        handle = self.page.wait_for_function("() => window.demo?.client?.id", timeout=WAIT_MS)
        return handle.json_value()

    def peer_report(self) -> dict[str, dict[str, Any]]:
        return self.page.evaluate(_PEER_REPORT)

    def tile_ids(self) -> set[str]:
        return set(
            self.page.eval_on_selector_all(".tile.remote", "els => els.map(e => e.dataset.peerId)")
        )

    def wait_meshed(self, ids: set[str]) -> dict[str, dict[str, Any]]:
        """Wait until this page has exactly ``ids`` as peers, each 'connected',
        each tile showing video, with frames still being decoded."""
        self.client_id()
        deadline = time.monotonic() + WAIT
        first: dict[str, dict[str, Any]] = {}
        while True:
            report = self.peer_report()
            ready = (
                set(report) == ids
                and self.tile_ids() == ids
                and all(
                    r["state"] == "connected" and r["width"] > 0 and r["frames"] > 0
                    for r in report.values()
                )
            )
            if not ready:
                first = {}
            elif not first:
                first = report
            elif all(report[i]["frames"] > first[i]["frames"] for i in ids):
                return report
            assert time.monotonic() < deadline, f"not meshed with {ids}: {report}"
            time.sleep(0.3)

    def sent_types(self) -> list[str]:
        """Types of the messages the page sent (needs :data:`RECORD_SENT`)."""
        return self.page.evaluate("window.sentTypes")

    def status(self) -> str:
        return self.page.locator("#status").inner_text()


# An init script recording the type of each message the page sends.
RECORD_SENT = """
window.sentTypes = [];
window.sentSdps = [];
const send = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
    const message = JSON.parse(data);
    window.sentTypes.push(message.type);
    if (message.payload && message.payload.sdp) window.sentSdps.push(message.payload.sdp);
    return send.call(this, data);
};
"""


_RECORD_EVENTS = """
window.clientEvents = [];
let demo;
Object.defineProperty(window, "demo", {
    configurable: true,
    get: () => demo,
    set(value) {
        demo = value;
        for (const type of window.recordedEventTypes) {
            value.client.addEventListener(type, ({ detail }) => {
                window.clientEvents.push({ type, ...detail });
            });
        }
    },
});
"""


def record_events(*types: str) -> str:
    """An init script recording the browser client's events of ``types`` in
    ``window.clientEvents`` (each ``{type, ...detail}``), from the moment
    demo.js creates the client (before its socket opens)."""
    return f"window.recordedEventTypes = {json.dumps(list(types))};\n" + _RECORD_EVENTS


class LoopThread:
    """An asyncio loop in a background thread, for aiortc beside sync Playwright."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = WAIT) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


def dumps(kind: str, payload: dict[str, Any]) -> str:
    return json.dumps({"type": kind, "payload": payload})


class AiortcPeer:
    """A Python WebRTC peer on aiortc, in a room through the real server.

    It follows the browser client's call flow (members offer to a newcomer),
    puts its own candidates only in its SDP (aiortc does not trickle) and
    adds the candidates others trickle.  With ``video`` it sends aiortc's
    test pattern; with ``channel`` the offering side opens a data channel.
    """

    def __init__(self, url: str, room: str, *, video: bool = False, channel: bool = False):
        self.url = url
        self.room = room
        self.video = video
        self.channel = channel
        self.id = ""
        self.pcs: dict[str, Any] = {}
        self.channels: dict[str, Any] = {}
        self.received: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.frame_widths: dict[str, list[int]] = {}
        self.sent_types: list[str] = []
        self.tasks: set[asyncio.Future[None]] = set()

    async def start(self) -> list[str]:
        """Connect and join; return the members that were there first."""
        from websockets.asyncio.client import connect

        self.ws = await connect(self.url, proxy=None, open_timeout=WAIT)
        hello = json.loads(await self.ws.recv())
        assert hello["type"] == "notify-client-id", hello
        self.id = hello["payload"]["client_id"]
        await self.send("join", {"room_id": self.room})
        joined = json.loads(await self.ws.recv())
        assert joined["type"] == "joined", joined
        self.reader = asyncio.ensure_future(self._read())
        return joined["payload"]["clients"]

    async def send(self, kind: str, payload: dict[str, Any]) -> None:
        self.sent_types.append(kind)
        await self.ws.send(dumps(kind, payload))

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()
        for task in self.tasks:
            task.cancel()
        for pc in self.pcs.values():
            await pc.close()

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            payload = message["payload"]
            kind = message["type"]
            if kind == "new-client":
                await self._offer(payload["client_id"])
            elif kind == "offer":
                await self._answer(payload["client_id"], payload["sdp"])
            elif kind == "answer":
                await self._remote_description(payload["client_id"], "answer", payload["sdp"])
            elif kind == "candidate":
                await self._add_candidate(payload["client_id"], payload["candidate"])
            elif kind == "leave-client" and payload["client_id"] in self.pcs:
                await self.pcs.pop(payload["client_id"]).close()

    def _peer_connection(self, peer_id: str) -> Any:
        from aiortc import RTCConfiguration, RTCPeerConnection

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pcs[peer_id] = pc

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            self._use_channel(peer_id, channel)

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "video":
                task = asyncio.ensure_future(self._count_frames(peer_id, track))
                self.tasks.add(task)

        return pc

    def _use_channel(self, peer_id: str, channel: Any) -> None:
        self.channels[peer_id] = channel

        @channel.on("message")
        def on_message(message: str) -> None:
            self.received.put_nowait((peer_id, message))

    async def _count_frames(self, peer_id: str, track: Any) -> None:
        widths = self.frame_widths.setdefault(peer_id, [])
        while len(widths) < 1000:
            frame = await track.recv()
            widths.append(frame.width)

    def _add_video(self, pc: Any) -> None:
        from aiortc.mediastreams import VideoStreamTrack

        pc.addTrack(VideoStreamTrack())

    async def _offer(self, peer_id: str) -> None:
        pc = self._peer_connection(peer_id)
        if self.channel:
            self._use_channel(peer_id, pc.createDataChannel("chat"))
        if self.video:
            self._add_video(pc)
            pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        await self.send("offer", {"client_id": peer_id, "sdp": pc.localDescription.sdp})

    async def _answer(self, peer_id: str, sdp: str) -> None:
        from aiortc import RTCSessionDescription

        pc = self.pcs.get(peer_id) or self._peer_connection(peer_id)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        if self.video:
            self._add_video(pc)
        await pc.setLocalDescription(await pc.createAnswer())
        await self.send("answer", {"client_id": peer_id, "sdp": pc.localDescription.sdp})

    async def _remote_description(self, peer_id: str, kind: str, sdp: str) -> None:
        from aiortc import RTCSessionDescription

        await self.pcs[peer_id].setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))

    async def _add_candidate(self, peer_id: str, candidate: dict[str, Any]) -> None:
        from aiortc.sdp import candidate_from_sdp

        if not candidate or not candidate.get("candidate"):
            return
        parsed = candidate_from_sdp(candidate["candidate"].split(":", 1)[1])
        parsed.sdpMid = candidate.get("sdpMid")
        parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
        await self.pcs[peer_id].addIceCandidate(parsed)

    async def wait(self, predicate: Any, what: str) -> None:
        """Poll ``predicate`` until it holds; fail after :data:`WAIT`."""
        deadline = time.monotonic() + WAIT
        while not predicate():
            assert time.monotonic() < deadline, f"{self.id}: timed out waiting for {what}"
            await asyncio.sleep(0.05)
