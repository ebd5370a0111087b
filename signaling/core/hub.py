"""The state one server shares among its sessions, and what admin, metrics,
health and shutdown read."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from signaling.core.access import Gate
from signaling.core.clock import Clock
from signaling.core.limits import Limits
from signaling.core.logbudget import EventLog, LogBudget, NullLog
from signaling.core.origin import OriginPolicy
from signaling.core.rooms import LocalRooms, Rooms
from signaling.core.stats import Stats

if TYPE_CHECKING:
    from signaling.core.resume import SessionMover
    from signaling.core.session import Session


class Hub:
    """One server's shared state.

    ``rooms`` is where sessions meet (:class:`~signaling.core.rooms.LocalRooms`
    unless given); ``sessions`` maps the id of every open connection, in a
    room or not, to its :class:`~signaling.core.session.Session` (and of
    every session away, waiting for a resume: it holds memory, so the
    connection limits count it);
    ``address_counts`` counts them by what ``--max-connections-per-address``
    limits; ``draining`` is set while the server shuts down (new handshakes
    are refused); ``closed_messages_*`` keep the totals of closed
    connections; ``log`` is where sessions log (nowhere unless given),
    within ``log_budget``, whose summaries go to ``budget_log`` (``log``
    unless given).
    """

    def __init__(
        self,
        clock: Clock,
        limits: Limits | None = None,
        rooms: Rooms | None = None,
        log: EventLog | None = None,
        budget_log: EventLog | None = None,
    ) -> None:
        self.clock = clock
        self.limits = limits = limits if limits is not None else Limits()
        self.rooms: Rooms = (
            rooms
            if rooms is not None
            else LocalRooms(max_room_size=limits.max_room_size, max_rooms=limits.max_rooms)
        )
        self.log: EventLog = log if log is not None else NullLog()
        self.stats = Stats()
        self.origins = OriginPolicy(limits.allowed_origins)
        self.sessions: dict[str, Session] = {}
        self.address_counts: Counter[str] = Counter()
        #: The resume token of each session that may resume (single use).
        self.resume_tokens: dict[str, Session] = {}
        #: Finds the resume tokens of other processes (rooms across
        #: processes); None: a resume works on this process alone.
        self.session_mover: SessionMover | None = None
        #: Sessions in ``sessions`` whose connection dropped (state AWAY).
        self.sessions_away = 0
        self.started_at = clock.seconds()
        self.closed_messages_in = 0
        self.closed_messages_out = 0
        self.draining = False
        #: /healthz's status while the rooms are degraded (200, or 503 for
        #: load balancers to send new clients elsewhere).
        self.degraded_status = 200
        #: Decides on joins (room tokens, a webhook); None lets every join in.
        self.gate: Gate | None = None
        #: The ICE servers of a client (by id) for ``joined``; None sends none.
        self.ice_servers: Callable[[str], Sequence[Mapping[str, Any]]] | None = None
        #: Bounds the log lines that clients can cause.
        self.log_budget = LogBudget(
            clock, limits.client_log_rate, budget_log if budget_log is not None else self.log
        )

    def refusal(self, limit_key: str | None) -> str | None:
        """Why a new connection from ``limit_key`` must be refused (503), or
        None if the connection limits let it in."""
        limits = self.limits
        if limits.max_connections and len(self.sessions) >= limits.max_connections:
            return "too many connections"
        if (
            limits.max_connections_per_address
            and limit_key is not None
            and self.address_counts[limit_key] >= limits.max_connections_per_address
        ):
            return "too many connections from this address"
        return None

    def count_address(self, limit_key: str | None) -> None:
        """One more connection from ``limit_key`` (None: not counted)."""
        if limit_key is not None:
            self.address_counts[limit_key] += 1

    def uncount_address(self, limit_key: str | None) -> None:
        """One connection fewer from ``limit_key``; an address at 0 is forgotten."""
        if limit_key is not None:
            counts = self.address_counts
            counts[limit_key] -= 1
            if counts[limit_key] <= 0:
                del counts[limit_key]

    def uptime(self) -> float:
        return self.clock.seconds() - self.started_at

    def messages_in(self) -> int:
        """Messages received from clients since the start."""
        return self.closed_messages_in + sum(s.messages_in for s in self.sessions.values())

    def messages_out(self) -> int:
        """Messages sent to clients since the start."""
        return self.closed_messages_out + sum(s.messages_out for s in self.sessions.values())
