"""Rooms spanning processes and machines, shared through Redis: :class:`RedisRooms`.

Each process is a *node* with a random id. Membership lives in Redis and
changes only through the Lua scripts of :mod:`signaling.backplane.scripts`,
one atomic script per join or leave, each taking the next number of one
event counter. A script publishes its event to the inbox channel of every
node with members in the room; a node subscribes to its own inbox alone.

A node keeps, for each room where it holds members, a view of the room
(member -> node and join number) built from its first member's join reply and
kept up by the events on its inbox, which arrive in counter order. The
notices follow one rule: a member hears of an event (``new-client``,
``leave-client``) exactly when the event's number is above its own join's.
Replies and inbox messages come on two connections, so an inbox message can
arrive before the reply of the join it follows; what arrives for a member
whose join is still pending is held and handed over after its ``joined``.

Relays to a member of this node are delivered at once, with no Redis. Relays
to another node are queued and published to its inbox once per reactor turn,
all in one ``PUBLISH`` of length-prefixed records that carry the encoded
frame; one command connection keeps them in order, and each inbox message is
delivered in publish order, so per-sender-per-target order holds.

Liveness: each node refreshes a key with a TTL every ``heartbeat`` seconds
and, as often, declares dead every node whose key has expired, removing its
members (one atomic script, so one node does it). A node that finds itself
declared dead (it was frozen, or cut off) closes its members and starts over
under a new id. While Redis cannot be reached, joins and relays to other
nodes fail at once with :class:`~signaling.core.rooms.RoomsUnavailable`;
local relays go on. On reconnection the node re-registers its members
(``RESYNC``), then compares each room with Redis and tells its members what
they missed.
"""

from __future__ import annotations

import os
import struct
from base64 import urlsafe_b64encode
from collections.abc import Callable, Iterator
from typing import Any, cast

import orjson
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults, succeed
from twisted.python.failure import Failure

from signaling.backplane import scripts
from signaling.backplane.redis import (
    RedisAddress,
    RedisClient,
    RedisSubscriber,
    Unavailable,
)
from signaling.core import messages
from signaling.core.clock import Clock, DelayedCall, cancel
from signaling.core.logbudget import LogBudget
from signaling.core.resume import Moving, ResumableSession
from signaling.core.rooms import (
    AlreadyInRoom,
    Identity,
    JoinDone,
    Joined,
    JoinRefused,
    Member,
    RoomFull,
    RoomsHealth,
    RoomsUnavailable,
    TooManyRooms,
    tighter,
)
from signaling.logs import ServerLogger

__all__ = ["DEFAULT_PREFIX", "RedisRoom", "RedisRooms", "RedisRoomsService"]

_log = ServerLogger()

DEFAULT_PREFIX = "signaling:"
#: Header of one relayed frame in an inbox message: target id length, frame
#: length, target's join number; then the id and the frame.
_RECORD = struct.Struct(">BIQ")
_RELAYS = b"R"
#: Inbox records that move a session: a request for it, and the answer.
_WANTED = b"Q"
_HANDED = b"H"
#: A member that moved here hears of no event until its move is done.
_NOT_YET = 1 << 62
#: Seconds a dead node's id is remembered (so that it cannot come back).
REMEMBER_DEAD = 86400
#: Close code of a session that arrived from another node but could not be
#: moved in Redis after all (as for a node declared dead: reconnect).
CLOSE_LOST_IN_MOVE = 1012
#: Join and leave failures logged a minute, of each kind (the rest counted).
LOG_FAILURES_PER_MINUTE = 10


def new_node_id() -> str:
    return urlsafe_b64encode(os.urandom(9)).decode()


class _Local:
    """A member this node holds: joined (``number`` set) or joining."""

    __slots__ = ("cancelled", "done", "held", "identity", "member", "number", "room_id", "since")

    def __init__(self, member: Member, room_id: str, done: JoinDone, identity: bytes) -> None:
        self.member = member
        self.room_id = room_id
        self.done = done
        #: Its identity as stored in Redis (JSON), or empty: kept to put it
        #: back after Redis restarted empty.
        self.identity = identity
        #: The join's number in the room's events; None until its reply.
        self.number: int | None = None
        #: What arrived before the reply: (is relay, number, frame).
        self.held: list[tuple[bool, int, bytes]] = []
        #: Left while joining: undo the join when its reply comes.
        self.cancelled = False
        #: Events up to this number are not news to it (it moved here from
        #: another node, which told it of them, or will be told of them
        #: when the move is done).
        self.since = 0


