"""The README's "Behind nginx" recipe, followed as written, with real clients
through Debian's nginx: TLS at nginx, the server on a unix socket."""

from __future__ import annotations

import contextlib
import grp
import http.client
import json
import ssl
import stat
import urllib.request
from collections.abc import Iterator

import pytest
from websockets.sync.client import connect

from .conftest import TIMEOUT, Client
from .nginx_recipe import NGINX_USER, Deployment, deployment


@pytest.fixture(scope="module")
def site() -> Iterator[Deployment]:
    with deployment("--log-level", "debug") as running:
        yield running


def get(site: Deployment, path: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPSConnection(
        "127.0.0.1", site.port, context=site.client_context(), timeout=TIMEOUT
    )
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        connection.close()


@contextlib.contextmanager
def wss(site: Deployment) -> Iterator[Client]:
    with connect(
        f"wss://localhost:{site.port}/connect",
        ssl=site.client_context(),
        proxy=None,
        open_timeout=TIMEOUT,
        close_timeout=1,
    ) as ws:
        tls = ws.socket
        assert isinstance(tls, ssl.SSLSocket)
        # The client offered h2 too; nginx (no http2 on the recipe's listen)
        # chose HTTP/1.1, which carries the WebSocket.
        assert tls.selected_alpn_protocol() == "http/1.1"
        yield Client(ws)


def test_websocket_clients_meet_through_nginx(site: Deployment) -> None:
    mark = site.server.mark()
    with wss(site) as a, wss(site) as b:
        a.join("through-nginx")
        assert b.join("through-nginx") == [a.id]
        assert a.expect("new-client") == {"client_id": b.id}
        a.offer(b.id, "v=0 offer")
        assert b.expect("offer") == {"client_id": a.id, "sdp": "v=0 offer"}
        # --trust-proxy 1: the address nginx saw, not the socket's "unix".
        site.server.wait_for(rf"connect {a.id} from 127\.0\.0\.1$", after=mark)
        site.server.wait_for(rf"connect {b.id} from 127\.0\.0\.1$", after=mark)


def test_demo_and_health_are_served(site: Deployment) -> None:
    status, headers, body = get(site, "/healthz")
    assert status == 200
    assert json.loads(body)["status"] == "ok"
    status, headers, body = get(site, "/?room=abc")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert b"static/demo.js" in body
    status, headers, body = get(site, "/static/signaling-client.js")
    assert status == 200
    assert b"export class SignalingClient" in body


@pytest.mark.parametrize("path", ["/metrics", "/metrics/", "//metrics", "/%6Detrics", "/metrics?x"])
def test_metrics_are_denied_through_nginx(site: Deployment, path: str) -> None:
    status, _, body = get(site, path)
    assert status == 403
    assert b"signaling_" not in body


def test_metrics_are_served_on_loopback(site: Deployment) -> None:
    url = f"http://127.0.0.1:{site.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        assert response.status == 200
        assert b"signaling_connections_open" in response.read()


def test_access_log_names_the_client_nginx_saw(site: Deployment) -> None:
    mark = site.server.mark()
    status, _, _ = get(site, "/healthz?from-access-log-test")
    assert status == 200
    site.server.wait_for(
        r'"127\.0\.0\.1" - - \[[^]]+\] "GET /healthz\?from-access-log-test HTTP/1\.1" 200 ',
        after=mark,
    )


def test_socket_belongs_to_nginx_group(site: Deployment) -> None:
    info = site.socket_path.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == grp.getgrnam(NGINX_USER).gr_gid
