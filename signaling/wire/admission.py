"""Admission: what a connection costs before its WebSocket handshake completes.

A connection holds a file descriptor from the moment it is accepted. Three
limits keep idle or half-open connections (port scanners, slowloris-style
floods) from taking every descriptor, so that honest clients, ``/healthz``
and the admin console still get in:

- a per-address rate of new connections (``--connect-rate``/``--connect-burst``),
  checked as the connection is accepted: beyond it the socket is closed at
  once, before any byte is read;
- caps on *pending* connections, those that are not (yet) WebSockets
  (``--max-pending-connections``, ``--max-pending-per-address``): beyond
  them the oldest pending connection of that address, or of the address
  with the most pending, is closed to make room for the new one;
- a reserve of descriptors (``--fd-reserve``, at most a quarter of the
  process's limit): once a new connection's descriptor is among the last
  ones under that limit, a pending connection is closed the same way to
  make room for it, or, with none pending, the new one is.

The per-address parts key on the peer's IP address. Unix sockets have none,
and behind ``--trust-proxy`` every connection comes from a proxy, so there
only the global caps apply.
"""

from __future__ import annotations

import resource
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, ITransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import ILogObserver, Logger
from zope.interface import implementer

from signaling.core.limits import Limits, RateLimiter
from signaling.logs import ServerLogger
from signaling.wire import compat
from signaling.wire.addresses import socket_address

_log = ServerLogger()

#: Seconds suggested to clients refused for capacity (``Retry-After``).
RETRY_AFTER = 5


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (before, after).

    The soft limit is often 1024 (systemd's default), far below what
    ``--max-connections`` needs; the hard limit is what the administrator
    allows. Failing to raise it is not fatal: the limits still apply.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard
    if wanted == resource.RLIM_INFINITY:
        try:  # Linux refuses an unlimited soft limit; its ceiling is nr_open
            with open("/proc/sys/fs/nr_open") as f:
                wanted = int(f.read())
        except (OSError, ValueError):
            wanted = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError):
            return soft, soft
        return soft, wanted
    return soft, soft


