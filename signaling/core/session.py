"""One client's session: the protocol's rules, whatever carries its frames.

A :class:`Session` receives each client message as bytes, decides what it
means in the session's current :class:`State`, and answers through its
:class:`Wire` (the WebSocket connection, or a fake in tests) and the hub's
:class:`~signaling.core.rooms.Rooms`. The answer to every message in every
state:

=============  ==================  ==================  ==============  =======
message        lobby               joining             in_room         closing
=============  ==================  ==================  ==============  =======
join           start the join      already_in_room     already_in_room ignored
leave          not_in_room         leave once joined   leave           ignored
offer/answer/  not_in_room         not_in_room         relay, or       ignored
candidate                                              unknown_client
invalid        error (its code)    error               error           ignored
=============  ==================  ==================  ==============  =======

A session opened with ``?resume=1`` (:mod:`signaling.core.resume`) whose
connection drops in lobby or in_room is *away* (no connection, so no
messages) until a new connection takes it over or its grace ends.

When rooms span processes (Redis) and their store cannot be reached, a join
and a relay to a member on another process get ``unavailable`` instead.

Messages over the rate limit get ``rate_limited`` (and, past the strikes,
the connection closes); binary frames ``unsupported_frame``; text that is
not UTF-8 closes the connection with 1007.
"""

from __future__ import annotations

import enum
from time import perf_counter
from typing import Any, Protocol

from signaling.core import messages
from signaling.core.access import CLOSE_UNAUTHORIZED, Grant, JoinRequest, Unauthorized
from signaling.core.clock import DelayedCall, cancel
from signaling.core.hub import Hub
from signaling.core.limits import RateLimiter
from signaling.core.messages import Join, NotUtf8, ProtocolError, Relay
from signaling.core.rooms import Joined, JoinRefused, Room, RoomsUnavailable

#: Close code for policy violations (rate limit, slow reader, join timeout).
CLOSE_POLICY = 1008
#: Close code for a text frame that is not UTF-8.
CLOSE_INVALID_PAYLOAD = 1007


class Wire(Protocol):
    """What a session needs of its connection."""

    def send_frame(self, data: bytes) -> bool:
        """Send one encoded server message; False if it was not sent (the
        connection is closing, or too far behind)."""

    def close(self, code: int, reason: str, timeout: float | None = None) -> None:
        """Start the closing handshake with ``code``; ``timeout`` (seconds,
        0 for none) replaces the usual wait for the client's answer."""

    def stop_reading(self) -> None:
        """Read nothing more from this client (it floods)."""

    def abort(self) -> None:
        """End the connection at once."""


class _NoWire:
    """The wire of a session whose connection is gone: sends nothing."""

    def send_frame(self, data: bytes) -> bool:
        return False

    def close(self, code: int, reason: str, timeout: float | None = None) -> None:
        pass

    def stop_reading(self) -> None:
        pass

    def abort(self) -> None:
        pass


NO_WIRE = _NoWire()


class State(enum.Enum):
    """Where a session is in its life."""

    LOBBY = "lobby"  #: connected, in no room
    JOINING = "joining"  #: a join is waiting for the rooms' answer
    IN_ROOM = "in_room"
    CLOSING = "closing"  #: the connection is ending; input is ignored
    CLOSED = "closed"  #: gone from the hub
    #: Its connection dropped; it keeps its place (and its frames) for a
    #: resume within ``--resume-grace`` (see signaling.core.resume).
    AWAY = "away"


# Module-level names: looking a member up on an Enum class is several times
# slower than a global, and receive() compares twice per message.
LOBBY, JOINING, IN_ROOM, CLOSING, CLOSED, AWAY = State


