"""Resuming a session after a network blip (``/connect?resume=1``).

A client that connects with ``?resume=1`` (and ``--resume-grace`` above 0)
gets a :class:`ResumableSession`: its ``notify-client-id`` carries a
``resume_token``, every frame after it a top-level ``seq`` (1, 2, 3, ...),
and the frames sent are kept, with their seq, in a :class:`ReplayBuffer`
bounded by ``--max-send-buffer`` (oldest dropped first) and, while
connected, by the time within which a dead connection is found (see
:func:`window`).

When its connection ends without a closing handshake (TCP dropped, no
answer to pings) or with the client's 1001, a session in the lobby or in a
room goes AWAY: it stays in its room (no ``leave-client``), what the room
sends it is kept, and after ``--resume-grace`` seconds it ends as a
disconnect does. A clean close or ``leave`` ends it as usual.

``/connect?resume_token=T&last_seq=N`` (:func:`connect`) takes the session
of T over, away or still connected (then the older connection is closed
with 4003): ``notify-client-id`` with the same id, a new token and
``"resumed": true``, then every kept frame with seq > N, in order. A token
is used once; an unknown one, or an N older than what is kept, gets
``resume_failed`` and a fresh session.

With rooms across processes (Redis), a token unknown here may be another
process's: ``hub.session_mover`` (a :class:`SessionMover`) finds it, and the
session moves here (:func:`hand_over` on the process that held it,
:func:`arrive` on this one) before it is taken over as above.
"""

from __future__ import annotations

import math
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from signaling.core import messages
from signaling.core.access import Grant
from signaling.core.clock import DelayedCall, cancel
from signaling.core.hub import Hub
from signaling.core.rooms import Room
from signaling.core.session import AWAY, CLOSED, IN_ROOM, LOBBY, NO_WIRE, Session, Wire

#: Close code of a connection whose session a newer one took over.
CLOSE_RESUMED_ELSEWHERE = 4003
#: What a replay buffer keeps when --max-send-buffer is 0 (no limit there).
DEFAULT_REPLAY_BYTES = 1024 * 1024


def window(hub: Hub) -> float:
    """Seconds a connected session keeps what it was sent: a dead connection
    is found within a ping interval and a ping timeout, and what was still
    on its way when it died went out at most about a ping timeout before
    (a client further behind is cut off as a slow reader). Without pings,
    only the byte bound applies."""
    limits = hub.limits
    if limits.ping_interval <= 0:
        return math.inf
    return limits.ping_interval + 2 * limits.ping_timeout


@dataclass
class Moving:
    """What a session that moves to another process takes with it (the
    rooms add its membership)."""

    client_id: str
    token: str
    #: The seq of the last frame sent or kept, and of the last one sent
    #: before the connection dropped (``seq`` if still connected).
    seq: int
    away_seq: int
    #: The kept frames, oldest first: (seq, encoded frame with its seq).
    frames: list[tuple[int, bytes]]
    #: Seconds left of the grace (the whole grace if it was connected).
    grace_left: float
    in_room: bool
    #: The identity the gate granted (None: no gate let it in).
    granted: dict[str, Any] | None = None
    address: str = ""
    room_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "token": self.token,
            "seq": self.seq,
            "away_seq": self.away_seq,
            "frames": [[s, f.decode()] for s, f in self.frames],
            "grace_left": self.grace_left,
            "in_room": self.in_room,
            "granted": self.granted,
            "address": self.address,
            "room_id": self.room_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Moving:
        return cls(
            str(data["client_id"]),
            str(data["token"]),
            int(data["seq"]),
            int(data["away_seq"]),
            [(int(s), f.encode()) for s, f in data["frames"]],
            float(data["grace_left"]),
            bool(data["in_room"]),
            data.get("granted"),
            str(data.get("address", "")),
            data.get("room_id"),
        )


class SessionMover(Protocol):
    """Where the resume tokens of other processes are found (rooms across
    processes); ``hub.session_mover`` is None on a single process."""

    def issued(self, token: str, client_id: str) -> None:
        """``token`` now resumes ``client_id`` here (until ``used``, or this
        process is gone)."""

    def used(self, token: str) -> None:
        """``token`` resumes nothing any more (used, or its session ended)."""

    def fetch(self, token: str, done: Callable[[], None]) -> None:
        """Bring the session of ``token`` here if another process holds it
        (it is then in ``hub.resume_tokens``, away); ``done`` is called
        once, when it is here or will not come (within a timeout)."""


