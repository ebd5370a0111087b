"""The HTTP side: a twisted.web site with the WebSocket endpoint at ``/connect``."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from .protocol import SignalingFactory

WEBSOCKET_PATH = b"connect"


class _Root(Resource):
    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()


class _ConnectResource(WebSocketResource):
    """The WebSocket endpoint; exactly ``/connect``, nothing below it."""

    def render(self, request: Request) -> Any:
        if request.postpath:
            return notFound().render(request)
        return super().render(request)


def build_site(factory: SignalingFactory) -> Site:
    """A site serving ``factory`` at ``/connect``; other paths answer 404."""
    root = _Root()
    root.putChild(WEBSOCKET_PATH, _ConnectResource(factory))
    site = Site(root)
    site.noisy = False
    return site