class RedisRoom:
    """This node's view of one room: every member (on any node) in join order."""

    __slots__ = (
        "_rooms",
        "early",
        "here",
        "left",
        "local",
        "members",
        "number",
        "ready",
        "room_id",
    )

    def __init__(self, rooms: RedisRooms, room_id: str) -> None:
        self._rooms = rooms
        self.room_id = room_id
        #: member id -> (node id, join number), in join order.
        self.members: dict[str, tuple[str, int]] = {}
        #: The members this node holds here, joined or joining.
        self.local: dict[str, _Local] = {}
        #: Those of them that have joined: the relay path's one lookup.
        self.here: dict[str, _Local] = {}
        #: The number of the last event applied to ``members``.
        self.number = 0
        #: False until the first join reply gives the members.
        self.ready = False
        #: Inbox events that came before that reply.
        self.early: list[list[Any]] = []
        #: Leaves (member -> number) seen while a comparison with Redis is on its way.
        self.left: dict[str, int] = {}

    def send(self, target_id: str, data: bytes) -> bool:
        local = self.here.get(target_id)
        if local is not None:
            local.member.deliver(data)
            return True
        entry = self.members.get(target_id)
        if entry is None:
            return False
        node, number = entry
        rooms = self._rooms
        if node != rooms.node_id:
            return rooms._relay(node, target_id, number, data)
        local = rooms._local.get(target_id)
        if local is None:
            return False
        if local.number == number:
            local.member.deliver(data)
            return True
        if local.number is None and not local.cancelled:
            # Its join's event came back before its reply: hold it.
            local.held.append((True, number, data))
            return True
        return False

    def broadcast(self, data: bytes) -> int:
        sent = 0
        for member_id in list(self.members):
            try:
                sent += self.send(member_id, data)
            except RoomsUnavailable:
                pass
        return sent

    def member_ids(self) -> list[str]:
        return list(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"<RedisRoom {self.room_id!r} members={len(self.members)} local={len(self.local)}>"


class RedisRooms:
    """Rooms shared through Redis by any number of processes (see the module).

    ``on_evicted`` is called with the members this node held when it finds
    itself declared dead; they must be disconnected (they are no longer in
    their rooms). ``heartbeat`` seconds between liveness refreshes and
    checks; a node is declared dead ``ttl`` seconds after its last refresh.
    ``reply_timeout``: seconds a reply from Redis may be overdue before the
    connection is dropped and made again. ``max_backlog``: bytes of relays
    sent to Redis and not yet answered beyond which relays to other nodes
    are refused (Redis is behind; what waits is in this process's memory).
    """

    def __init__(
        self,
        address: RedisAddress,
        clock: Clock,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_room_size: int = 0,
        max_rooms: int = 0,
        heartbeat: float = 1.0,
        ttl: float = 5.0,
        on_evicted: Callable[[list[Member]], object] | None = None,
        on_room_closed: Callable[[list[Member], str], object] | None = None,
        reactor: Any = None,
        retry_policy: Callable[[int], float] | None = None,
        reply_timeout: float = 5.0,
        max_backlog: int = 16 * 1024 * 1024,
    ) -> None:
        self.address = address
        self.prefix = prefix
        self.max_room_size = max_room_size
        self.max_rooms = max_rooms
        self.heartbeat = heartbeat
        self.ttl = ttl
        self.on_evicted = on_evicted
        self.on_room_closed = on_room_closed
        self.max_backlog = max_backlog
        self._clock = clock
        self.node_id = new_node_id()
        options: dict[str, Any] = {
            "reactor": reactor if reactor is not None else clock,
            "reply_timeout": reply_timeout,
            "connect_timeout": reply_timeout,
        }
        if retry_policy is not None:
            options["retry_policy"] = retry_policy
        self._client = RedisClient(
            address,
            on_connected=self._commands_up,
            on_disconnected=self._commands_down,
            **options,
        )
        self._subscriber = RedisSubscriber(
            address,
            on_connected=self._inbox_up,
            on_disconnected=self._inbox_down,
            **options,
        )
        self._join = self._client.script(scripts.JOIN)
        self._leave = self._client.script(scripts.LEAVE)
        self._heartbeat = self._client.script(scripts.HEARTBEAT)
        self._reap = self._client.script(scripts.REAP)
        self._unregister = self._client.script(scripts.UNREGISTER)
        self._resync = self._client.script(scripts.RESYNC)
        self._snapshot = self._client.script(scripts.SNAPSHOT)
        self._close_room = self._client.script(scripts.CLOSE_ROOM)
        self._list_rooms = self._client.script(scripts.LIST_ROOMS)
        self._find_holder = self._client.script(scripts.FIND_HOLDER)
        self._move = self._client.script(scripts.MOVE)
        self._leave_if_held = self._client.script(scripts.LEAVE_IF_HELD)
        #: Moving sessions between nodes (resume elsewhere), set by the
        #: server: ``hand_over(token)`` lets a session of this node go, as
        #: (its member, what it takes); ``arrive(moving, room)`` makes the
        #: member of a session that came here, away until taken over.
        self.hand_over: Callable[[str], tuple[ResumableSession, Moving] | None] | None = None
        self.arrive: Callable[[Moving, RedisRoom | None], ResumableSession] | None = None
        #: Requests for sessions on other nodes: id -> (done, timeout).
        self._fetching: dict[str, tuple[Callable[[], None], DelayedCall]] = {}
        #: Members that moved to another node lately: id -> (node, join
        #: number, until when relays that reach this node are passed on,
        #: room).
        self._moved: dict[str, tuple[str, int, float, str]] = {}
        #: The resume tokens of the sessions here (token -> client id), which
        #: Redis holds in ``P node:N:resume``: written again at each
        #: registration, so that what changed while Redis was unreachable is
        #: neither lost nor left behind.
        self._resume_tokens: dict[str, str] = {}
        self.sessions_moved = 0
        self._local: dict[str, _Local] = {}
        self._views: dict[str, RedisRoom] = {}
        self._outbox: dict[str, list[bytes]] = {}
        self._outbox_sizes: dict[str, int] = {}
        #: Bytes of relays published whose reply has not come yet.
        self._unanswered = 0
        self._flush_call: DelayedCall | None = None
        self._beat_call: DelayedCall | None = None
        self._reconcile_call: DelayedCall | None = None
        self._registered = False
        self._synced = False
        #: Whether this process has been in the cluster (registered) before.
        self._was_registered = False
        #: The cluster's grace after an outage is on (as of the last heartbeat).
        self.recovering = False
        #: Comparisons with Redis on their way (snapshots sent, not yet compared).
        self._comparing = 0
        self._stopping = False
        #: Counters for /metrics.
        self.relays_published = 0
        self.relays_lost = 0
        self.nodes_reaped = 0
        self.evictions = 0
        #: Rooms and live nodes in the whole cluster, as of the last heartbeat.
        self.rooms_in_cluster = 0
        self.nodes_in_cluster = 0
        self._prefix_bytes = prefix.encode()
        self._inbox_channel = self._channel(self.node_id)
        #: Inbox markers that ``settled`` and the reconciliation wait for.
        self._markers: dict[bytes, Deferred[None]] = {}
        self._syncs: dict[bytes, tuple[str, list[Any]]] = {}
        #: Members whose leave the members here heard of while Redis was
        #: unreachable: its event, published later, is not news to them.
        self._left_offline: set[str] = set()
        #: Clients decide how often joins and leaves fail (Redis out of
        #: memory, say): their failures are logged within a budget.
        self._log_budget = LogBudget(clock, LOG_FAILURES_PER_MINUTE, _log)
        #: Until this node first registers (or ``reply_timeout`` after its
        #: start, whichever is first), joins wait here rather than fail: a
        #: process just started is not in an outage.
        self._waiting: dict[str, tuple[str, Member, JoinDone, Identity | None, int]] = {}
        self._start_wait = reply_timeout
        self._start_call: DelayedCall | None = None
        self._starting = True
        self._started: list[Deferred[None]] = []

    # -- the Rooms boundary --------------------------------------------------------

    def join(
        self,
        room_id: str,
        member: Member,
        done: JoinDone,
        identity: Identity | None = None,
        max_room_size: int = 0,
    ) -> None:
        client_id = member.client_id
        current = self._local.get(client_id)
        if current is not None:
            done(AlreadyInRoom(current.room_id))
            return
        if client_id in self._waiting:
            done(AlreadyInRoom(self._waiting[client_id][0]))
            return
        if not self.available:
            if self._starting and not self._stopping:
                self._waiting[client_id] = (room_id, member, done, identity, max_room_size)
                return
            done(RoomsUnavailable("the rooms' store cannot be reached; try again shortly"))
            return
        encoded = orjson.dumps(dict(identity)) if identity else b""
        limit = tighter(self.max_room_size, max_room_size)
        local = self._local[client_id] = _Local(member, room_id, done, encoded)
        view = self._views.get(room_id)
        if view is None:
            view = self._views[room_id] = RedisRoom(self, room_id)
        view.local[client_id] = local
        self._flush()
        self._client.run_script(
            self._join,
            args=(
                self.prefix,
                room_id,
                client_id,
                self.node_id,
                limit,
                self.max_rooms,
                encoded,
            ),
        ).addCallbacks(
            self._join_reply,
            self._join_failed,
            callbackArgs=(local, limit),
            errbackArgs=(local,),
        )

    def leave(self, member: Member) -> None:
        client_id = member.client_id
        local = self._local.pop(client_id, None)
        if local is None:
            waiting = self._waiting.pop(client_id, None)
            if waiting is not None:
                waiting[2](RoomsUnavailable("left before the rooms' store was reached"))
            return
        known = self._known(local)
        view = self._forget(local)
        if local.number is None:
            # Its join is on its way: the leave goes right after it, in order
            # (a join again goes after both), and its reply only calls done.
            local.cancelled = True
        self._send_leave(local.room_id, client_id, view if known else None)

    def _known(self, local: _Local) -> bool:
        """Whether the other members here may have heard of ``local``."""
        view = self._views.get(local.room_id)
        return view is not None and local.member.client_id in view.members

    def room(self, room_id: str) -> RedisRoom | None:
        view = self._views.get(room_id)
        return view if view is not None and view.ready and view.members else None

    def room_of(self, client_id: str) -> RedisRoom | None:
        local = self._local.get(client_id)
        if local is None or local.number is None:
            return None
        return self._views.get(local.room_id)

    def rooms(self) -> Iterator[RedisRoom]:
        return iter([view for view in self._views.values() if view.ready and view.members])

    @property
    def room_count(self) -> int:
        """Rooms where this node holds members."""
        return sum(1 for _ in self.rooms())

    @property
    def member_count(self) -> int:
        """Members this node holds."""
        return sum(1 for local in self._local.values() if local.number is not None)

    # -- state ---------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether joins and relays to other nodes can be served now."""
        return (
            self._client.connected
            and self._subscriber.connected
            and self._registered
            and not self._stopping
        )

    def health(self) -> RoomsHealth:
        if self._stopping:
            detail = "stopping"
        elif not self._client.connected:
            detail = "no connection to Redis"
        elif not self._subscriber.connected:
            detail = "no subscription to Redis"
        elif not self._registered:
            detail = "registering with Redis"
        elif self.recovering:
            detail = "recovering from a Redis restart: joins wait until every process is back"
        else:
            return RoomsHealth(True, "connected to Redis", self.node_id)
        return RoomsHealth(False, detail, self.node_id)

    def counters(self) -> dict[str, int]:
        return {
            "backplane_up": int(self.available),
            "cluster_rooms": self.rooms_in_cluster,
            "cluster_nodes": self.nodes_in_cluster,
            "relays_published": self.relays_published,
            "relays_lost": self.relays_lost,
            "nodes_reaped": self.nodes_reaped,
            "evictions": self.evictions,
        }

    def started(self) -> Deferred[None]:
        """Fires once this node is first registered in Redis, or
        ``reply_timeout`` seconds after ``start`` if it cannot be (the node
        then serves local relays, degraded, until Redis is reached)."""
        if not self._starting:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._started.append(waiter)
        return waiter

    def _end_start(self) -> None:
        """Joins that waited for the first registration go ahead (or fail)."""
        if not self._starting:
            return
        self._starting = False
        cancel(self._start_call)
        self._start_call = None
        if not self.available and not self._stopping:
            _log.warn(
                "Redis not reached {wait:g} s after start: joins fail with"
                " 'unavailable' until it is",
                wait=self._start_wait,
            )
        waiting, self._waiting = self._waiting, {}
        for room_id, member, done, identity, max_room_size in waiting.values():
            self.join(room_id, member, done, identity, max_room_size)
        started, self._started = self._started, []
        for waiter in started:
            waiter.callback(None)

    def _start_over(self) -> None:
        self._start_call = None
        self._end_start()

    def start(self) -> None:
        self._start_call = self._clock.callLater(self._start_wait, self._start_over)
        self._client.start()
        self._subscriber.subscribe(self._inbox_channel, self._inbox).addErrback(lambda _: None)
        self._subscriber.start()
        self._schedule_beat()

    def stop(self) -> Deferred[None]:
        """Remove this node's members from Redis (the rooms hear
        ``leave-client``) and disconnect."""
        self._stopping = True
        self._end_start()
        cancel(self._beat_call)
        cancel(self._reconcile_call)
        self._beat_call = self._reconcile_call = None
        self._flush()
        done: Deferred[Any]
        if self._client.connected:
            done = self._client.run_script(self._unregister, args=(self.prefix, self.node_id))
            done.addErrback(
                lambda f: _log.warn(
                    "Could not remove this node's members from Redis: {error}",
                    error=f.getErrorMessage(),
                )
            )
        else:
            done = succeed(None)
        self._local.clear()
        self._views.clear()

        def disconnect(_: object) -> Deferred[Any]:
            return DeferredList([self._client.stop(), self._subscriber.stop()])

        return done.addBoth(disconnect).addBoth(lambda _: None)

    def settled(self) -> Deferred[None]:
        """Fires once every change started so far has taken effect here
        (its reply came, and its events came back on the inbox)."""
        self._flush()
        marker: Deferred[None] = Deferred()
        token = b"M" + os.urandom(8)
        self._markers[token] = marker

        def not_published(failure: Failure) -> None:
            self._markers.pop(token, None)
            marker.errback(failure)

        published: Deferred[Any] = self._client.publish(self._inbox_channel, token)
        published.addErrback(not_published)
        # The reply: every command before it has been answered; the marker:
        # every event published before it has arrived.
        both: list[Deferred[Any]] = [published, marker]
        return gatherResults(both, consumeErrors=True).addCallback(lambda _: None)

    # -- relays ----------------------------------------------------------------------

    def _relay(self, node: str, target_id: str, number: int, data: bytes) -> bool:
        if not self._client.connected or self._stopping:
            raise RoomsUnavailable("the server of this client cannot be reached; try again shortly")
        if self._unanswered > self.max_backlog:
            raise RoomsUnavailable("the rooms' store is behind; try again shortly")
        box = self._outbox.get(node)
        if box is None:
            box = self._outbox[node] = [_RELAYS]
            self._outbox_sizes[node] = 1
        target = target_id.encode()
        box.append(_RECORD.pack(len(target), len(data), number))
        box.append(target)
        box.append(data)
        self._outbox_sizes[node] += _RECORD.size + len(target) + len(data)
        if self._flush_call is None:
            self._flush_call = self._clock.callLater(0, self._flush)
        return True

    def _flush(self) -> None:
        """Publish the relays queued for other nodes, one message per node."""
        cancel(self._flush_call)
        self._flush_call = None
        if not self._outbox:
            return
        boxes, self._outbox = self._outbox, {}
        sizes, self._outbox_sizes = self._outbox_sizes, {}
        for node, parts in boxes.items():
            count = (len(parts) - 1) // 3
            size = sizes[node]
            self._unanswered += size
            self._client.publish_parts(self._channel(node), parts, size).addCallbacks(
                self._published,
                self._not_published,
                callbackArgs=(count, node, size),
                errbackArgs=(count, node, size),
            )

    def _published(self, receivers: int, count: int, node: str, size: int) -> None:
        self._unanswered -= size
        if receivers:
            self.relays_published += count
        else:
            # The node is gone (its members are about to be removed).
            self.relays_lost += count

    def _not_published(self, failure: Failure, count: int, node: str, size: int) -> None:
        self._unanswered -= size
        self.relays_lost += count
        _log.warn(
            "{count} relayed messages to node {node} may be lost: {error}",
            count=count,
            node=node,
            error=failure.getErrorMessage(),
        )

    def _channel(self, node: str) -> bytes:
        return self._prefix_bytes + b"inbox:" + node.encode()

    # -- the inbox -----------------------------------------------------------------

    def _inbox(self, message: bytes) -> None:
        kind = message[:1]
        if kind == _RELAYS:
            self._relays_received(message)
        elif kind == b"[":
            self._event(orjson.loads(message))
        elif kind == b"M":
            marker = self._markers.pop(message, None)
            if marker is not None:
                marker.callback(None)
        elif kind == b"S":
            self._sync_arrived(message)
        elif kind == _WANTED:
            self._wanted(message)
        elif kind == _HANDED:
            self._handed(message)

    def _relays_received(self, message: bytes) -> None:
        local = self._local
        offset, end = 1, len(message)
        unpack = _RECORD.unpack_from
        size = _RECORD.size
        while offset < end:
            target_length, frame_length, number = unpack(message, offset)
            offset += size
            target = message[offset : offset + target_length].decode()
            offset += target_length
            frame = message[offset : offset + frame_length]
            offset += frame_length
            entry = local.get(target)
            if entry is None:
                if self._moved:
                    self._pass_on(target, number, frame)
                continue  # it has left; the sender hears leave-client
            if entry.number == number:
                entry.member.deliver(frame)
            elif entry.number is None:
                entry.held.append((True, number, frame))

    def _event(self, event: list[Any]) -> None:
        view = self._views.get(event[1])
        if view is None:
            return
        if event[0] == "c":
            self._closed_by_operator(view, event[3])
            return
        if not view.ready:
            view.early.append(event)
            return
        self._apply(view, event)

    def _apply(self, view: RedisRoom, event: list[Any]) -> None:
        kind, _, number, member_id = event[0], event[1], event[2], event[3]
        if kind == "m":  # moved to another node: nothing to tell
            entry = view.members.get(member_id)
            if entry is not None and entry[1] == number and member_id not in view.local:
                view.members[member_id] = (event[4], number)
            return
        joining = kind == "j"
        if not joining and member_id in self._left_offline:
            self._left_offline.discard(member_id)
            return
        if number > view.number:
            view.number = number
            if not joining:
                view.members.pop(member_id, None)
                if self._comparing:
                    view.left[member_id] = number
            elif event[4] != self.node_id or member_id in view.local:
                view.members[member_id] = (event[4], number)
        if not joining:
            frame = messages.leave_client(member_id)
        elif len(event) > 5 and event[5]:
            frame = messages.new_client(member_id, orjson.loads(event[5]))
        else:
            frame = messages.new_client(member_id)
        self._notify(view, member_id, number, frame)

    def _notify(self, view: RedisRoom, member_id: str, number: int, frame: bytes) -> None:
        """Tell the members here that joined before event ``number``."""
        for local in list(view.local.values()):
            if local.member.client_id == member_id:
                continue
            if local.number is None:
                local.held.append((False, number, frame))
            elif local.number < number and local.since < number:
                local.member.deliver(frame)

    # -- sessions moving between nodes (a resume on another node) ----------------------
    #
    # The node B where a client resumes with a token it does not hold finds
    # the holder A (``P node:A:resume`` has T) and asks it on its inbox (_WANTED). A
    # lets the session go without a leave and answers on B's inbox
    # (_HANDED) with what the session takes and its place in the room, then
    # passes on to B the relays that still reach it for the member (for
    # twice the node timeout). B makes the session (away, under its token),
    # holds it as a member at once, and moves it in Redis (MOVE, which
    # tells the room's nodes where it is now); the join and leave events
    # the member missed meanwhile are worked out from A's view of the room
    # and the one MOVE returns.

    def issued(self, token: str, client_id: str) -> None:
        """The session of ``client_id`` here may resume with ``token``, on
        any node, for as long as this node lives (or until ``used``)."""
        self._resume_tokens[token] = client_id
        if self._client.connected:
            self._client.execute(b"HSET", self._resume_key(), token, client_id).addErrback(
                lambda _: None
            )

    def used(self, token: str) -> None:
        self._resume_tokens.pop(token, None)
        if self._client.connected:
            self._client.execute(b"HDEL", self._resume_key(), token).addErrback(lambda _: None)

    def _write_resume_tokens(self) -> None:
        """Make ``P node:N:resume`` hold exactly this node's tokens."""
        key = self._resume_key()
        self._client.execute(b"DEL", key).addErrback(lambda _: None)
        pairs = [part for item in self._resume_tokens.items() for part in item]
        for start in range(0, len(pairs), 2000):
            self._client.execute(b"HSET", key, *pairs[start : start + 2000]).addErrback(
                lambda _: None
            )

    def _resume_key(self) -> bytes:
        return self._prefix_bytes + b"node:" + self.node_id.encode() + b":resume"

    def fetch(self, token: str, done: Callable[[], None]) -> None:
        if not self.available or self.hand_over is None or self.arrive is None:
            done()
            return
        request = urlsafe_b64encode(os.urandom(9)).decode()
        timer = self._clock.callLater(self._start_wait, self._fetched, request)
        self._fetching[request] = (done, timer)

        def found(node: bytes | None) -> None:
            if node is None or request not in self._fetching:
                self._fetched(request)
                return
            message = _WANTED + orjson.dumps({"t": token, "n": self.node_id, "r": request})
            self._client.publish(self._channel(node.decode()), message).addCallbacks(
                lambda receivers: None if receivers else self._fetched(request),
                lambda _: self._fetched(request),
            )

        self._client.run_script(
            self._find_holder, args=(self.prefix, token, self.node_id)
        ).addCallbacks(found, lambda _: self._fetched(request))

    def _fetched(self, request: str) -> None:
        """The request for a session is over (here, or not coming)."""
        entry = self._fetching.pop(request, None)
        if entry is not None:
            cancel(entry[1])
            entry[0]()

    def _wanted(self, message: bytes) -> None:
        """Another node asks for the session of a token this node holds."""
        try:
            request = orjson.loads(message[1:])
            token, node, request_id = str(request["t"]), str(request["n"]), request["r"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        answer: dict[str, Any] = {"r": request_id, "from": self.node_id}
        handed = None
        if self.hand_over is not None and not self._stopping and node != self.node_id:
            handed = self.hand_over(token)
        left: _Local | None = None
        if handed is not None:
            member, moving = handed
            answer["s"] = moving.to_json()
            client_id = member.client_id
            local = self._local.get(client_id)
            if local is not None and local.number is not None:
                del self._local[client_id]
                view = self._views.get(local.room_id)
                answer["room"] = local.room_id
                answer["number"] = local.number
                answer["identity"] = local.identity.decode()
                answer["members"] = (
                    [[m, n] for m, (_, n) in view.members.items()] if view is not None else []
                )
                self._forget(local)
                view = self._views.get(local.room_id)
                if view is not None:  # the others here relay to it there now
                    view.members[client_id] = (node, local.number)
                until = self._clock.seconds() + 2 * self.ttl
                self._moved[client_id] = (node, local.number, until, local.room_id)
                left = local
            self.sessions_moved += 1
        self._flush()  # what was relayed to it before goes first
        self._client.publish(self._channel(node), _HANDED + orjson.dumps(answer)).addCallbacks(
            self._handed_on, self._not_handed_on, callbackArgs=(left,), errbackArgs=(left,)
        )

    def _handed_on(self, receivers: int, left: _Local | None) -> None:
        if not receivers:
            self._not_handed_on(None, left)

    def _not_handed_on(self, failure: Failure | None, left: _Local | None) -> None:
        """The node that asked for a session did not get it: it is gone, and
        so must its member be."""
        if left is None:
            return
        client_id = left.member.client_id
        self._moved.pop(client_id, None)
        _log.warn("A session moving to another node was lost: {client_id}", client_id=client_id)
        self._send_leave(left.room_id, client_id, self._views.get(left.room_id))

    def _check_moved(self, client_id: str, room_id: str) -> None:
        """A member handed over a while ago: if the node it went to never
        moved it in Redis (it died meanwhile), it is still this node's
        there, and must go."""
        if self._client.connected and not self._stopping:
            self._client.run_script(
                self._leave_if_held, args=(self.prefix, room_id, client_id, self.node_id)
            ).addErrback(self._beat_failed)

    def _pass_on(self, target: str, number: int, frame: bytes) -> None:
        """A relay for a member that moved to another node lately: there."""
        moved = self._moved.get(target)
        if moved is None or moved[1] != number:
            return
        try:
            self._relay(moved[0], target, number, frame)
        except RoomsUnavailable:
            self.relays_lost += 1

    def _handed(self, message: bytes) -> None:
        """The answer of the node asked for a session."""
        answer = orjson.loads(message[1:])
        request = answer.get("r")
        state = answer.get("s")
        if state is None or self.arrive is None or self._stopping:
            self._fetched(request)
            return
        moving = Moving.from_json(state)
        room_id = answer.get("room")
        if room_id is None:  # in no room: nothing to move
            self.arrive(moving, None)
            self._fetched(request)
            return
        number = int(answer["number"])
        view = self._views.get(room_id)
        if view is None:
            view = self._views[room_id] = RedisRoom(self, room_id)
        member = self.arrive(moving, view)
        client_id = member.client_id
        # Back here within the forwarding time: this node holds it again.
        self._moved.pop(client_id, None)
        identity = str(answer.get("identity") or "").encode()
        local = _Local(member, room_id, _no_answer, identity)
        local.number = number
        local.since = _NOT_YET
        self._local[client_id] = local
        view.local[client_id] = local
        view.here[client_id] = local
        if view.ready:
            view.members[client_id] = (self.node_id, number)
        before = {str(m): int(n) for m, n in answer.get("members", [])}
        self._flush()
        self._client.run_script(
            self._move,
            args=(self.prefix, room_id, client_id, number, str(answer["from"]), self.node_id),
        ).addCallbacks(
            self._moved_here,
            self._not_moved_here,
            callbackArgs=(local, before, request),
            errbackArgs=(local, request),
        )

    def _moved_here(
        self, reply: list[Any], local: _Local, before: dict[str, int], request: str
    ) -> None:
        client_id = local.member.client_id
        if reply[0] != b"ok":
            self._drop_arrival(local, leave=False)
            self._fetched(request)
            return
        view = self._views.get(local.room_id)
        if view is None or self._local.get(client_id) is not local:
            self._fetched(request)  # it left (or this node let go) meanwhile
            return
        counter = int(reply[1])
        identities = _identities(reply[2])
        now = {
            reply[i].decode(): (reply[i + 2].decode(), int(reply[i + 1]))
            for i in range(3, len(reply), 3)
        }
        # What the member missed while moving: the room as the old node
        # last told it, against the room now (at event ``counter``).
        member = local.member
        # A member there before and now under another join number left and
        # joined again meanwhile: both are news.
        for member_id, number in before.items():
            if member_id != client_id and (member_id not in now or now[member_id][1] != number):
                member.deliver(messages.leave_client(member_id))
        for member_id, (_, number) in now.items():
            if member_id != client_id and before.get(member_id) != number:
                member.deliver(messages.new_client(member_id, identities.get(member_id)))
        local.since = counter
        if not view.ready:
            view.members = now
            view.members[client_id] = (self.node_id, local.number or 0)
            view.number = counter
            view.ready = True
            early, view.early = view.early, []
            for event in early:
                self._apply(view, event)
        self._fetched(request)

    def _not_moved_here(self, failure: Failure, local: _Local, request: str) -> None:
        if not failure.check(Unavailable) and self._log_budget.allow("Redis move failure"):
            _log.failure("Moving a session in Redis failed", failure)
        self._drop_arrival(local, leave=True)
        self._fetched(request)

    def _drop_arrival(self, local: _Local, leave: bool) -> None:
        """A session that came here but whose member could not be moved (it
        is gone from its room, or Redis failed): it ends, without a
        ``leave-client`` from here unless ``leave``."""
        client_id = local.member.client_id
        if self._local.get(client_id) is not local:
            return
        del self._local[client_id]
        view = self._forget(local)
        if leave:
            self._send_leave(local.room_id, client_id, view)
        # It ends (a server's close is no drop: it does not go away again).
        cast(ResumableSession, local.member).close(
            CLOSE_LOST_IN_MOVE, "session lost while moving; reconnect"
        )

    # -- the whole cluster (admin) ---------------------------------------------------

    def cluster_rooms(self, limit: int = 10_000) -> Deferred[dict[str, list[str]]]:
        """Every room in the cluster (at most ``limit``) and its members in
        join order, whichever process holds them."""

        def parse(reply: list[Any]) -> dict[str, list[str]]:
            rooms: dict[str, list[str]] = {}
            at = 0
            while at < len(reply):
                count = int(reply[at + 1])
                rooms[reply[at].decode()] = [m.decode() for m in reply[at + 2 : at + 2 + count]]
                at += 2 + count
            return rooms

        return self._client.run_script(self._list_rooms, args=(self.prefix, limit)).addCallback(
            parse
        )

    def close_room(self, room_id: str, reason: str) -> Deferred[int]:
        """Have every process close the connections of the room's members
        (``on_room_closed``); fires with how many members the room had."""
        self._flush()
        return self._client.run_script(self._close_room, args=(self.prefix, room_id, reason))

    def _closed_by_operator(self, view: RedisRoom, reason: str) -> None:
        members = [local.member for local in view.local.values()]
        if members and self.on_room_closed is not None:
            self.on_room_closed(members, reason)

    # -- joins and leaves ------------------------------------------------------------

    def _join_reply(self, reply: list[Any], local: _Local, limit: int) -> None:
        status = reply[0]
        client_id = local.member.client_id
        if status != b"ok":
            self._forget(local)
            if self._local.get(client_id) is local:
                del self._local[client_id]
            refused: JoinRefused
            if status == b"room_full":
                refused = RoomFull(limit)
            elif status == b"too_many_rooms":
                refused = TooManyRooms(self.max_rooms)
            elif status == b"recovering":
                refused = RoomsUnavailable(
                    "the rooms are recovering from an outage; try again in a few seconds"
                )
            else:  # b"dead": this node was declared dead; the heartbeat will see to it
                refused = RoomsUnavailable("the rooms' store cannot be reached; try again shortly")
                self._beat()
            local.done(refused)
            return
        number = int(reply[1])
        identities = _identities(reply[2])
        before = [
            (reply[i].decode(), int(reply[i + 1]), reply[i + 2].decode())
            for i in range(3, len(reply), 3)
        ]
        existing = [member_id for member_id, _, _ in before]
        if local.cancelled:  # its leave is on its way already
            local.done(Joined(RedisRoom(self, local.room_id), existing, identities))
            return
        view = self._views.get(local.room_id)
        if view is None or self._local.get(client_id) is not local:
            # This node let go of it meanwhile (declared dead, or stopping):
            # undo the join, which Redis made under the node's old id.
            self._send_leave(local.room_id, client_id, None)
            local.done(Joined(RedisRoom(self, local.room_id), existing, identities))
            return
        if not view.ready:
            view.members = {m: (node, n) for m, n, node in before}
            view.members[client_id] = (self.node_id, number)
            view.number = number
            view.ready = True
            early, view.early = view.early, []
            for event in early:
                self._apply(view, event)
        elif client_id not in view.members:
            view.members[client_id] = (self.node_id, number)
        local.number = number
        view.here[client_id] = local
        held, local.held = local.held, []
        local.done(Joined(view, existing, identities))
        member = local.member
        for is_relay, at, frame in held:
            if self._local.get(client_id) is not local:
                break  # it left in the meantime
            if at == number if is_relay else at > number:
                member.deliver(frame)

    def _join_failed(self, failure: Failure, local: _Local) -> None:
        self._forget(local)
        if self._local.get(local.member.client_id) is local:
            del self._local[local.member.client_id]
        if failure.check(Unavailable):
            refused = RoomsUnavailable("the rooms' store cannot be reached; try again shortly")
        else:
            if self._log_budget.allow("Redis join failure"):
                _log.failure("A join failed in Redis", failure)
            refused = RoomsUnavailable("the rooms' store refused the join")
        local.done(refused)

    def _forget(self, local: _Local) -> RedisRoom | None:
        """Take ``local`` out of its room's view; drop a view left with no member here."""
        view = self._views.get(local.room_id)
        if view is None:
            return None
        client_id = local.member.client_id
        if view.local.get(client_id) is local:
            del view.local[client_id]
            view.here.pop(client_id, None)
            view.members.pop(client_id, None)
        if not view.local:
            del self._views[local.room_id]
        return view

    def _send_leave(self, room_id: str, client_id: str, view: RedisRoom | None) -> None:
        self._flush()
        if self._client.connected:
            self._client.run_script(
                self._leave, args=(self.prefix, room_id, client_id)
            ).addCallbacks(
                self._left,
                self._leave_failed,
                callbackArgs=(client_id, view),
                errbackArgs=(client_id, view),
            )
        else:
            self._leave_failed(None, client_id, view)

    def _left(self, number: int | None, client_id: str, view: RedisRoom | None) -> None:
        if number is None:
            # Redis did not have it (lost in an outage): no event will come,
            # so the members here that knew it hear of it now.
            self._tell_here(client_id, view)

    def _leave_failed(
        self, failure: Failure | None, client_id: str, view: RedisRoom | None
    ) -> None:
        # Redis will hear of it when this node registers again (RESYNC); the
        # members here hear of it now.
        if failure is not None and not failure.check(Unavailable):
            if self._log_budget.allow("Redis leave failure"):
                _log.failure("A leave failed in Redis; re-registering", failure)
            self._registered = False  # the next heartbeat makes Redis agree
        if view is not None and view.local:
            self._left_offline.add(client_id)
        self._tell_here(client_id, view)

    def _tell_here(self, client_id: str, view: RedisRoom | None) -> None:
        """``leave-client`` to the joined members of ``view`` in this process."""
        if view is None or not view.local:
            return
        frame = messages.leave_client(client_id)
        for local in list(view.local.values()):
            if local.number is not None:
                local.member.deliver(frame)

    # -- connection, liveness, recovery ----------------------------------------------

    def _commands_up(self) -> None:
        self._registered = False
        self._beat()

    def _commands_down(self) -> None:
        self._registered = False
        self._synced = False
        _log.warn("Rooms on other processes are unreachable until Redis is back")

    def _inbox_up(self) -> None:
        if self.available:
            self._end_start()
        # Events published while the subscription was down are lost.
        if self._registered and self._reconcile_call is None:
            self._reconcile_all()

    def _inbox_down(self) -> None:
        # Comparisons on their way will not come back: they are made again
        # when the subscription is (_inbox_up).
        self._syncs.clear()
        self._comparing = 0
        for view in self._views.values():
            view.left.clear()

    def _schedule_beat(self) -> None:
        if not self._stopping:
            self._beat_call = self._clock.callLater(self.heartbeat, self._tick)

    def _tick(self) -> None:
        self._beat_call = None
        if self._moved:
            now = self._clock.seconds()
            for client_id, (_, _, until, room_id) in list(self._moved.items()):
                if until < now:
                    del self._moved[client_id]
                    if client_id not in self._local:
                        self._check_moved(client_id, room_id)
        if self._client.connected:
            self._beat()
        self._schedule_beat()

    def _beat(self) -> None:
        ttl_ms = int(self.ttl * 1000)
        before = int(self._was_registered)
        self._client.run_script(
            self._heartbeat, args=(self.prefix, self.node_id, ttl_ms, before)
        ).addCallbacks(self._beaten, self._beat_failed, callbackArgs=(self.node_id,))

    def _beaten(self, reply: list[int], node_id: str) -> None:
        if self._stopping or node_id != self.node_id:
            return  # a reply for the id this node had before an eviction
        alive, self.rooms_in_cluster, self.nodes_in_cluster, grace = reply
        self.recovering = bool(grace)
        if not alive:
            self._evicted()
            return
        if not self._registered:
            self._register()
        elif not grace:
            self._client.run_script(
                self._reap, args=(self.prefix, self.node_id, REMEMBER_DEAD)
            ).addCallbacks(self._reaped, self._beat_failed)

    def _beat_failed(self, failure: Failure) -> None:
        if not failure.check(Unavailable) and self._log_budget.allow("Redis liveness failure"):
            _log.failure("A liveness check failed in Redis", failure)

    def _reaped(self, reply: list[Any]) -> None:
        for i in range(0, len(reply), 2):
            self.nodes_reaped += 1
            _log.warn(
                "Node {node} stopped refreshing its liveness key: declared dead,"
                " {count} of its members removed",
                node=reply[i].decode(),
                count=reply[i + 1],
            )

    def _register(self) -> None:
        """After a (re)connection: make Redis hold exactly this node's members."""
        held: list[Any] = []
        for client_id, local in self._local.items():
            if local.number is not None:
                held.extend((client_id, local.room_id, local.number, local.identity))
        # Redis restarted empty must not number events below those seen here.
        seen = 0
        for view in self._views.values():
            seen = max(seen, view.number, *(number for _, number in view.members.values()))
        self._client.run_script(
            self._resync, args=(self.prefix, self.node_id, seen, *held)
        ).addCallbacks(self._registered_now, self._beat_failed)

    def _registered_now(self, reply: list[Any]) -> None:
        removed, restored, lost = reply
        first = not self._synced
        self._registered = self._synced = self._was_registered = True
        self._write_resume_tokens()
        if removed or restored or lost:
            _log.info(
                "Re-registered with Redis: {restored} members put back, {removed} removed,"
                " {lost} lost",
                restored=restored,
                removed=removed,
                lost=len(lost),
            )
        if lost:
            self._let_go([m.decode() for m in lost])
        if self.available:
            self._end_start()
        if first:
            # Compare the rooms with Redis once every live node has had its
            # chance to re-register (after Redis restarted empty, a member
            # not yet put back by its node is not gone).
            cancel(self._reconcile_call)
            self._reconcile_call = self._clock.callLater(2 * self.ttl, self._reconcile_late)

    def _reconcile_late(self) -> None:
        self._reconcile_call = None
        self._left_offline.clear()
        self._reconcile_all()

    def _evicted(self) -> None:
        """This node was declared dead: its members are out of their rooms."""
        self.evictions += 1
        members = [local.member for local in self._local.values()]
        _log.error(
            "This node ({node}) was declared dead (it stopped refreshing its liveness"
            " key for {ttl:g} s); closing its {count} members and starting over",
            node=self.node_id,
            ttl=self.ttl,
            count=len(members),
        )
        self._local.clear()
        self._views.clear()
        self._outbox.clear()
        self._outbox_sizes.clear()
        self._subscriber.unsubscribe(self._inbox_channel).addErrback(lambda _: None)
        self.node_id = new_node_id()
        self._inbox_channel = self._channel(self.node_id)
        self._registered = False
        self._subscriber.subscribe(self._inbox_channel, self._inbox).addErrback(lambda _: None)
        if self.on_evicted is not None:
            self.on_evicted(members)
        self._beat()

    def _let_go(self, client_ids: list[str]) -> None:
        """Members this node holds that Redis lost while the others went on
        (they were told these left): out of their rooms here too, and
        disconnected (``on_evicted``) to join again."""
        members = []
        for client_id in client_ids:
            local = self._local.get(client_id)
            if local is not None:
                members.append(local.member)
                self.leave(local.member)
        _log.warn(
            "{count} members of this node were lost from Redis after the grace; closing them",
            count=len(members),
        )
        if members and self.on_evicted is not None:
            self.on_evicted(members)

    def _reconcile_all(self) -> None:
        for room_id, view in list(self._views.items()):
            if view.ready:
                # From now on leaves are remembered: one may reach the inbox
                # before the snapshot's reply that came after it.
                self._comparing += 1
                self._client.run_script(self._snapshot, args=(self.prefix, room_id)).addCallbacks(
                    self._snapshot_taken, self._comparison_failed, callbackArgs=(room_id,)
                )

    def _comparison_failed(self, failure: Failure | None = None) -> None:
        self._compared()
        if failure is not None:
            self._beat_failed(failure)

    def _compared(self) -> None:
        self._comparing = max(0, self._comparing - 1)
        if not self._comparing:
            for view in self._views.values():
                view.left.clear()

    def _snapshot_taken(self, reply: list[Any], room_id: str) -> None:
        # Compared when it comes back on the inbox, after every event before it.
        token = b"S" + os.urandom(8)
        self._syncs[token] = (room_id, reply)

        def published(receivers: int) -> None:
            if not receivers and self._syncs.pop(token, None) is not None:
                self._compared()  # the subscription is down: it will not come back

        def failed(failure: Failure) -> None:
            if self._syncs.pop(token, None) is not None:
                self._compared()

        self._client.publish(self._inbox_channel, token).addCallbacks(published, failed)

    def _sync_arrived(self, token: bytes) -> None:
        entry = self._syncs.pop(token, None)
        if entry is None:
            return
        try:
            self._compare(*entry)
        finally:
            self._compared()

    def _compare(self, room_id: str, reply: list[Any]) -> None:
        view = self._views.get(room_id)
        if view is None or not view.ready:
            return
        counter = int(reply[0])
        identities = _identities(reply[1])
        snapshot = {
            reply[i].decode(): (reply[i + 2].decode(), int(reply[i + 1]))
            for i in range(2, len(reply), 3)
        }
        for member_id, (node, number) in list(view.members.items()):
            if node == self.node_id or member_id in snapshot or number > counter:
                continue
            del view.members[member_id]
            self._notify(view, member_id, counter + 1, messages.leave_client(member_id))
        for member_id, (node, number) in snapshot.items():
            if node == self.node_id or member_id in view.members:
                continue
            if view.left.get(member_id, 0) > counter:
                continue  # it left after the snapshot
            view.members[member_id] = (node, number)
            frame = messages.new_client(member_id, identities.get(member_id))
            self._notify(view, member_id, number, frame)
        view.number = max(view.number, counter)


def _no_answer(outcome: Joined | JoinRefused) -> None:
    """The ``done`` of a member that moved here (it joined elsewhere)."""


def _identities(flat: list[bytes]) -> dict[str, Identity]:
    """``{member: identity}`` from a script's ``{member, identity JSON, ...}``."""
    return {flat[i].decode(): orjson.loads(flat[i + 1]) for i in range(0, len(flat), 2)}


class RedisRoomsService(Service):
    """Starts the rooms' connections; on stop, removes this node's members
    from Redis and disconnects."""

    def __init__(self, rooms: RedisRooms) -> None:
        self.rooms = rooms

    def startService(self) -> None:
        super().startService()
        self.rooms.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.rooms.stop()
