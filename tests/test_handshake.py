"""The one-pass reading of plain handshakes (signaling.wire.handshake) answers
every request exactly as Autobahn's own handshake does."""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from signaling.wire import compat
from signaling.wire.compat import FastPaths
from signaling.wire.handshake import plain_upgrade

from .conftest import TIMEOUT, RunningServer, wait_for

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ALLOWED = "https://app.example.com"
BROWSER = (
    "GET /connect?room=a HTTP/1.1\r\n"
    "Host: signaling.example.com\r\n"
    "Connection: Upgrade\r\n"
    "Pragma: no-cache\r\n"
    "Upgrade: websocket\r\n"
    f"Origin: {ALLOWED}\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "User-Agent: Mozilla/5.0\r\n"
    f"Sec-WebSocket-Key: {KEY}\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
)


def head(text: str) -> bytes:
    return text.rstrip("\r\n").encode("latin-1")


def test_a_browsers_request_is_plain() -> None:
    upgrade = plain_upgrade(head(BROWSER))
    assert upgrade is not None
    assert (upgrade.host, upgrade.key, upgrade.origin, upgrade.query) == (
        "signaling.example.com",
        KEY,
        ALLOWED,
        "room=a",
    )
    assert upgrade.extensions == "permessage-deflate; client_max_window_bits"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("GET /connect?room=a HTTP/1.1", "POST /connect HTTP/1.1"),
        ("GET /connect?room=a HTTP/1.1", "GET /connect HTTP/1.0"),
        ("GET /connect?room=a HTTP/1.1", "GET /connect#top HTTP/1.1"),
        ("GET /connect?room=a HTTP/1.1", "GET /connect/x HTTP/1.1"),
        ("Host: signaling.example.com\r\n", ""),
        ("Host: signaling.example.com", "Host: a\r\nHost: b"),
        ("Host: signaling.example.com", "Host: signaling.example.com:http"),
        ("Upgrade: websocket", "Upgrade: h2c"),
        ("Connection: Upgrade", "Connection: keep-alive"),
        ("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
        (f"Sec-WebSocket-Key: {KEY}", "Sec-WebSocket-Key: short=="),
        (f"Sec-WebSocket-Key: {KEY}", f"Sec-WebSocket-Key: {KEY[:-2]}AA"),
        (f"Sec-WebSocket-Key: {KEY}", f"Sec-WebSocket-Key: !{KEY[1:]}"),
        ("Pragma: no-cache", "Sec-WebSocket-Protocol: chat"),
        ("Pragma: no-cache", "a line without a colon"),
    ],
)
def test_anything_else_is_left_to_autobahn(old: str, new: str) -> None:
    assert old in BROWSER
    assert plain_upgrade(head(BROWSER.replace(old, new))) is None


# -- the same answers as Autobahn, on real servers -----------------------------


def exchange(port: int, request: bytes, while_open: Callable[[], Any]) -> tuple[bytes, Any]:
    """Send ``request``; return the response (a 101 with the first frame
    after it, another status with its body, or what came before the
    connection ended) and what ``while_open`` returned, called once the
    response is in, before this side closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(request)
        data = b""
        while not _complete(data):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                data += b"<reset>"
                break
            if not chunk:
                data += b"<closed>"
                break
            data += chunk
        return data, while_open()


def _complete(data: bytes) -> bool:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    body = data[end + 4 :]
    if data.startswith(b"HTTP/1.1 101 "):
        return len(body) >= 2 and len(body) >= 2 + body[1]
    if re.search(rb"(?im)^transfer-encoding: *chunked", data[:end]):
        return body.endswith(b"0\r\n\r\n")
    length = re.search(rb"(?im)^content-length: *(\d+)", data[:end])
    return length is not None and len(body) >= int(length.group(1))


_ID = re.compile(rb'"client_id":"[A-Za-z0-9_-]{22}"')
_STATE = (
    "peer",
    "http_status_line",
    "http_headers",
    "http_request_uri",
    "http_request_path",
    "http_request_params",
    "http_request_host",
    "websocket_version",
    "websocket_protocols",
    "websocket_origin",
    "websocket_extensions",
    "websocket_protocol_in_use",
    "websocket_extensions_in_use",
)


def answer(server: RunningServer, request: bytes) -> tuple[bytes, dict[str, Any] | None]:
    """The server's answer (client id masked) and, if it opened, the
    opened connection's view of the request."""
    before = set(server.hub.sessions)

    def opened() -> dict[str, Any] | None:
        new = [s.wire for cid, s in list(server.hub.sessions.items()) if cid not in before]
        if not new:
            return None
        state = {name: getattr(new[0], name) for name in _STATE}
        state["peer"] = state["peer"].rsplit(":", 1)[0]  # the client's port differs
        return state

    response, state = exchange(server.port, request, opened)
    assert wait_for(lambda: not server.hub.sessions)  # closed: next request alone
    return _ID.sub(b'"client_id":"ID"', response), state


