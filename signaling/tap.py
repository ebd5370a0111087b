"""``twistd signaling``: command-line options and the service they build."""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.endpoints import quoteStringArgument
from twisted.python import usage

from . import __version__
from .messages import DEFAULT_MAX_ROOM_ID_LENGTH
from .protocol import SignalingFactory
from .registry import RoomRegistry
from .web import build_site


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"{value} is not a positive integer")
    return number


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve WebRTC signaling (singo-compatible) over WebSocket at ws://INTERFACE:PORT/connect."
    )

    optFlags = [
        [
            "no-demo",
            None,
            "Serve only the WebSocket endpoint: no demo page at / or files under /static/.",
        ],
    ]

    optParameters = [
        ["port", "p", 5000, "TCP port to listen on.", int],
        ["interface", "i", "0.0.0.0", "Address to listen on (:: for all IPv6 and IPv4)."],
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

    def opt_addr(self, value: str) -> None:
        """Alias of --interface."""
        self["interface"] = value

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"signaling {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        if not 0 <= self["port"] <= 65535:
            raise usage.UsageError(f"--port must be between 0 and 65535, not {self['port']}")
        if not self["interface"]:
            raise usage.UsageError("--interface must not be empty")

    @property
    def listen_description(self) -> str:
        """The Twisted endpoint description for --port/--interface."""
        return f"tcp:{self['port']}:interface={quoteStringArgument(self['interface'])}"


def makeService(config: Options, reactor: Any = None) -> MultiService:
    """Build the signaling service from parsed options."""
    top = MultiService()
    factory = SignalingFactory(
        RoomRegistry(),
        max_message_size=config["max-message-size"],
        max_room_id_length=config["max-room-id-length"],
    )
    site = build_site(factory, demo=not config["no-demo"])
    listener = strports.service(config.listen_description, site)
    listener.setServiceParent(top)
    return top
