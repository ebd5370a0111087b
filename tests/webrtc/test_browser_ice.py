"""ICE servers and room tokens in the browser: the client makes its peer
connections with the ``ice_servers`` of ``joined``, and the demo page sends
its ``?token=`` or ``#token=`` in the ``join`` payload, not on ``/connect``."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path
from typing import Any

import pytest

from signaling.core.access import Grant, JoinRequest, Unauthorized

from ..conftest import on_reactor, wait_for
from .peers import WAIT, WAIT_MS, DemoPage, record_events

pytestmark = pytest.mark.webrtc

# Records every WebSocket the page opens, and every message it receives and sends.
RECORD_SOCKETS = """
window.socketUrls = [];
window.received = [];
window.sent = [];
const NativeWebSocket = window.WebSocket;
window.WebSocket = class extends NativeWebSocket {
    constructor(...args) {
        super(...args);
        window.socketUrls.push(String(args[0]));
        this.addEventListener("message", (e) => window.received.push(JSON.parse(e.data)));
    }
    send(data) {
        window.sent.push(JSON.parse(data));
        return super.send(data);
    }
};
"""

# Each peer connection's configured ICE servers, by peer id.
_CONFIGURED = """() => Object.fromEntries([...window.demo.client.peers].map(
    ([id, pc]) => [id, pc.getConfiguration().iceServers]))"""


def received(page: DemoPage, kind: str) -> list[dict[str, Any]]:
    return [m["payload"] for m in page.page.evaluate("window.received") if m["type"] == kind]


def sent(page: DemoPage, kind: str) -> list[dict[str, Any]]:
    return [m["payload"] for m in page.page.evaluate("window.sent") if m["type"] == kind]


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


def test_demo_page_sends_its_token_in_the_join(server, open_page) -> None:
    gate = RecordingGate()
    on_reactor(setattr, server.hub, "gate", gate)
    base = f"http://127.0.0.1:{server.port}/"
    connect = f"ws://127.0.0.1:{server.port}/connect?resume=1"
    plain = open_page(f"{base}?room=t&token=abc", RECORD_SOCKETS)
    plain.client_id()
    # Characters that mean something in a URL arrive as they were, from a fragment too.
    token = "a b&c=d/é+?#"
    odd = open_page(f"{base}?room=t#token=a%20b%26c%3Dd%2F%C3%A9%2B%3F%23", RECORD_SOCKETS)
    odd.client_id()
    assert wait_for(lambda: gate.tokens == ["abc", token], WAIT), gate.tokens
    for page, sent_token in ((plain, "abc"), (odd, token)):
        # In the join payload, not on the connect URL.
        assert page.page.evaluate("window.socketUrls") == [connect]
        assert sent(page, "join") == [{"room_id": "t", "token": sent_token}]
        # Gone from the address bar.
        assert page.page.evaluate("location.href") == f"{base}?room=t"
        assert page.page.url == f"{base}?room=t"
        assert "token" not in page.page.input_value("#room-link")
    # Without ice_servers in joined, peer connections get no ICE servers.
    plain.wait_meshed({odd.client_id()})
    assert configured(plain) == {odd.client_id(): []}
    # A fragment's room moves to ?room= when its token goes.
    moved = open_page(f"{base}?trickle=1#room=v&token=xyz", RECORD_SOCKETS)
    moved.client_id()
    assert sent(moved, "join") == [{"room_id": "v", "token": "xyz"}]
    assert moved.page.evaluate("location.href") == f"{base}?trickle=1&room=v"
    # A page without a token joins without one, its #room untouched.
    bare = open_page(f"{base}#u", RECORD_SOCKETS)
    bare.client_id()
    assert bare.page.evaluate("window.socketUrls") == [connect]
    assert sent(bare, "join") == [{"room_id": "u"}]
    assert bare.page.evaluate("location.href") == f"{base}#u"
    assert wait_for(lambda: gate.tokens == ["abc", token, "xyz", None], WAIT), gate.tokens
    # And from the history: replaced, no entry added (a page that had no
    # token to remove has as many).
    lengths = {p.page.evaluate("history.length") for p in (plain, odd, moved, bare)}
    assert len(lengths) == 1, lengths


def test_every_rejoin_carries_the_clients_current_token(make_server, open_page) -> None:
    server = make_server(resume_grace=0)  # a reconnect that rejoins, not a resume
    gate = RecordingGate()
    on_reactor(setattr, server.hub, "gate", gate)
    page = open_page(f"http://127.0.0.1:{server.port}/?room=r&token=first", RECORD_SOCKETS)
    old_id = page.client_id()
    assert wait_for(lambda: gate.tokens == ["first"], WAIT), gate.tokens
    # A fresh token before the reconnect: the rejoin sends it.
    page.page.evaluate("window.demo.client.token = 'fresh'")
    on_reactor(lambda: server.connection(old_id).dropConnection(abort=True))
    page.page.wait_for_function(
        "old => window.demo.client.id && window.demo.client.id !== old", arg=old_id, timeout=WAIT_MS
    )
    assert wait_for(lambda: gate.tokens == ["first", "fresh"], WAIT), gate.tokens
    assert sent(page, "join") == [
        {"room_id": "r", "token": "first"},
        {"room_id": "r", "token": "fresh"},
    ]
    connect = f"ws://127.0.0.1:{server.port}/connect?resume=1"
    assert page.page.evaluate("window.socketUrls") == [connect] * 2


# Runs in the page: connectUrl's URL for a token, and a client that presents the
# token that way only (no token option).
_URL_TOKEN = """async (token) => {
    const { SignalingClient, connectUrl } = await import("/static/signaling-client.js");
    const url = connectUrl(location.href, { token });
    const client = new SignalingClient(url, { room: "by-url" });
    const joined = new Promise((resolve) => client.addEventListener("joined", resolve));
    client.connect();
    await joined;
    client.close();
    return url;
}"""


def test_connect_url_still_carries_a_token(server, open_page) -> None:
    gate = RecordingGate()
    on_reactor(setattr, server.hub, "gate", gate)
    page = open_page(f"http://127.0.0.1:{server.port}/?room=w#x", RECORD_SOCKETS)
    page.client_id()
    token = "a b&c=d/é+?#"
    assert page.page.evaluate(_URL_TOKEN, token) == (
        f"ws://127.0.0.1:{server.port}/connect?token=a%20b%26c%3Dd%2F%C3%A9%2B%3F%23"
    )
    assert gate.tokens == [None, token]
    assert sent(page, "join") == [{"room_id": "w"}, {"room_id": "by-url"}]


RECORD_DISCONNECTS = RECORD_SOCKETS + record_events("disconnected")


def test_refused_token_is_shown_and_not_retried(server, open_page) -> None:
    gate = RecordingGate(Unauthorized("token expired"))
    on_reactor(setattr, server.hub, "gate", gate)
    page = open_page(f"http://127.0.0.1:{server.port}/?room=t&token=old", RECORD_DISCONNECTS)
    page.page.get_by_text("Error: token expired").wait_for(timeout=WAIT_MS)
    page.page.wait_for_function("() => window.clientEvents.length > 0", timeout=WAIT_MS)
    assert page.page.evaluate("window.clientEvents") == [
        {
            "type": "disconnected",
            "code": 4001,
            "reason": "unauthorized",
            "retryIn": None,
            "resuming": False,
        }
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