@pytest.fixture
def servers(make_server: Callable[..., RunningServer]) -> tuple[RunningServer, RunningServer]:
    """The same settings twice: one-pass handshakes on, and off."""
    plain, autobahn = (make_server(trust_proxy=1, allowed_origins=(ALLOWED,)) for _ in range(2))
    autobahn.factory.fast_paths = FastPaths(handshake=False)
    return plain, autobahn


_DATE = re.compile(rb"(?im)^date: [^\r]*")


def assert_same_answer(servers: tuple[RunningServer, RunningServer], request: bytes) -> bytes:
    """Both servers answer ``request`` alike; return the status line."""
    plain, autobahn = servers
    (response, state), expected = answer(plain, request), answer(autobahn, request)
    assert (_DATE.sub(b"Date: -", response), state) == (
        _DATE.sub(b"Date: -", expected[0]),
        expected[1],
    )
    return response.split(b"\r\n", 1)[0]


def test_browser_handshake_is_answered_as_autobahn_would(servers) -> None:
    request = (BROWSER + "X-Forwarded-For: 198.51.100.1, 203.0.113.7\r\n\r\n").encode()
    response, state = answer(servers[0], request)
    assert response.startswith(b"HTTP/1.1 101 ")
    assert state is not None and state["peer"] == "203.0.113.7"
    assert (response, state) == answer(servers[1], request)


