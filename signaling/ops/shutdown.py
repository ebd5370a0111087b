"""Graceful shutdown: close every client with 1001 and wait, bounded, for them to go."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall

from signaling.core.clock import cancel
from signaling.core.hub import Hub
from signaling.logs import ServerLogger
from signaling.ops.signals import install_handler

_log = ServerLogger()

GOING_AWAY = 1001
CLOSE_REASON = "server shutting down"
#: How often to look whether every client has gone.
POLL_INTERVAL = 0.05


class GracefulShutdown(Service):
    """Drains ``hub``'s clients when stopped.

    ``stopService`` sets ``hub.draining`` (new WebSocket handshakes are
    refused from then on), sends every client a 1001 close frame and returns
    a Deferred that fires once all of them have closed, or after ``timeout``
    seconds, when the ones left are dropped.

    With ``reactor`` given, SIGTERM and SIGINT (``signals``) stop that
    reactor (which stops this service) without twistd's re-raise of the signal, so the
    process exits 0 after a graceful shutdown; a second signal drops the
    remaining clients at once. With ``drain_delay``, a signal first sets
    ``hub.draining`` and keeps serving (open listeners, so load
    balancers see /healthz answer 503) for that many seconds.
    """

    def __init__(
        self,
        hub: Hub,
        timeout: float,
        clock: IReactorTime,
        reactor: Any = None,
        drain_delay: float = 0.0,
        signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
    ) -> None:
        self.hub = hub
        self.timeout = timeout
        self.drain_delay = drain_delay
        self.signals = signals
        self._clock = clock
        self._reactor = reactor
        self._restore_handlers: list[Callable[[], None]] = []
        self._finish_now: Callable[[str], None] | None = None
        self._delayed_stop: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        if self._reactor is not None:
            # After the reactor's own handlers, which it installs as it starts.
            self._reactor.callWhenRunning(self._install_handlers)

    def _install_handlers(self) -> None:
        if self.running:
            self._restore_handlers = [
                install_handler(self._reactor, signum, self._on_signal) for signum in self.signals
            ]

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._finish_now is not None:
            _log.info("{signal} again: dropping the remaining connections", signal=name)
            self._finish_now("on a second signal")
        elif self._delayed_stop is not None:
            _log.info("{signal} again: shutting down now", signal=name)
            self._stop_reactor()
        elif self.running and self.drain_delay > 0:
            self.hub.draining = True
            _log.info(
                "{signal}: draining for {delay}s (/healthz answers 503, new WebSocket "
                "handshakes are refused), then shutting down",
                signal=name,
                delay=self.drain_delay,
            )
            self._delayed_stop = self._clock.callLater(self.drain_delay, self._stop_reactor)
        elif self.running:
            _log.info("{signal}: shutting down", signal=name)
            self._stop_reactor()

    def _stop_reactor(self) -> None:
        cancel(self._delayed_stop)
        self._delayed_stop = None
        with contextlib.suppress(ReactorNotRunning):  # already on its way down
            self._reactor.stop()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        cancel(self._delayed_stop)  # if stopped some other way meanwhile
        self._delayed_stop = None
        self.hub.draining = True
        clients = list(self.hub.sessions.values())
        _log.info(
            "closing {count} connections (waiting up to {timeout}s)",
            count=len(clients),
            timeout=self.timeout,
        )
        for client in clients:
            # Our timeout, not the closing handshake's, bounds the wait.
            client.close(GOING_AWAY, CLOSE_REASON, timeout=0)

        done: Deferred[None] = Deferred()
        poll = LoopingCall(lambda: None if self.hub.sessions else finish("all gone"))
        poll.clock = self._clock
        deadline: IDelayedCall | None = None

        def finish(why: str) -> None:
            if done.called:
                return
            self._finish_now = None
            if poll.running:
                poll.stop()
            cancel(deadline)
            stragglers = list(self.hub.sessions.values())
            for client in stragglers:
                client.abort()
            _log.info(
                "closed {closed} connections: {answered} closed cleanly, {dropped} dropped{why}",
                closed=len(clients),
                answered=len(clients) - len(stragglers),
                dropped=len(stragglers),
                why=f" {why}" if stragglers else "",
            )
            for restore in self._restore_handlers:
                restore()
            done.callback(None)

        self._finish_now = finish
        deadline = self._clock.callLater(
            self.timeout, finish, f"after the {self.timeout}s shutdown timeout"
        )
        poll.start(POLL_INTERVAL, now=True)
        return done
