"""The HTTP side: the WebSocket endpoint at ``/connect``, ``/healthz`` and ``/metrics``.

Unless turned off, the site also serves the demo page at ``/`` and the
browser client and the page's files under ``/static/``.
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import orjson
from autobahn.twisted.resource import WebSocketResource
from prometheus_client import CollectorRegistry
from twisted.internet.interfaces import IReactorTime, ITransport
from twisted.protocols.policies import ProtocolWrapper
from twisted.web import http
from twisted.web.iweb import IAccessLogFormatter
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site
from zope.interface import provider

from signaling import __version__
from signaling.core.clock import cancel
from signaling.core.rooms import HEALTHY
from signaling.logs import LogBudget
from signaling.web import metrics
from signaling.web.demo import (
    STATIC_PATH,
    StaticDirectory,
    StaticFileResource,
    load_static_files,
)
from signaling.wire import compat
from signaling.wire.addresses import forwarded_address, socket_address
from signaling.wire.admission import RETRY_AFTER, Admission
from signaling.wire.protocol import SignalingFactory

WEBSOCKET_PATH = b"connect"


class _Request(Request):
    """A request whose ``Server`` header is its site's ``server_header``
    (twisted.web's default, which names its version, if that is None)."""

    def render(self, resrc: IResource) -> None:
        server = getattr(self.site, "server_header", None)
        if server is not None:
            self.setHeader(b"server", server)
        super().render(resrc)


class _Root(Resource):
    page: IResource | None = None

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"" and self.page is not None and not request.postpath:
            return self.page
        return notFound()


class _ConnectResource(WebSocketResource):
    """The WebSocket endpoint; exactly ``/connect``, nothing below it."""

    def __init__(self, factory: SignalingFactory) -> None:
        super().__init__(factory)
        self.signaling_factory = factory

    def render(self, request: Request) -> Any:
        if request.postpath:
            return notFound().render(request)
        # The request is handed to a new protocol whole; it must not route
        # it back here (processHandshake routes only while http_site is set).
        factory = self.signaling_factory
        site, factory.http_site = factory.http_site, None
        try:
            result = super().render(request)
        finally:
            factory.http_site = site
        # The connection now belongs to the WebSocket protocol. The HTTP
        # channel and request still refer to each other; untie them so they
        # are freed at once instead of waiting for the cyclic GC.
        channel = request.channel
        if channel is not None:
            _cancel_deadline(channel)
            requests = getattr(channel, "requests", None)  # HTTP/1.1 channels only
            if requests is not None:
                requests.clear()
        request.channel = None  # type: ignore[assignment]
        return result


class HealthResource(Resource):
    """``/healthz``: 200 with a JSON summary while serving, 503 while draining;
    while the rooms are degraded (Redis unreachable), ``degraded`` with 200,
    or 503 with --degraded-503; a ``worker`` of ``--workers`` adds its number
    and process id."""

    isLeaf = True

    def __init__(self, factory: SignalingFactory, worker: int | None = None) -> None:
        super().__init__()
        self.factory = factory
        self.worker = worker

    def render_GET(self, request: Request) -> bytes:
        if request.postpath:
            return cast(bytes, notFound().render(request))
        factory = self.factory
        hub = factory.hub
        rooms = hub.rooms.health()
        if hub.draining:
            status, code = "draining", 503
        elif not rooms.ok:
            status, code = "degraded", hub.degraded_status
        else:
            status, code = "ok", 200
        request.setResponseCode(code)
        if code == 503:
            request.setHeader(b"retry-after", str(RETRY_AFTER).encode())
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        health: dict[str, Any] = {
            "status": status,
            "uptime": round(hub.uptime(), 3),
            "rooms": hub.rooms.room_count,
            "clients": len(hub.sessions),
        }
        if rooms is not HEALTHY:  # shared rooms: say how they are
            health["backplane"] = rooms.detail
            health["node"] = rooms.node
        if not factory.hide_version:
            health["version"] = __version__
        if self.worker is not None:
            health["worker"] = self.worker
            health["pid"] = os.getpid()
        return orjson.dumps(health)


class MetricsResource(Resource):
    """``/metrics`` in the Prometheus text format."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Request) -> bytes:
        if request.postpath:
            return cast(bytes, notFound().render(request))
        request.setHeader(b"content-type", metrics.CONTENT_TYPE.encode())
        request.setHeader(b"cache-control", b"no-store")
        return metrics.render(self.registry)


class _AccessLoggedSite(Site):
    """A site whose access log shows clients as the rest of the log does,
    within a budget of lines a minute."""

    requestFactory = _Request
    #: The Server header of responses; None leaves twisted.web's.
    server_header: bytes | None = None

    def __init__(
        self, root: Resource, trust_proxy: int, access_log_budget: LogBudget | None
    ) -> None:
        super().__init__(root, logFormatter=access_log_formatter(trust_proxy))
        self.noisy = False
        self.access_log_budget = access_log_budget

    def log(self, request: http.Request) -> None:
        """One access log line per request, within ``access_log_budget``."""
        if self.access_log_budget is None or self.access_log_budget.allow("HTTP access log"):
            super().log(request)


class SignalingSite(_AccessLoggedSite):
    """The HTTP side of the server: a site whose connections must have become WebSockets within
    ``deadline`` seconds of connecting, or are closed.

    twisted.web's own timeout restarts with every byte received, so a client
    sending its request a byte at a time could hold a connection for hours.
    Plain HTTP requests (health checks, the demo's files) fit well inside the
    deadline; their keep-alive connections end with it.
    """

    def __init__(
        self,
        root: Resource,
        clock: IReactorTime,
        deadline: float,
        admission: Admission | None = None,
        *,
        trust_proxy: int = 0,
        untrusted_forwarding: Callable[[], None] | None = None,
        access_log_budget: LogBudget | None = None,
    ) -> None:
        super().__init__(root, trust_proxy, access_log_budget)
        self.clock = clock
        self.deadline = deadline
        self.admission = admission
        self.trust_proxy = trust_proxy
        self.untrusted_forwarding = untrusted_forwarding

    def getResourceFor(self, request: Request) -> IResource:
        resource = super().getResourceFor(request)
        # (/connect counts when its handshake is read: SignalingProtocol.onConnect)
        if (
            not self.trust_proxy
            and self.untrusted_forwarding is not None
            and not isinstance(resource, _ConnectResource)
        ):
            headers = request.requestHeaders
            if headers.hasHeader(b"x-forwarded-for") or headers.hasHeader(b"forwarded"):
                self.untrusted_forwarding()
        return resource

    def buildProtocol(self, addr: Any) -> Any:
        return self._with_deadline(super().buildProtocol(addr), self.deadline)

    def _with_deadline(
        self, protocol: Any, seconds: float, release: Callable[[], None] | None = None
    ) -> Any:
        if self.deadline > 0:
            channel = compat.http_channel(protocol)
            channel.signaling_deadline = self.clock.callLater(
                max(seconds, 0), _past_deadline, channel, release
            )
        return protocol

    def take_over(self, transport: ITransport, data: bytes, elapsed: float) -> None:
        """Serve a connection that the WebSocket protocol read first (its
        request is not for ``/connect``): an HTTP channel replaces that
        protocol on ``transport``, reads ``data``, and gets what is left of
        the deadline."""
        # Until then it counts as pending (signaling.wire.admission); a WebSocket
        # it upgrades to takes the count over.
        release = partial(self.admission.release, transport) if self.admission else None
        protocol = self._with_deadline(
            Site.buildProtocol(self, transport.getPeer()), self.deadline - elapsed, release
        )
        if release is not None:
            protocol.connectionLost = _ReleasingConnectionLost(protocol, release)
        if isinstance(transport, ProtocolWrapper):  # TLS
            transport.wrappedProtocol = protocol
        else:
            cast(Any, transport).protocol = protocol
        protocol.makeConnection(transport)
        protocol.dataReceived(data)


class _ReleasingConnectionLost:
    """An HTTP protocol's ``connectionLost`` that first ``release``s its
    connection from the pending count, then is the class's own again.

    It refers to the protocol weakly: a protocol that never loses its
    connection (it was handed to a WebSocket) must not keep itself alive.
    """

    def __init__(self, protocol: Any, release: Callable[[], None]) -> None:
        self.protocol = weakref.ref(protocol)
        self.release = release

    def __call__(self, reason: Any) -> None:
        self.release()
        protocol = self.protocol()
        if protocol is not None:
            del protocol.connectionLost
            protocol.connectionLost(reason)


def request_client_address(request: Request, trust_proxy: int) -> str:
    """The client of an HTTP request, in the form the WebSocket side shows
    (signaling.wire.addresses): from X-Forwarded-For when ``trust_proxy`` proxies
    are trusted and it names one, else the connection's peer."""
    if trust_proxy:
        lines = request.requestHeaders.getRawHeaders(b"x-forwarded-for")
        if lines:
            # Every line, joined, as Autobahn gives them to the WebSocket side.
            forwarded = b",".join(lines)
            client = forwarded_address(forwarded.decode("iso-8859-1"), trust_proxy)
            if client is not None:
                return client[0]
    return socket_address(request.getClientAddress())[0]


def _log_field(value: bytes | str | None) -> str:
    """A value for a quoted field of the access log: no quote, backslash or
    control character can break the line."""
    if value is None:
        return "-"
    text = value.decode("iso-8859-1") if isinstance(value, bytes) else value
    return text.encode("unicode_escape").decode("ascii").replace('"', '\\"')


_TOKEN_IN_QUERY = re.compile(rb"([?&](?:resume_)?token=)[^&#]*")


def _without_tokens(uri: bytes | None) -> bytes | None:
    """``uri`` with the value of each ``token=`` and ``resume_token=`` of its
    query hidden: both are credentials, and the demo page's URL (and so its
    Referer) may carry a room token."""
    if uri is None or b"token=" not in uri:
        return uri
    return _TOKEN_IN_QUERY.sub(rb"\1REDACTED", uri)


def access_log_formatter(trust_proxy: int) -> IAccessLogFormatter:
    """The Combined Log Format, with the client address as
    :func:`request_client_address` finds it, and room tokens hidden."""

    @provider(IAccessLogFormatter)
    def format_line(timestamp: str, request: Request) -> str:
        return '"{}" - - {} "{} {} {}" {} {} "{}" "{}"'.format(
            _log_field(request_client_address(request, trust_proxy)),
            timestamp,
            _log_field(request.method),
            _log_field(_without_tokens(request.uri)),
            _log_field(request.clientproto),
            request.code,
            request.sentLength or "-",
            _log_field(_without_tokens(request.getHeader(b"referer"))),
            _log_field(request.getHeader(b"user-agent")),
        )

    return cast(IAccessLogFormatter, format_line)


def _past_deadline(channel: Any, release: Callable[[], None] | None) -> None:
    channel.signaling_deadline = None
    if release is not None:
        release()
    if channel.transport is not None:  # still HTTP: not handed to a WebSocket
        channel.transport.abortConnection()


def _cancel_deadline(channel: Any) -> None:
    cancel(getattr(channel, "signaling_deadline", None))
    channel.signaling_deadline = None


def build_site(
    factory: SignalingFactory,
    *,
    serve_metrics: bool = True,
    demo: bool = True,
    worker: int | None = None,
) -> SignalingSite:
    """The main site: ``/connect``, ``/healthz``, ``/metrics`` (unless moved)
    and, with ``demo``, the demo page at ``/`` and its files under
    ``/static/``. Other paths answer 404. ``worker`` is the number of the
    ``--workers`` process serving it, which ``/healthz`` names.
    """
    root = _Root()
    root.putChild(WEBSOCKET_PATH, _ConnectResource(factory))
    if demo:
        files = load_static_files()
        root.page = StaticFileResource(files.pop("index.html"))
        root.putChild(STATIC_PATH, StaticDirectory(files))
    root.putChild(b"healthz", HealthResource(factory, worker))
    if serve_metrics:
        root.putChild(b"metrics", MetricsResource(metrics.metrics_registry(factory)))
    site = SignalingSite(
        root,
        factory.clock,
        factory.limits.handshake_timeout,
        factory.admission,
        trust_proxy=factory.trust_proxy,
        untrusted_forwarding=factory.untrusted_forwarding,
        access_log_budget=factory.access_log_budget,
    )
    site.server_header = b"signaling" if factory.hide_version else None
    site.timeOut = factory.limits.handshake_timeout or None
    return site


def listening_factory(
    factory: SignalingFactory,
    *,
    serve_metrics: bool = True,
    demo: bool = True,
    worker: int | None = None,
) -> SignalingFactory:
    """``factory``, ready to listen with: a connection whose first request
    is the WebSocket handshake for ``/connect`` goes straight to the
    protocol; any other is handed to the site ``build_site`` makes with
    the same options."""
    factory.http_site = build_site(factory, serve_metrics=serve_metrics, demo=demo, worker=worker)
    return factory


def build_metrics_site(factory: SignalingFactory) -> Site:
    """A site with only ``/metrics``, for ``--metrics-listen``."""
    root = _Root()
    root.putChild(b"metrics", MetricsResource(metrics.metrics_registry(factory)))
    site = _AccessLoggedSite(root, factory.trust_proxy, factory.access_log_budget)
    site.server_header = b"signaling" if factory.hide_version else None
    return site
