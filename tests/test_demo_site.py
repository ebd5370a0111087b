"""The demo page and static files, served by the real server over HTTP."""

from __future__ import annotations

import http.client
import re
from collections.abc import Callable, Iterator

import pytest
from twisted.internet import reactor

from signaling.web.site import listening_factory
from signaling.wire.protocol import SignalingFactory

from .conftest import RunningServer, on_reactor

Fetch = Callable[..., http.client.HTTPResponse]


def fetcher(port: int) -> Iterator[Fetch]:
    connections: list[http.client.HTTPConnection] = []

    def fetch(path: str, method: str = "GET", **headers: str) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connections.append(connection)
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        response.body = response.read()  # type: ignore[attr-defined]
        return response

    yield fetch
    for connection in connections:
        connection.close()


@pytest.fixture
def fetch(server: RunningServer) -> Iterator[Fetch]:
    yield from fetcher(server.port)


@pytest.fixture
def fetch_without_demo(reactor_thread: object) -> Iterator[Fetch]:
    serving = listening_factory(SignalingFactory(), demo=False)
    port = on_reactor(reactor.listenTCP, 0, serving, interface="127.0.0.1")
    yield from fetcher(port.getHost().port)
    on_reactor(port.stopListening)


@pytest.mark.parametrize("path", ["/", "/?room=standup", "/?room=a&trickle=0"])
def test_page_at_root_is_revalidated_on_every_load(fetch: Fetch, path: str) -> None:
    response = fetch(path)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["ETag"].startswith('"')
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert b'<script type="module" src="static/demo.js">' in response.body  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "content_type", "marker"),
    [
        ("signaling-client.js", "text/javascript", b"export class SignalingClient"),
        ("demo.js", "text/javascript", b'from "./signaling-client.js"'),
        ("demo.css", "text/css", b".tiles"),
    ],
)
def test_static_files_have_type_and_short_cache(
    fetch: Fetch, name: str, content_type: str, marker: bytes
) -> None:
    response = fetch(f"/static/{name}")
    assert response.status == 200
    assert response.headers["Content-Type"] == f"{content_type}; charset=utf-8"
    assert response.headers["Cache-Control"] == "public, max-age=300"
    assert int(response.headers["Content-Length"]) == len(response.body)  # type: ignore[attr-defined]
    assert marker in response.body  # type: ignore[attr-defined]
    assert "Content-Security-Policy" not in response.headers


def test_every_file_the_page_loads_is_served(fetch: Fetch) -> None:
    page = fetch("/").body  # type: ignore[attr-defined]
    paths = re.findall(rb'(?:src|href)="(static/[^"]+)"', page)
    assert len(paths) == 2
    for path in paths:
        assert fetch("/" + path.decode()).status == 200


def test_matching_etag_answers_304_without_body(fetch: Fetch) -> None:
    for path in ("/", "/static/signaling-client.js"):
        etag = fetch(path).headers["ETag"]
        again = fetch(path, **{"If-None-Match": etag})
        assert again.status == 304
        assert again.body == b""  # type: ignore[attr-defined]
        assert fetch(path, **{"If-None-Match": '"other"'}).status == 200


def test_head_sends_headers_only(fetch: Fetch) -> None:
    full = fetch("/static/demo.js")
    head = fetch("/static/demo.js", method="HEAD")
    assert head.status == 200
    assert head.body == b""  # type: ignore[attr-defined]
    assert head.headers["Content-Length"] == full.headers["Content-Length"]


def test_unknown_paths_and_methods_are_refused(fetch: Fetch) -> None:
    for path in ("/static", "/static/", "/static/demo.js/x", "/static/index.html", "/demo.js"):
        assert fetch(path).status == 404, path
    refused = fetch("/", method="POST")
    assert refused.status == 405
    assert set(refused.headers["Allow"].split(", ")) == {"GET", "HEAD"}


def test_no_demo_serves_only_the_endpoint(fetch_without_demo: Fetch) -> None:
    for path in ("/", "/?room=x", "/static/signaling-client.js", "/static/demo.css"):
        assert fetch_without_demo(path).status == 404
    assert fetch_without_demo("/connect").status == 426