def open_files_limit() -> int:
    """The soft RLIMIT_NOFILE now; 0 when unlimited."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 0 if soft == resource.RLIM_INFINITY else soft


class Admission:
    """Decides which new connections may take a descriptor, and which
    pending ones give theirs up.

    ``admit`` runs as a connection is accepted; ``hold`` as it is made (it
    is pending from then on), ``release`` once it is a WebSocket or gone.
    ``shed`` counts the connections closed here, by reason (``/metrics``).
    """

    def __init__(
        self,
        limits: Limits,
        clock: IReactorTime,
        *,
        per_address: bool = True,
        fd_limit: int | None = None,
    ) -> None:
        self.limits = limits
        self.clock = clock
        self.per_address = per_address
        limit = open_files_limit() if fd_limit is None else fd_limit
        reserve = min(limits.fd_reserve, limit // 4)
        #: Descriptors from this number on are the reserve (0: no check).
        self.fd_threshold = limit - reserve if limit else 0
        self.shed: Counter[str] = Counter()
        #: Pending connections, oldest first, with their address key ("" for
        #: none); ``_groups`` has them by that key, each group oldest first.
        self.pending: dict[ITransport, str] = {}
        self._groups: dict[str, dict[ITransport, None]] = {}
        #: The descriptor of the last connection held (the lowest free one
        #: then); from ``_fd_stop`` on, admit() refuses the addresses that
        #: have connections pending, from ``_fd_ceiling`` on every address.
        self._last_fd = -1
        self._fd_stop = self.fd_threshold + reserve // 2
        self._fd_ceiling = self.fd_threshold + reserve * 3 // 4
        self._recheck: IDelayedCall | None = None
        self._buckets: dict[str, RateLimiter] = {}
        self._sweep_at = 1024

    def address_key(self, address: IAddress | None) -> str | None:
        """What the per-address limits count by; None for none of them."""
        if not self.per_address or address is None:
            return None
        # The grouping of --max-connections-per-address: an IPv6 /64 is one
        # address, ::ffff:a.b.c.d is a.b.c.d, a unix socket has none.
        return socket_address(address)[1]

    # -- at accept -----------------------------------------------------------

    def admit(self, address: IAddress) -> bool:
        """Whether a connection just accepted from ``address`` may stay."""
        if (
            self.fd_threshold
            and self._last_fd >= self._fd_stop
            and self._refuse_near_limit(address)
        ):
            # The connections closed to make room are closed on the next
            # reactor turn; until then, refused here, a new one is closed at once.
            self.shed["fd_reserve"] += 1
            self._recheck_next_turn()
            return False
        rate = self.limits.connect_rate
        if rate <= 0:
            return True
        key = self.address_key(address)
        if key is None:
            return True
        now = self.clock.seconds()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._sweep_at:
                self._sweep(now)
            bucket = self._buckets[key] = RateLimiter(rate, self.limits.connect_burst, now)
        if bucket.allow(now):
            return True
        self.shed["connect_rate"] += 1
        return False

    def _refuse_near_limit(self, address: IAddress) -> bool:
        """Deep in the reserve: refuse an address that has connections
        pending already (a flood's), and, nearer the limit still, every one."""
        if self._last_fd >= self._fd_ceiling:
            return True
        key = self.address_key(address)
        return key is None or key in self._groups

    def _sweep(self, now: float) -> None:
        """Forget the addresses whose bucket has refilled (they start full anyway)."""
        self._buckets = {
            key: bucket for key, bucket in self._buckets.items() if not bucket.is_full(now)
        }
        self._sweep_at = max(1024, 2 * len(self._buckets))

    # -- while pending ---------------------------------------------------------

    def hold(self, transport: ITransport, address: IAddress | None, fd: int) -> bool:
        """Count ``transport`` as pending, closing older pending connections
        if a limit needs it. False: there is no room for it (close it)."""
        pending = self.pending
        if transport in pending:
            return True  # already counted (an HTTP connection upgrading)
        limits = self.limits
        key = self.address_key(address)
        group = key or ""
        if key is not None and limits.max_pending_per_address:
            mine = self._groups.get(group)
            if mine is not None and len(mine) >= limits.max_pending_per_address:
                self._make_room(mine, "pending_per_address")
        if limits.max_pending_connections and len(pending) >= limits.max_pending_connections:
            self._make_room_fairly("pending")
        self._last_fd = fd
        if (
            self.fd_threshold
            and fd >= self.fd_threshold
            and not self._make_room_fairly("fd_reserve", live_only=True)
        ):
            self.shed["fd_reserve"] += 1
            return False
        pending[transport] = group
        self._groups.setdefault(group, {})[transport] = None
        return True

    def release(self, transport: ITransport) -> None:
        """``transport`` is no longer pending (a WebSocket now, or closed)."""
        group = self.pending.pop(transport, None)
        if group is None:
            return
        mine = self._groups[group]
        del mine[transport]
        if not mine:
            del self._groups[group]

    def _make_room_fairly(self, reason: str, live_only: bool = False) -> bool:
        """Make room at the expense of the address with the most pending
        connections: a flood's addresses, rather than a client's one."""
        groups = self._groups
        while groups:
            heaviest = max(groups.values(), key=len)
            if self._make_room(heaviest, reason, live_only):
                return True
        return False

    def _make_room(
        self, among: dict[ITransport, None], reason: str, live_only: bool = False
    ) -> bool:
        """Forget or close the oldest connection of ``among``; False if there is none.

        A plain HTTP connection that closed by itself may still be counted
        (it is forgotten at its deadline): forgetting it makes room too,
        unless ``live_only`` (a descriptor is wanted, and it has none).
        """
        while among:
            transport = next(iter(among))
            self.release(transport)
            if getattr(transport, "disconnected", False):
                if live_only:
                    continue
                return True
            self.shed[reason] += 1
            transport.abortConnection()  # type: ignore[attr-defined]
            return True
        return False

    def _recheck_next_turn(self) -> None:
        if self._recheck is None:
            self._recheck = self.clock.callLater(0, self._forget_last_fd)

    def _forget_last_fd(self) -> None:
        """Aborted connections have closed: the next one measures anew."""
        self._recheck = None
        self._last_fd = -1


class AdmittingFactory(Factory):
    """Wraps the factory a port serves (plain or TLS): a connection that
    ``admission`` refuses is closed by the port at once, with no protocol
    made for it."""

    noisy = False

    def __init__(self, wrapped: Factory, admission: Admission) -> None:
        self.wrapped = wrapped
        self.admission = admission

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def logPrefix(self) -> str:
        return self.wrapped.logPrefix()

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        if addr is not None and not self.admission.admit(addr):
            return None
        return cast(Protocol | None, self.wrapped.buildProtocol(addr))


#: Seconds a port stops accepting after an accept error it cannot recover from.
ACCEPT_PAUSE = 0.1

#: Twisted's accept-loop events that report a connection it could not take.
_ACCEPT_FAILURES = ("Could not accept new connection", "EMFILE recovery: Closed socket")


@implementer(ILogObserver)
class AcceptErrorLog:
    """A port's log observer: accept errors (out of descriptors: EMFILE,
    ENFILE, ...) and the connections closed to recover from them are
    counted, and reported in at most one line per ``interval`` seconds,
    instead of one line per connection attempt. Other events pass on.

    ``pause`` is called on a failure that leaves the connection waiting
    (ENFILE, ENOBUFS, ENOMEM; Twisted recovers from EMFILE itself by closing
    it): otherwise the port, still readable, would be tried again at once.
    """

    def __init__(
        self,
        clock: IReactorTime,
        count: Callable[[], None],
        interval: float = 60.0,
        forward: Callable[[dict[str, Any]], None] | None = None,
        pause: Callable[[], None] | None = None,
    ) -> None:
        self.clock = clock
        self.count = count
        self.interval = interval
        self.forward = forward
        self.pause = pause
        self._unreported = 0
        self._quiet_until = 0.0
        self._report: Any = None

    def __call__(self, event: dict[str, Any]) -> None:
        text = event.get("log_format") or ""
        if not text.startswith(_ACCEPT_FAILURES) and "EMFILE" not in text:
            if self.forward is not None:
                self.forward(event)
            return
        if not text.startswith(_ACCEPT_FAILURES):
            return  # Twisted's notes on releasing and re-taking its spare descriptor
        error = event.get("acceptError", "EMFILE")
        if error == "ECONNABORTED":
            return  # the client gave up before it was accepted: nothing to report
        self.count()
        if self.pause is not None and "acceptError" in event:
            self.pause()
        now = self.clock.seconds()
        if now >= self._quiet_until:
            self._quiet_until = now + self.interval
            _log.warn(
                "could not accept a connection ({error}); such failures are counted "
                "in /metrics and logged at most once every {interval:g} s",
                error=error,
                interval=self.interval,
            )
            return
        self._unreported += 1
        if self._report is None:
            self._report = self.clock.callLater(self._quiet_until - now, self._flush)

    def _flush(self) -> None:
        self._report = None
        if self._unreported:
            _log.warn(
                "{count} more connections could not be accepted in the last {interval:g} s",
                count=self._unreported,
                interval=self.interval,
            )
            self._unreported = 0
            self._quiet_until = self.clock.seconds() + self.interval


def quiet_accept_errors(port: Any, clock: IReactorTime, count: Callable[[], None]) -> Any:
    """Give a listening port the log of :class:`AcceptErrorLog`; returns ``port``.

    It replaces the port's own logger for this port only (see
    signaling.wire.compat.set_port_logger). Ports without one are left as
    they are.
    """
    logger = compat.port_logger(port)
    if logger is None:
        return port
    paused = False

    def pause() -> None:
        nonlocal paused
        if not paused and port.connected:
            paused = True
            port.stopReading()
            clock.callLater(ACCEPT_PAUSE, resume)

    def resume() -> None:
        nonlocal paused
        paused = False
        if port.connected:
            port.startReading()

    observer = AcceptErrorLog(clock, count, forward=logger.observer, pause=pause)
    compat.set_port_logger(port, Logger(namespace=logger.namespace, observer=observer))
    return port