def test_plain_requests_take_the_one_pass_path(servers, monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparisons above compare two paths, not Autobahn with itself."""
    opened: list[Any] = []
    original = compat.open_connection

    def spy(protocol: Any, response: str) -> None:
        opened.append(protocol.factory)
        original(protocol, response)

    monkeypatch.setattr(compat, "open_connection", spy)
    assert_same_answer(servers, (BROWSER + "\r\n").encode())
    assert opened == [servers[0].factory]  # the plain server, once; never the other


@pytest.mark.parametrize(
    "request_text",
    [
        BROWSER.replace(ALLOWED, "") + "\r\n",
        BROWSER.replace(f"Origin: {ALLOWED}", "Origin:   ") + "\r\n",
        BROWSER.replace("signaling.example.com\r\n", "signaling.example.com:\xb2\r\n") + "\r\n",
        BROWSER.replace("signaling.example.com\r\n", "example.com:" + "1" * 5000 + "\r\n") + "\r\n",
        "\r\n\r\n",
        BROWSER.replace("\r\n", "\n") + "\n",
        BROWSER.replace("\r\n", "\n") + "\r\n",
        BROWSER.replace("Pragma: no-cache", "Pragma: no\x0bcache") + "\r\n",
        BROWSER.replace("Pragma: no-cache", "Pragma: no\x0ccache") + "\r\n",
        BROWSER.replace("Pragma: no-cache", "Pragma: no\x85cache") + "\r\n",
        BROWSER.replace(f"Sec-WebSocket-Key: {KEY}\r\n", "").replace(
            "Pragma: no-cache", f"Pragma: no-cache\rSec-WebSocket-Key: {KEY}"
        )
        + "\r\n",
        BROWSER.replace(f"Sec-WebSocket-Key: {KEY}\r\n", "").replace(
            "Pragma: no-cache", f"Pragma: no-cache\x85Sec-WebSocket-Key: {KEY}"
        )
        + "\r\n",
        BROWSER.replace("Pragma: no-cache", "Pragma : no-cache") + "\r\n",
        BROWSER.replace("Pragma: no-cache", " Pragma: no-cache") + "\r\n",
        BROWSER.replace(f"Origin: {ALLOWED}", f"Origin: \xa0{ALLOWED}\xa0") + "\r\n",
        BROWSER.replace("GET /connect?room=a", "GET\t/connect?room=a") + "\r\n",
    ],
    ids=[
        "empty-origin",
        "blank-origin",
        "unicode-port",
        "long-port",
        "empty",
        "bare-lf",
        "bare-lf-then-crlf",
        "vertical-tab",
        "form-feed",
        "nel",
        "key-after-bare-cr",
        "key-after-nel",
        "space-before-colon",
        "folded-line",
        "nbsp-around-origin",
        "tab-in-request-line",
    ],
)
def test_edge_cases_are_answered_as_autobahn_would(servers, request_text: str) -> None:
    assert_same_answer(servers, request_text.encode("latin-1"))


def test_failing_admission_check_is_answered_as_autobahn_would(
    servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(origin: str | None) -> bool:
        raise RuntimeError("policy store unavailable")

    for server in servers:
        monkeypatch.setattr(server.hub.origins, "allows", broken)
    request = (BROWSER + "\r\n").encode()
    response, state = answer(servers[0], request)
    assert response.startswith(b"HTTP/1.1 500 ") and state is None
    assert (response, state) == answer(servers[1], request)


def test_refusal_by_policy_is_answered_as_autobahn_would(servers) -> None:
    request = (BROWSER.replace(ALLOWED, "https://evil.example") + "\r\n").encode()
    response, state = answer(servers[0], request)
    assert response.startswith(b"HTTP/1.1 403 ") and state is None
    assert (response, state) == answer(servers[1], request)


def test_frame_sent_with_the_handshake_is_read(servers) -> None:
    for server in servers:
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            join = b'{"type":"join","payload":{"room_id":"r"}}'
            frame = bytes((0x81, 0x80 | len(join))) + b"\0\0\0\0" + join
            sock.sendall((BROWSER + "\r\n").encode() + frame)
            assert wait_for(lambda server=server: any(s.room for s in server.hub.sessions.values()))


def mostly(valid: str, *others: str) -> st.SearchStrategy[str]:
    """``valid`` three times in four, else one of ``others``."""
    return st.one_of(st.just(valid), st.just(valid), st.just(valid), st.sampled_from(others))


def header(name: str, valid: str, *others: str) -> st.SearchStrategy[list[str]]:
    """The header once (mostly with ``valid``), or absent, or twice; its
    name spelled as usual, in lower case or in upper case."""
    spelled = st.sampled_from([name, name, name.lower(), name.upper()])
    line = st.builds(lambda n, v: f"{n}: {v}", spelled, mostly(valid, *others))
    count = st.sampled_from([1, 1, 1, 1, 1, 0, 2])
    return count.flatmap(lambda n: st.lists(line, min_size=n, max_size=n))


def optional(name: str, *values: str) -> st.SearchStrategy[list[str]]:
    """A header that is usually absent."""
    line = st.builds(lambda v: f"{name}: {v}", st.sampled_from(values))
    return st.one_of(st.just([]), st.just([]), line.map(lambda x: [x]))


header_lines = st.tuples(
    header(
        "Host",
        "example.com:5000",
        "example.com",
        "example.com:x",
        "example.com:\xb2",
        "example.com:" + "1" * 5000,
        "[::1]",
        "[::1]:80",
        "\xa0example.com\x85",
        "",
    ),
    header("Upgrade", "websocket", "WebSocket", "h2c, websocket", "h2c", ""),
    header("Connection", "Upgrade", "keep-alive, Upgrade", "upgrade", "close"),
    header("Sec-WebSocket-Version", "13", "8", "12", "013", "x"),
    header("Sec-WebSocket-Key", KEY, "short==", KEY[:-2] + "AA", "!" + KEY[1:], ""),
    optional(
        "Origin",
        ALLOWED,
        "https://evil.example",
        "null",
        "file:///x",
        "http://",
        "x",
        "",
        " ",
        "\xa0",
        f"\xa0{ALLOWED}",
    ),
    optional("Sec-WebSocket-Protocol", "chat", "a, a", ""),
    optional(
        "Sec-WebSocket-Extensions",
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; bogus",
        "x-webkit-deflate-frame",
        "",
    ),
    optional("X-Forwarded-For", "203.0.113.7", "198.51.100.1, 203.0.113.7", ""),
    st.sampled_from([[], [], ["User-Agent: Mozilla/5.0"], ["no colon here"], [":empty name"]]),
    # What str.splitlines() and str.strip() take for line breaks or
    # spaces, and HTTP does not: a header hidden behind one, or a bad one.
    st.one_of(
        st.just([]),
        st.just([]),
        st.builds(
            lambda sep, hidden: [f"X-Note: a{sep}{hidden}"],
            st.sampled_from(["\x0b", "\x0c", "\x1c", "\x1e", "\x85", "\r", "\n", "\x00", "\x7f"]),
            st.sampled_from(["b", f"Sec-WebSocket-Key: {KEY}", "Host: example.com"]),
        ),
        st.sampled_from(
            [
                [" folded: x"],
                ["\tfolded"],
                ["Bad Name: x"],
                ["X-Note : x"],
                ["X-Note:\xa0x\xa0"],
                ["X-Note:\tx\t"],
            ]
        ),
    ),
).map(lambda groups: [line for group in groups for line in group])


def request(method: str, target: str, version: str, lines: list[str]) -> bytes:
    text = f"{method} {target} {version}\r\n" + "".join(f"{line}\r\n" for line in lines)
    return (text + "\r\n").encode("latin-1")


requests = st.builds(
    request,
    mostly("GET", "POST", "get", "\tGET"),
    mostly("/connect", "/connect?room=a&x=1", "/connect?x#f", "/connect#f", "/connect;p"),
    mostly("HTTP/1.1", "HTTP/1.0", "HTTP/2", "HTTP/1.1\xa0", "HTTP/1.1\x0b"),
    header_lines.flatmap(st.permutations),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=requests)
def test_any_request_is_answered_as_autobahn_would(servers, request: bytes) -> None:
    event(assert_same_answer(servers, request).decode("latin-1"))  # what was covered


@pytest.mark.parametrize(
    ("chunks", "status"),
    [
        # A bare LF in a later piece is found there...
        ([b"GET /connect HTTP/1.1\r\nHost: a\r\n", b"Pragma: x\nUpgrade: websocket\r\n"], 400),
        # ...and so is a CR ending one piece that no LF follows...
        ([b"GET /connect HTTP/1.1\r\nHost: a\r", b"Upgrade: websocket\r\n"], 400),
        # ...while a CRLF split between two pieces is no bare line end.
        ([b"GET /connect HTTP/1.1\r\nHost: a\r", b"\nPragma: x\r\n"], None),
    ],
    ids=["later-piece", "at-the-boundary", "split-crlf"],
)
def test_a_handshake_arriving_in_pieces_is_checked_piece_by_piece(
    server: RunningServer, chunks: list[bytes], status: int | None
) -> None:
    """Each piece is checked as it comes (not the whole head again each
    time), without missing a bare line end or taking a split CRLF for one."""
    first, second = chunks
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(first)
        sock.settimeout(0.3)  # the server reads the first piece alone, and waits
        with pytest.raises(TimeoutError):
            sock.recv(65536)
        sock.sendall(second)
        if status is None:
            with pytest.raises(TimeoutError):  # still waiting for the rest
                sock.recv(65536)
        else:
            sock.settimeout(TIMEOUT)
            answer = sock.recv(65536)
            assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer
