"""systemd's readiness protocol: ``READY=1`` and ``STOPPING=1`` datagrams to NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from signaling.logs import ServerLogger

_log = ServerLogger()


def notify_address(environ: Mapping[str, str]) -> str | None:
    """The socket address NOTIFY_SOCKET names (``@`` means the abstract namespace)."""
    address = environ.get("NOTIFY_SOCKET", "")
    if not address:
        return None
    if address.startswith("@"):
        return "\0" + address[1:]
    return address


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; False when there is no NOTIFY_SOCKET."""
    address = notify_address(environ)
    if address is None:
        return False
    if not address.startswith(("/", "\0")):
        _log.warn("NOTIFY_SOCKET={address!r} is not supported", address=address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as e:
        _log.warn("cannot notify systemd ({state}): {error}", state=state, error=e)
        return False
    return True


class SystemdNotifier(Service):
    """Tells systemd READY=1 once the reactor runs (and ``before_ready`` has
    fired), STOPPING=1 when stopping.

    Add it after the listening services: by the time it starts they listen
    (a failure to bind aborts start-up before).
    """

    def __init__(
        self,
        reactor: Any,
        environ: Mapping[str, str] = os.environ,
        before_ready: Callable[[], Deferred[None]] | None = None,
    ) -> None:
        self._reactor = reactor
        self._environ = environ
        self._before_ready = before_ready

    def _running(self) -> None:
        if self._before_ready is not None:
            self._before_ready().addCallback(lambda _: self._ready())
        else:
            self._ready()

    def _ready(self) -> None:
        if self.running and notify("READY=1\nSTATUS=accepting connections", self._environ):
            _log.info("told systemd READY=1")

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._running)

    def stopService(self) -> None:
        super().stopService()
        notify("STOPPING=1\nSTATUS=closing connections", self._environ)
