"""The HTTP side: a twisted.web site with the WebSocket endpoint at ``/connect``."""

from __future__ import annotations

from autobahn.twisted.resource import WebSocketResource
from twisted.web.resource import Resource
from twisted.web.server import Site

from .protocol import SignalingFactory

WEBSOCKET_PATH = b"connect"


def build_site(factory: SignalingFactory) -> Site:
    """A site serving ``factory`` at ``/connect``; other paths answer 404."""
    root = Resource()
    root.putChild(WEBSOCKET_PATH, WebSocketResource(factory))
    site = Site(root)
    site.noisy = False
    return site