class Session:
    """One client, from its connection's opening to its end."""

    __slots__ = (
        "_granted",
        "_join_timer",
        "_leaves_when_joined",
        "_limiter",
        "address",
        "client_id",
        "connected_at",
        "hub",
        "last_seen",
        "limit_key",
        "messages_in",
        "messages_out",
        "room",
        "state",
        "url_token",
        "wire",
    )

    def __init__(
        self,
        hub: Hub,
        wire: Wire,
        client_id: str,
        address: str,
        limit_key: str | None,
        url_token: str | None = None,
    ) -> None:
        self.hub = hub
        self.wire = wire
        self.client_id = client_id
        #: The client's address, e.g. ``tcp4:192.0.2.7:50412``.
        self.address = address
        #: What --max-connections-per-address counts it by (None: not counted).
        self.limit_key = limit_key
        self.state = LOBBY
        self.room: Room | None = None
        self.messages_in = 0
        self.messages_out = 0
        self.connected_at = self.last_seen = now = hub.clock.seconds()
        limits = hub.limits
        self._limiter = (
            RateLimiter(limits.rate_limit, limits.rate_burst, now)
            if limits.rate_limit > 0
            else None
        )
        self._join_timer: DelayedCall | None = None
        #: Leaves received while joining, answered once the join is.
        self._leaves_when_joined = 0
        #: ``?token=`` of the connect URL (a join's own token comes first).
        self.url_token = url_token
        #: The room and grant of a join the gate let through, until it ends.
        self._granted: tuple[str, Grant] | None = None

    # -- life ------------------------------------------------------------------

    def open(self) -> bytes:
        """Register with the hub; returns the ``notify-client-id`` message,
        which the connection sends with its handshake's answer."""
        hub = self.hub
        hub.sessions[self.client_id] = self
        hub.count_address(self.limit_key)
        hub.stats.connections_total += 1
        self._start_join_timer()
        self.messages_out += 1
        return messages.notify_client_id(self.client_id)

    def closing(self, wire: Wire | None = None) -> None:
        """The connection is leaving OPEN (any close, either side): the room
        hears ``leave-client`` now, not when TCP finally closes.

        ``wire``, when given, is the connection that is ending: nothing
        happens unless it is still this session's (a resumed session's old
        connection ends without ending it)."""
        if wire is not None and wire is not self.wire:
            return
        if self.state is CLOSING or self.state is CLOSED:
            return
        previous, self.state = self.state, CLOSING
        self._cancel_join_timer()
        if previous is IN_ROOM or previous is JOINING:
            self._leave_room()
            # A join still pending ends here for the gate, whether or not
            # the rooms ever answer it.
            self._end_grant()

    def lost(self, wire: Wire) -> None:
        """``wire`` ended without a closing handshake (TCP dropped, no answer
        to pings) or with the client's 1001: a session that may resume
        (signaling.core.resume) goes away; any other closes."""
        self.closing(wire)

    def closed(self, wire: Wire | None = None) -> None:
        """The connection is gone: forget the session, and let go of the
        connection (the two refer to each other; a cycle would keep both in
        memory until a full collection). ``wire`` as for :meth:`closing`."""
        if wire is not None and wire is not self.wire:
            return
        self.closing()
        self.wire = NO_WIRE
        if self.state is not CLOSED:
            self._forget()

    def _forget(self) -> None:
        """Gone from the hub: its message totals kept, its address counted down."""
        self.state = CLOSED
        hub = self.hub
        hub.closed_messages_in += self.messages_in
        hub.closed_messages_out += self.messages_out
        if hub.sessions.pop(self.client_id, None) is not None:
            hub.uncount_address(self.limit_key)

    def close(self, code: int, reason: str, timeout: float | None = None) -> None:
        """Close the connection (admin, shutdown); see :meth:`Wire.close`."""
        self.wire.close(code, reason, timeout)

    def abort(self) -> None:
        """Drop the connection at once (shutdown's stragglers)."""
        self.wire.abort()

    # -- Member: what rooms deliver ----------------------------------------------

    def deliver(self, data: bytes) -> None:
        if self.wire.send_frame(data):
            self.messages_out += 1

    # -- receiving ---------------------------------------------------------------

    def frame_allowed(self) -> bool:
        """Spend a token of the rate limit on a frame that carries no
        message (a ping, a pong, a continuation); past the strikes, close."""
        limiter = self._limiter
        if limiter is None or limiter.allow(self.hub.clock.seconds()):
            return True
        strikes = self.hub.limits.rate_limit_strikes
        if strikes and limiter.strikes >= strikes:
            self.hub.log.debug("frame flood: closing {client_id}", client_id=self.client_id)
            self._close_flooder("rate limit exceeded")
        return False

    def receive(self, payload: bytes, is_binary: bool) -> None:
        """One whole message from the client."""
        state = self.state
        if state is CLOSING or state is CLOSED:
            return
        started = perf_counter()
        self.messages_in += 1
        hub = self.hub
        stats = hub.stats
        stats.bytes_in += len(payload)
        self.last_seen = now = hub.clock.seconds()
        limiter = self._limiter
        if limiter is not None and not limiter.allow(now):
            self._rate_limited(limiter)
            return
        if is_binary:
            stats.received["invalid"] += 1
            self.send_error(
                messages.UNSUPPORTED_FRAME, "binary frames are not supported; send JSON text"
            )
            return
        try:
            message = messages.parse(payload, hub.limits.max_room_id_length)
        except ProtocolError as e:
            stats.received["invalid"] += 1
            self.send_error(e.code, e.message, e.in_reply_to)
            return
        except NotUtf8:
            stats.received["invalid"] += 1
            self.wire.close(CLOSE_INVALID_PAYLOAD, "text frame is not valid UTF-8")
            return
        kind = type(message)
        if kind is Relay:
            relay: Relay = message  # type: ignore[assignment]
            stats.received[relay.type] += 1
            if self.handle_relay(relay):
                stats.relayed[relay.type] += 1
                stats.observe_relay(perf_counter() - started)
        elif kind is Join:
            stats.received["join"] += 1
            self.handle_join(message)  # type: ignore[arg-type]
        else:
            stats.received["leave"] += 1
            self.handle_leave()

    def handle_relay(self, message: Relay) -> bool:
        """Forward an offer, answer or candidate; True if it was delivered."""
        room = self.room
        if room is None:
            self.send_error(
                messages.NOT_IN_ROOM, "join a room before sending " + message.type, message.type
            )
            return False
        target = message.target
        try:
            if target != self.client_id and room.send(
                target, messages.relayed(message.type, self.client_id, message.body)
            ):
                return True
        except RoomsUnavailable as e:
            self.send_error(e.code, e.text, message.type, client_id=target)
            return False
        self.send_error(
            messages.UNKNOWN_CLIENT,
            "no other client with this id in your room",
            message.type,
            client_id=target,
        )
        return False

    def handle_join(self, message: Join) -> None:
        if self.state is IN_ROOM:
            assert self.room is not None
            self.send_error(
                messages.ALREADY_IN_ROOM,
                "already in a room; send leave first",
                "join",
                room_id=self.room.room_id,
            )
            return
        if self.state is JOINING:
            self.send_error(
                messages.ALREADY_IN_ROOM,
                "a join is in progress; wait for joined",
                "join",
                room_id=message.room_id,
            )
            return
        self.state = JOINING
        hub = self.hub
        gate = hub.gate
        if gate is None:
            hub.rooms.join(message.room_id, self, self._joined)
            return
        room_id = message.room_id
        request = JoinRequest(
            room_id,
            self.client_id,
            self.address,
            message.token if message.token is not None else self.url_token,
            message.metadata,
        )
        gate.check(request, lambda outcome: self._authorized(room_id, outcome))

    def _authorized(self, room_id: str, outcome: Grant | JoinRefused) -> None:
        """The gate's answer to this session's join (now, or later)."""
        if self.state is not JOINING:
            if isinstance(outcome, Grant):  # closed meanwhile: the join ends here
                self.hub.gate.left(room_id, self.client_id)  # type: ignore[union-attr]
            return
        if isinstance(outcome, JoinRefused):
            self._refused(outcome)
            return
        self._granted = (room_id, outcome)
        self.hub.rooms.join(
            room_id,
            self,
            self._joined,
            identity=outcome.identity or None,
            max_room_size=outcome.max_room_size,
        )

    def _refused(self, refusal: JoinRefused) -> None:
        self.state = LOBBY
        self.send_error(refusal.code, refusal.text, "join", **refusal.details)
        if isinstance(refusal, Unauthorized):
            self.wire.close(CLOSE_UNAUTHORIZED, "unauthorized")
            return
        self._answer_leaves()

    def _joined(self, outcome: Joined | JoinRefused) -> None:
        """The rooms' answer to this session's join (now, or later)."""
        if self.state is not JOINING:
            # Closed while the join was pending: undo it, if it happened.
            if isinstance(outcome, Joined):
                self.hub.rooms.leave(self)
            self._end_grant()
            return
        if isinstance(outcome, JoinRefused):
            self._end_grant()
            self._refused(outcome)
            return
        room = outcome.room
        self.room = room
        self.state = IN_ROOM
        self._cancel_join_timer()
        hub = self.hub
        hub.log.debug(
            "join {client_id} room={room_id!r} members={members}",
            client_id=self.client_id,
            room_id=room.room_id,
            members=len(room),
        )
        granted = self._granted
        if granted is None and hub.ice_servers is None:
            self.deliver(messages.joined(room.room_id, outcome.existing))
        else:
            ice_servers = granted[1].ice_servers if granted is not None else None
            if ice_servers is None and hub.ice_servers is not None:
                ice_servers = hub.ice_servers(self.client_id)
            self.deliver(
                messages.joined(
                    room.room_id,
                    outcome.existing,
                    outcome.identities if hub.gate is not None else None,
                    ice_servers,
                )
            )
        self._answer_leaves()

    def _end_grant(self) -> None:
        """The join the gate let through is over (left, closed, or refused
        by the rooms after all): the gate hears of it once."""
        granted, self._granted = self._granted, None
        if granted is not None and self.hub.gate is not None:
            self.hub.gate.left(granted[0], self.client_id)

    def _answer_leaves(self) -> None:
        """Handle the leaves received while joining, now that it is over."""
        leaves, self._leaves_when_joined = self._leaves_when_joined, 0
        for _ in range(leaves):
            self.handle_leave()

    def handle_leave(self) -> None:
        state = self.state
        if state is JOINING:
            # In order: the join's answer comes first, then this leave.
            self._leaves_when_joined += 1
            return
        if state is not IN_ROOM:
            self.send_error(messages.NOT_IN_ROOM, "not in a room", "leave")
            return
        self._leave_room()
        self.state = LOBBY
        self._start_join_timer()

    def _leave_room(self) -> None:
        room = self.room
        self.room = None
        self.hub.rooms.leave(self)
        if room is not None and self._granted is not None:
            self._end_grant()
        if room is not None:
            self.hub.log.debug(
                "leave {client_id} room={room_id!r} remaining={remaining}",
                client_id=self.client_id,
                room_id=room.room_id,
                remaining=len(room),
            )

    # -- answers -----------------------------------------------------------------

    def send_error(
        self, code: str, text: str, in_reply_to: str | None = None, **details: Any
    ) -> None:
        hub = self.hub
        hub.stats.errors[code] += 1
        if hub.log_budget.allow("error"):
            hub.log.info(
                "error {client_id} {code}: {text}", client_id=self.client_id, code=code, text=text
            )
        if in_reply_to is not None:
            details["in_reply_to"] = in_reply_to
        self.deliver(messages.error(code, text, **details))

    def _rate_limited(self, limiter: RateLimiter) -> None:
        hub = self.hub
        strikes = hub.limits.rate_limit_strikes
        if strikes and limiter.strikes >= strikes:
            if hub.log_budget.allow("rate limit"):
                hub.log.info("rate limit: closing {client_id}", client_id=self.client_id)
            self._close_flooder("rate limit exceeded")
            return
        self.send_error(
            messages.RATE_LIMITED,
            f"more than {limiter.rate:g} messages a second; message dropped",
        )

    def _close_flooder(self, reason: str) -> None:
        """Close, and read nothing more from this client: parsing the rest
        of a flood would only cost time."""
        self.wire.close(CLOSE_POLICY, reason)
        self.wire.stop_reading()

    # -- the join timer ------------------------------------------------------------

    def _start_join_timer(self) -> None:
        timeout = self.hub.limits.join_timeout
        if timeout > 0:
            self._join_timer = self.hub.clock.callLater(timeout, self._join_timed_out)

    def _cancel_join_timer(self) -> None:
        cancel(self._join_timer)
        self._join_timer = None

    def _join_timed_out(self) -> None:
        self._join_timer = None
        # Joining too: a join the rooms never answer must not hold the
        # connection open (closing undoes it).
        timeout = self.hub.limits.join_timeout
        self.send_error(messages.JOIN_TIMEOUT, f"no join within {timeout:g} seconds")
        self.wire.close(CLOSE_POLICY, "join timeout")

    def __repr__(self) -> str:
        return f"<Session {self.client_id} {self.state.value}>"