def new_token() -> str:
    """An unguessable resume token (192 bits)."""
    return secrets.token_urlsafe(24)


class ReplayBuffer:
    """The frames sent to one session, with their seq and when they were
    sent, oldest first: at most ``limit`` bytes of them, and none sent more
    than ``window`` seconds before the newest (beyond either, the oldest are
    dropped)."""

    __slots__ = ("frames", "limit", "size", "window")

    def __init__(self, limit: int, window: float = math.inf) -> None:
        self.frames: deque[tuple[int, float, bytes]] = deque()
        self.limit = limit
        self.window = window
        self.size = 0

    def add(self, seq: int, frame: bytes, keep_from: int, now: float, aging: bool = True) -> bool:
        """Keep ``frame``; drop the oldest frames while over the bounds (the
        window only if ``aging``), but none with a seq of ``keep_from`` or
        more. False if still over the byte limit."""
        frames = self.frames
        frames.append((seq, now, frame))
        self.size += len(frame)
        oldest = now - self.window if aging else -math.inf
        while frames[0][0] < keep_from and (self.size > self.limit or frames[0][1] < oldest):
            self.size -= len(frames.popleft()[2])
        return self.size <= self.limit

    def since(self, last_seq: int, seq: int) -> list[bytes] | None:
        """The frames after ``last_seq`` (``seq`` is the last one sent), or
        None if one of them was dropped or ``last_seq`` was never sent."""
        frames = self.frames
        first = frames[0][0] if frames else seq + 1
        if last_seq > seq or last_seq < first - 1:
            return None
        return [frame for s, _, frame in frames if s > last_seq]


