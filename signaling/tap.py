"""``twistd signaling``: command-line options and the service they build."""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.endpoints import quoteStringArgument
from twisted.python import usage

from . import __version__
from .admin import Admin
from .manhole import DEFAULT_HOST_KEY_PATH, ManholeConfig, manhole_config, manhole_service
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
        [
            "manhole",
            None,
            None,
            "Serve the SSH admin console on this endpoint, e.g. "
            "tcp:2222:interface=127.0.0.1 (off by default).",
        ],
        [
            "manhole-keys",
            None,
            None,
            "authorized_keys file of the public keys that may log in to the admin console.",
        ],
        [
            "manhole-host-key",
            None,
            DEFAULT_HOST_KEY_PATH,
            "The admin console's SSH host key; generated (mode 0600) if missing.",
        ],
    ]

    optFlags = [
        [
            "manhole-remote",
            None,
            "Allow --manhole to accept connections from other hosts (not only loopback).",
        ],
    ]

    manhole: ManholeConfig | None = None

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
        self.manhole = manhole_config(
            self["manhole"],
            self["manhole-keys"],
            self["manhole-host-key"],
            bool(self["manhole-remote"]),
        )

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
    listener = strports.service(config.listen_description, build_site(factory))
    listener.setServiceParent(top)
    if config.manhole is not None:
        manhole_service(config.manhole, Admin(factory).namespace()).setServiceParent(top)
    return top
