"""ICE servers and room tokens in the browser: the client makes its peer
connections with the ``ice_servers`` of ``joined``, and the demo page passes
``?token=`` on to ``/connect``."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path
from typing import Any

import pytest

from signaling.core.access import Grant, JoinRequest, Unauthorized

from ..conftest import on_reactor, wait_for
from .peers import WAIT, WAIT_MS, DemoPage

pytestmark = pytest.mark.webrtc

# Records every WebSocket the page opens and every message it receives.
RECORD_SOCKETS = """
window.socketUrls = [];
window.received = [];
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
    constructor(...args) {
        super(...args);
        window.socketUrls.push(String(args[0]));
        this.addEventListener("message", (e) => window.received.push(JSON.parse(e.data)));
    }
};
"""

# Each peer connection's configured ICE servers, by peer id.
_CONFIGURED = """() => Object.fromEntries([...window.demo.client.peers].map(
    ([id, pc]) => [id, pc.getConfiguration().iceServers]))"""


def received(page: DemoPage, kind: str) -> list[dict[str, Any]]:
    return [m["payload"] for m in page.page.evaluate("window.received") if m["type"] == kind]


def configured(page: DemoPage) -> dict[str, list[dict[str, Any]]]:
    """The ICE servers of each peer connection, without the empty username
    and credential Chromium reports for servers that have none."""
    return {
        peer: [{k: v for k, v in server.items() if v != ""} for server in servers]
        for peer, servers in page.page.evaluate(_CONFIGURED).items()
    }


def test_peer_connections_use_the_ice_servers_of_joined(run_twistd, open_page, tmp_path) -> None:
    secret = tmp_path / "turn-secret"
    secret.write_text("browser-secret\n")
    server = run_twistd(
        "--port", "0", "--interface", "127.0.0.1",
        "--stun", "stun:127.0.0.1:3478",
        "--turn", "turn:127.0.0.1:3478",
        "--turn-secret", str(secret),
    )  # fmt: skip
    url = f"http://127.0.0.1:{server.port}/?room=ice"
    first = open_page(url, RECORD_SOCKETS)
    first_id = first.client_id()
    first.page.wait_for_function(
        "() => window.received.some((m) => m.type === 'joined')", timeout=WAIT_MS
    )
    second = open_page(url, RECORD_SOCKETS)
    second_id = second.client_id()
    # Nothing answers on 3478: the call completes over host candidates.
    first.wait_meshed({second_id})
    second.wait_meshed({first_id})

    usernames = set()
    for page, own, other in ((first, first_id, second_id), (second, second_id, first_id)):
        (joined,) = received(page, "joined")
        stun, turn = joined["ice_servers"]
        assert stun == {"urls": ["stun:127.0.0.1:3478"]}
        assert turn["urls"] == ["turn:127.0.0.1:3478"]
        assert turn["username"].endswith(f":{own}")
        digest = hmac.new(b"browser-secret", turn["username"].encode(), hashlib.sha1).digest()
        assert turn["credential"] == base64.b64encode(digest).decode()
        usernames.add(turn["username"])
        # The page's RTCPeerConnection was made with exactly these.
        assert configured(page) == {other: joined["ice_servers"]}
    assert len(usernames) == 2


class RecordingGate:
    """Lets every join in (or refuses each with ``refusal``); keeps the tokens."""

    def __init__(self, refusal: Unauthorized | None = None) -> None:
        self.tokens: list[str | None] = []
        self.refusal = refusal

    def check(self, request: JoinRequest, done: Any) -> None:
        self.tokens.append(request.token)
        done(self.refusal or Grant())

    def left(self, room_id: str, client_id: str) -> None:
        pass


def test_demo_page_passes_its_token_to_connect(server, open_page) -> None:
    gate = RecordingGate()
    on_reactor(setattr, server.hub, "gate", gate)
    base = f"http://127.0.0.1:{server.port}/"
    plain = open_page(f"{base}?room=t&token=abc", RECORD_SOCKETS)
    plain.client_id()
    assert plain.page.evaluate("window.socketUrls") == [
        f"ws://127.0.0.1:{server.port}/connect?token=abc"
    ]
    # Characters that mean something in a query string arrive as they were.
    token = "a b&c=d/é+?#"
    odd = open_page(f"{base}?room=t&token=a%20b%26c%3Dd%2F%C3%A9%2B%3F%23", RECORD_SOCKETS)
    odd.client_id()
    assert odd.page.evaluate("window.socketUrls") == [
        f"ws://127.0.0.1:{server.port}/connect?token=a%20b%26c%3Dd%2F%C3%A9%2B%3F%23"
    ]
    assert wait_for(lambda: gate.tokens == ["abc", token], WAIT), gate.tokens
    # Without ice_servers in joined, peer connections get no ICE servers.
    plain.wait_meshed({odd.client_id()})
    assert configured(plain) == {odd.client_id(): []}
    assert "token" not in plain.page.input_value("#room-link")
    # A page without ?token= connects without one.
    bare = open_page(f"{base}?room=u", RECORD_SOCKETS)
    bare.client_id()
    assert bare.page.evaluate("window.socketUrls") == [f"ws://127.0.0.1:{server.port}/connect"]


# Records the client's disconnected events from its creation on.
RECORD_DISCONNECTS = (
    RECORD_SOCKETS
    + """
