"""Chromium over the built-in TLS: the demo page over https://, its WebSocket
over wss://, and two pages that see each other's video.

Browsers offer ALPN (h2, http/1.1) in every TLS handshake; this is the
client whose handshake a Python client with a default context does not
reproduce.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from bench.twistd import twistd

from ..certs import CertificateAuthority
from .peers import WAIT_MS, DemoPage

pytestmark = pytest.mark.webrtc


@pytest.mark.parametrize("listener", ["tls-cert", "ssl-endpoint"])
def test_two_pages_over_https_and_wss_see_each_other(
    listener: str, tmp_path: Path, chromium: Any
) -> None:
    ca = CertificateAuthority()
    cert, key = ca.write_server(tmp_path / "live", "browser-test")
    if listener == "tls-cert":
        args = ["--interface", "127.0.0.1", "--port", "0", "--tls-cert", str(cert),
                "--tls-key", str(key)]  # fmt: skip
    else:
        args = ["--listen", f"ssl:0:interface=127.0.0.1:certKey={cert}:privateKey={key}"]
    # The test CA is not in Chromium's store: accept the certificate, as a
    # user would for a self-signed one; the TLS handshake itself is real.
    context = chromium.new_context(
        ignore_https_errors=True, viewport={"width": 1280, "height": 720}
    )
    with twistd(tmp_path, *args) as server:
        url = f"https://127.0.0.1:{server.port}/?room=tls"
        pages: list[DemoPage] = []
        try:
            sockets: list[str] = []
            for _ in range(2):
                page = context.new_page()
                page.on("websocket", lambda ws: sockets.append(ws.url))
                pages.append(DemoPage(page))
                response = page.goto(url, timeout=WAIT_MS)
                assert response is not None and response.status == 200
                assert response.security_details() is not None  # served over TLS
            first, second = pages
            first_id, second_id = first.client_id(), second.client_id()
            first.wait_meshed({second_id})
            second.wait_meshed({first_id})
            assert len(sockets) == 2
            connect = rf"wss://127\.0\.0\.1:{server.port}/connect\?resume=1"
            assert all(re.fullmatch(connect, s) for s in sockets)
            assert not [e for demo in pages for e in demo.page_errors]
        finally:
            context.close()
