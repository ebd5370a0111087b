"""The HTTP side: a twisted.web site with the WebSocket endpoint at ``/connect``.

Unless turned off, the site also serves the demo page at ``/`` and the
browser client and the page's files under ``/static/``.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from .demo import STATIC_PATH, StaticDirectory, StaticFileResource, load_static_files
from .protocol import SignalingFactory

WEBSOCKET_PATH = b"connect"


class _Root(Resource):
    page: IResource | None = None

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"" and self.page is not None and not request.postpath:
            return self.page
        return notFound()


class _ConnectResource(WebSocketResource):
    """The WebSocket endpoint; exactly ``/connect``, nothing below it."""

    def render(self, request: Request) -> Any:
        if request.postpath:
            return notFound().render(request)
        return super().render(request)


def build_site(factory: SignalingFactory, *, demo: bool = True) -> Site:
    """A site serving ``factory`` at ``/connect`` and, with ``demo``, the demo
    page at ``/`` and its files under ``/static/``; other paths answer 404."""
    root = _Root()
    root.putChild(WEBSOCKET_PATH, _ConnectResource(factory))
    if demo:
        files = load_static_files()
        root.page = StaticFileResource(files.pop("index.html"))
        root.putChild(STATIC_PATH, StaticDirectory(files))
    site = Site(root)
    site.noisy = False
    return site
