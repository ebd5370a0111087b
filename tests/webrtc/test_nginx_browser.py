"""The demo in Chromium through the README's nginx recipe: the page over
HTTPS from nginx, its WebSocket over wss through nginx to the server's unix
socket."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ..nginx_recipe import Deployment, deployment
from .peers import DemoPage

pytestmark = pytest.mark.webrtc


@pytest.fixture
def site() -> Iterator[Deployment]:
    with deployment("--log-level", "debug") as running:
        yield running


def test_two_pages_through_nginx_see_each_other(chromium: Any, site: Deployment) -> None:
    # The test CA is not in Chromium's store; the certificate is otherwise valid.
    context = chromium.new_context(ignore_https_errors=True)
    try:
        url = f"https://localhost:{site.port}/?room=behind-nginx"
        pages = []
        for _ in range(2):
            page = context.new_page()
            demo = DemoPage(page)
            page.goto(url)
            pages.append(demo)
        first, second = pages
        first_id, second_id = first.client_id(), second.client_id()
        first.wait_meshed({second_id})
        second.wait_meshed({first_id})
        # Each page's socket went through nginx: the server saw nginx's
        # forwarded client address, never its own unix socket's.
        for client_id in (first_id, second_id):
            site.server.wait_for(rf"connect {client_id} from 127\.0\.0\.1$")
        assert page.evaluate("location.protocol") == "https:"
        errors = [error for demo in pages for error in demo.page_errors]
        assert not errors, f"uncaught errors in the page: {errors}"
    finally:
        context.close()