window.disconnects = [];
let demo;
Object.defineProperty(window, "demo", {
    configurable: true,
    get: () => demo,
    set(value) {
        demo = value;
        value.client.addEventListener("disconnected", ({ detail }) => {
            window.disconnects.push(detail);
        });
    },
});
"""
)


def test_refused_token_is_shown_and_not_retried(server, open_page) -> None:
    gate = RecordingGate(Unauthorized("token expired"))
    on_reactor(setattr, server.hub, "gate", gate)
    page = open_page(f"http://127.0.0.1:{server.port}/?room=t&token=old", RECORD_DISCONNECTS)
    page.page.get_by_text("Error: token expired").wait_for(timeout=WAIT_MS)
    page.page.wait_for_function("() => window.disconnects.length > 0", timeout=WAIT_MS)
    assert page.page.evaluate("window.disconnects") == [
        {"code": 4001, "reason": "unauthorized", "retryIn": None}
    ]
    assert gate.tokens == ["old"]
    assert len(page.page.evaluate("window.socketUrls")) == 1


# Runs in the page: a second client with the app's configuration, in its own room.
_APP_CONFIG = """async (rtcConfig) => {
    const { SignalingClient, connectUrl } = await import("/static/signaling-client.js");
    const client = new SignalingClient(connectUrl(), { room: "app-" + Math.random(), rtcConfig });
    const joined = new Promise((resolve) => client.addEventListener("joined", resolve));
    client.connect();
    await joined;
    const result = { effective: client.rtcConfig, server: client.serverIceServers };
    client.close();
    return result;
}"""


def test_app_ice_servers_win_over_the_servers(run_twistd, open_page, tmp_path: Path) -> None:
    server = run_twistd("--port", "0", "--interface", "127.0.0.1", "--stun", "stun:127.0.0.1:1")
    page = open_page(f"http://127.0.0.1:{server.port}/?room=x")
    page.client_id()
    sent = [{"urls": ["stun:127.0.0.1:1"]}]
    mine = [{"urls": "stun:app.example:3478"}]
    assert page.page.evaluate(_APP_CONFIG, {"iceServers": mine}) == {
        "effective": {"iceServers": mine},
        "server": sent,
    }
    # A configuration without iceServers keeps its other settings and gets the server's.
    assert page.page.evaluate(_APP_CONFIG, {"iceTransportPolicy": "relay"}) == {
        "effective": {"iceTransportPolicy": "relay", "iceServers": sent},
        "server": sent,
    }
    assert page.page.evaluate(_APP_CONFIG, None)["effective"] == {"iceServers": sent}