class ResumableSession(Session):
    """A session opened with ``?resume=1``: numbers and keeps its frames,
    and may go away and be taken over by a new connection."""

    __slots__ = (
        "_away_seq",
        "_away_timer",
        "_away_until",
        "_before_away",
        "_ending",
        "replay",
        "seq",
        "token",
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
        super().__init__(hub, wire, client_id, address, limit_key, url_token)
        #: The seq of the last frame sent (or kept, while away).
        self.seq = 0
        self.replay = ReplayBuffer(hub.limits.max_send_buffer or DEFAULT_REPLAY_BYTES, window(hub))
        #: The token that resumes this session (None once it ended).
        self.token: str | None = None
        self._away_timer: DelayedCall | None = None
        self._away_seq = 0
        #: When the grace of an away session ends (the clock's seconds).
        self._away_until = 0.0
        self._before_away = LOBBY
        self._ending = False

    def open(self) -> bytes:
        super().open()
        return messages.notify_client_id(self.client_id, self._new_token(), resumed=False)

    def _new_token(self) -> str:
        hub = self.hub
        tokens = hub.resume_tokens
        mover = hub.session_mover
        if self.token is not None:
            tokens.pop(self.token, None)
            if mover is not None:
                mover.used(self.token)
        self.token = token = new_token()
        tokens[token] = self
        if mover is not None:
            mover.issued(token, self.client_id)
        return token

    # -- frames ------------------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        self.seq = seq = self.seq + 1
        # Every encoded message is a JSON object: the seq goes in front.
        frame = b'{"seq":%d,' % seq + data[1:]
        if self.state is AWAY:
            if (
                # Away, what was sent before the drop may be what it missed.
                not self.replay.add(
                    seq, frame, self._away_seq + 1, self.hub.clock.seconds(), aging=False
                )
                and not self._ending
            ):
                # More kept than --max-send-buffer: ends as a slow reader
                # does. Not now: this runs inside a room's delivery.
                self._ending = True
                cancel(self._away_timer)
                self._away_timer = self.hub.clock.callLater(0, self._expire)
            return
        self.replay.add(seq, frame, seq, self.hub.clock.seconds())
        if self.wire.send_frame(frame):
            self.messages_out += 1

    # -- going away ------------------------------------------------------------------

    def lost(self, wire: Wire) -> None:
        if wire is not self.wire:
            return
        state = self.state
        grace = self.hub.limits.resume_grace
        if (state is not LOBBY and state is not IN_ROOM) or grace <= 0:
            self.closing(wire)
            return
        hub = self.hub
        self._before_away = state
        self.state = AWAY
        self.wire = NO_WIRE
        self._cancel_join_timer()
        self._away_seq = self.seq
        hub.sessions_away += 1
        self._away_until = hub.clock.seconds() + grace
        self._away_timer = hub.clock.callLater(grace, self._expire)
        hub.log.debug("away {client_id}", client_id=self.client_id)

    def _expire(self) -> None:
        self._away_timer = None
        if self.state is AWAY:
            self.hub.stats.sessions_expired += 1
            self.hub.log.debug("resume grace over {client_id}", client_id=self.client_id)
            self._end_away()

    def _back(self) -> None:
        """No longer away (resumed, or ending)."""
        cancel(self._away_timer)
        self._away_timer = None
        self._ending = False
        self.hub.sessions_away -= 1
        self.state = self._before_away

    def _end_away(self) -> None:
        """End as a disconnect does: ``leave-client`` to the room."""
        self._back()
        self.closed()

    def closed(self, wire: Wire | None = None) -> None:
        if wire is not None and wire is not self.wire:
            return
        if self.state is AWAY:
            self._end_away()
            return
        super().closed(wire)
        token, self.token = self.token, None
        if token is not None:
            self.hub.resume_tokens.pop(token, None)
            if self.hub.session_mover is not None:
                self.hub.session_mover.used(token)

    def close(self, code: int, reason: str, timeout: float | None = None) -> None:
        if self.state is AWAY:  # admin, shutdown: nothing to wait for
            self._end_away()
        else:
            super().close(code, reason, timeout)

    def abort(self) -> None:
        if self.state is AWAY:
            self._end_away()
        else:
            super().abort()

    # -- taking over -------------------------------------------------------------------

    def take_over(
        self, wire: Wire, last_seq: int, address: str, limit_key: str | None
    ) -> list[bytes] | None:
        """Carry on on ``wire``, the client having received every frame up to
        ``last_seq``: the frames to send it first (``notify-client-id`` and
        those after ``last_seq``), or None if this session cannot resume."""
        frames = self.replay.since(last_seq, self.seq)
        state = self.state
        if frames is None or not (state is AWAY or state is LOBBY or state is IN_ROOM):
            return None
        hub = self.hub
        if state is AWAY:
            self._back()
            if self.state is LOBBY:
                self._start_join_timer()
            self.wire = wire
        else:  # still connected: the older connection ends, the session does not
            old, self.wire = self.wire, wire
            old.close(CLOSE_RESUMED_ELSEWHERE, "resumed elsewhere")
        if limit_key != self.limit_key:
            hub.uncount_address(self.limit_key)
            hub.count_address(limit_key)
            self.limit_key = limit_key
        self.address = address
        hub.stats.sessions_resumed += 1
        hub.log.debug(
            "resume {client_id} from {address} after seq {last_seq}",
            client_id=self.client_id,
            address=address,
            last_seq=last_seq,
        )
        welcome = messages.notify_client_id(self.client_id, self._new_token(), resumed=True)
        self.messages_out += 1 + len(frames)
        return [welcome, *frames]

    # -- moving to another process --------------------------------------------------

    def hand_over(self) -> Moving | None:
        """Leave this process for another, keeping the room (no
        ``leave-client``): what the session takes with it, or None if it
        cannot move now (joining, closing). A connection it still has is
        closed with 4003, as a resume here does."""
        state = self.state
        if not (state is AWAY or state is LOBBY or state is IN_ROOM):
            return None
        hub = self.hub
        token = self.token
        assert token is not None
        room_id = self.room.room_id if self.room is not None else None
        if state is AWAY:
            left = self._away_until - hub.clock.seconds()
            in_room = self._before_away is IN_ROOM
            away_seq = self._away_seq
            self._back()
        else:
            left = hub.limits.resume_grace
            in_room = state is IN_ROOM
            away_seq = self.seq
        granted = self._granted
        moving = Moving(
            self.client_id,
            token,
            self.seq,
            away_seq,
            [(s, frame) for s, _, frame in self.replay.frames],
            max(left, 0.0),
            in_room,
            dict(granted[1].identity) if granted is not None else None,
            self.address,
            room_id,
        )
        # Gone from here without a leave: the room (and the gate) keep it.
        self._granted = None
        self.room = None
        self.token = None
        hub.resume_tokens.pop(token, None)
        if hub.session_mover is not None:
            hub.session_mover.used(token)
        self._cancel_join_timer()
        old, self.wire = self.wire, NO_WIRE
        self.state = CLOSED
        old.close(CLOSE_RESUMED_ELSEWHERE, "resumed elsewhere")
        self._forget()
        hub.stats.sessions_moved_out += 1
        hub.log.debug("session {client_id} moved to another process", client_id=self.client_id)
        return moving


def hand_over(hub: Hub, token: str) -> tuple[ResumableSession, Moving] | None:
    """The session of ``token`` leaves this process (see
    :meth:`ResumableSession.hand_over`), or None if there is none to move."""
    session = hub.resume_tokens.get(token)
    if not isinstance(session, ResumableSession) or hub.limits.resume_grace <= 0:
        return None
    moving = session.hand_over()
    return None if moving is None else (session, moving)


def arrive(hub: Hub, moving: Moving, room: Room | None = None) -> ResumableSession:
    """A session that moved here from another process: away, under its
    token, until its client takes it over (or the grace left ends), in
    ``room`` (this process's view of it, where the rooms put it)."""
    session = ResumableSession(hub, NO_WIRE, moving.client_id, moving.address, None)
    session.room = room
    hub.sessions[session.client_id] = session
    hub.stats.connections_total += 1
    session.seq = moving.seq
    replay = session.replay
    now = hub.clock.seconds()
    for seq, frame in moving.frames:
        replay.frames.append((seq, now, frame))
        replay.size += len(frame)
    if moving.granted is not None and moving.room_id is not None:
        session._granted = (moving.room_id, Grant(identity=moving.granted))
    session.state = AWAY
    session._before_away = IN_ROOM if moving.in_room else LOBBY
    session._away_seq = moving.away_seq
    hub.sessions_away += 1
    left = max(moving.grace_left, 0.0)
    session._away_until = hub.clock.seconds() + left
    session._away_timer = hub.clock.callLater(left, session._expire)
    session.token = moving.token
    hub.resume_tokens[moving.token] = session
    if hub.session_mover is not None:
        hub.session_mover.issued(moving.token, session.client_id)
    hub.stats.sessions_moved_in += 1
    return session


def connect(
    hub: Hub,
    wire: Wire,
    new_id: Callable[[], str],
    address: str,
    limit_key: str | None,
    url_token: str | None,
    *,
    resume: bool,
    token: str | None,
    last_seq: str | None,
) -> tuple[Session, list[bytes]]:
    """The session of a new connection that asked to resume (``token``,
    ``last_seq``) or to be able to (``resume``), and the frames to send it
    first. Without ``token``, the session is new; ``resume`` is ignored
    while ``--resume-grace`` is 0."""
    enabled = hub.limits.resume_grace > 0
    first: list[bytes] = []
    if token is not None:
        session = hub.resume_tokens.pop(token, None) if enabled else None
        seq = _parse_seq(last_seq)
        if isinstance(session, ResumableSession) and seq is not None:
            frames = session.take_over(wire, seq, address, limit_key)
            if frames is not None:
                return session, frames
        hub.stats.errors[messages.RESUME_FAILED] += 1
        first.append(
            messages.error(
                messages.RESUME_FAILED,
                "no session to resume: unknown, expired or used token, or frames after "
                "last_seq no longer kept"
                if enabled
                else "resuming is turned off on this server",
            )
        )
    if resume and enabled:
        fresh: Session = ResumableSession(hub, wire, new_id(), address, limit_key, url_token)
        first.append(fresh.open())
    else:
        fresh = Session(hub, wire, new_id(), address, limit_key, url_token)
        welcome = fresh.open()
        first.append(
            welcome if token is None else messages.notify_client_id(fresh.client_id, resumed=False)
        )
    fresh.messages_out += len(first) - 1
    return fresh, first


def _parse_seq(value: str | None) -> int | None:
    """``last_seq``: a count (0 when not given), or None if malformed."""
    if value is None:
        return 0
    if not value.isdigit() or len(value) > 18:
        return None
    return int(value)
