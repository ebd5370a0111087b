"""``twistd signaling``: command-line options and the service they build."""

from __future__ import annotations

import math
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.endpoints import quoteStringArgument
from twisted.python import usage

from . import __version__
from .listen import listening_service, plan_listeners
from .messages import DEFAULT_MAX_ROOM_ID_LENGTH
from .protocol import SignalingFactory
from .registry import RoomRegistry
from .reload import CertificateReloader
from .shutdown import GracefulShutdown
from .systemd import SystemdNotifier
from .tls import MINIMUM_VERSIONS, ReloadableServerTLS, TLSConfigError
from .web import build_site

DEFAULT_PORT = 5000
DEFAULT_INTERFACE = "0.0.0.0"


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"{value} is not a positive integer")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"{value} is negative")
    return number


def _seconds(value: str) -> float:
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{value} is not a number of seconds >= 0")
    return number


def _tls_version(value: str) -> str:
    if value not in MINIMUM_VERSIONS:
        raise ValueError(f"{value} is not one of {', '.join(MINIMUM_VERSIONS)}")
    return value


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve WebRTC signaling (singo-compatible) over WebSocket at ws://INTERFACE:PORT/connect "
        "(wss:// with --tls-cert/--tls-key)."
    )

    optParameters = [
        ["port", "p", None, f"TCP port to listen on [default: {DEFAULT_PORT}].", int],
        [
            "interface",
            "i",
            None,
            f"Address to listen on (:: for all IPv6 and IPv4) [default: {DEFAULT_INTERFACE}].",
        ],
        ["tls-cert", None, None, "PEM certificate chain (certbot's fullchain.pem): serve wss."],
        ["tls-key", None, None, "PEM private key of --tls-cert (certbot's privkey.pem)."],
        [
            "tls-min-version",
            None,
            None,
            "Oldest TLS version accepted: 1.2 or 1.3 [default: 1.2].",
            _tls_version,
        ],
        [
            "tls-reload-interval",
            None,
            60.0,
            "Seconds between checks for a changed --tls-cert/--tls-key (0: only on SIGHUP).",
            _seconds,
        ],
        [
            "trust-proxy",
            None,
            0,
            "Number of reverse proxies in front whose X-Forwarded-For gives the client address.",
            _non_negative_int,
        ],
        [
            "shutdown-timeout",
            None,
            5.0,
            "Seconds to wait on SIGTERM/SIGINT for clients to close before dropping them.",
            _seconds,
        ],
        [
            "max-message-size",
            None,
            64 * 1024,
            "Largest accepted WebSocket message, in bytes; larger ones close "
            "the connection with 1009.",
            _positive_int,
        ],
        [
            "max-room-id-length",
            None,
            DEFAULT_MAX_ROOM_ID_LENGTH,
            "Longest accepted room id, in characters.",
            _positive_int,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["listen-tls"] = []

    def opt_listen(self, description: str) -> None:
        """Serve ws on this Twisted endpoint (tcp6:5000, tcp:5000:interface=127.0.0.1,
        unix:PATH, systemd:domain=INET:name=NAME, ssl:...); repeatable; replaces
        --port/--interface."""
        self["listen"].append(description)

    def opt_listen_tls(self, description: str) -> None:
        """Serve wss on this endpoint with --tls-cert/--tls-key; repeatable."""
        self["listen-tls"].append(description)

    def opt_addr(self, value: str) -> None:
        """Alias of --interface."""
        self["interface"] = value

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"signaling {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        if self["port"] is not None and not 0 <= self["port"] <= 65535:
            raise usage.UsageError(f"--port must be between 0 and 65535, not {self['port']}")
        if self["interface"] == "":
            raise usage.UsageError("--interface must not be empty")
        self["listeners"] = plan_listeners(self, self.listen_description)
        self["tls"] = None
        if any(listener.tls for listener in self["listeners"]):
            try:
                self["tls"] = ReloadableServerTLS(
                    self["tls-cert"],
                    self["tls-key"],
                    MINIMUM_VERSIONS[self["tls-min-version"] or "1.2"],
                )
            except TLSConfigError as e:
                raise usage.UsageError(f"--tls-cert/--tls-key: {e}") from None

    @property
    def listen_description(self) -> str:
        """The Twisted endpoint description for --port/--interface."""
        port = DEFAULT_PORT if self["port"] is None else self["port"]
        interface = self["interface"] or DEFAULT_INTERFACE
        return f"tcp:{port}:interface={quoteStringArgument(interface)}"


def makeService(config: Options, reactor: Any = None) -> MultiService:
    """Build the signaling service from parsed options."""
    if reactor is None:
        from twisted.internet import reactor
    top = MultiService()
    factory = SignalingFactory(
        RoomRegistry(),
        max_message_size=config["max-message-size"],
        max_room_id_length=config["max-room-id-length"],
        trust_proxy=config["trust-proxy"],
    )
    # Services stop in reverse order: the listeners before the drain.
    GracefulShutdown(factory, config["shutdown-timeout"], reactor, reactor).setServiceParent(top)
    site = build_site(factory)
    for listener in config["listeners"]:
        listening_service(listener, site, config["tls"], reactor).setServiceParent(top)
    interval = config["tls-reload-interval"]
    CertificateReloader(config["tls"], interval, reactor, reactor).setServiceParent(top)
    SystemdNotifier(reactor).setServiceParent(top)
    return top
