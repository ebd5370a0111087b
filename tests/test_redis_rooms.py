"""RedisRooms across nodes: several instances in this process, each with its
own connections to Redis (the shared server, or a private ``redis-server``
that a test stops and restarts), as several server processes would be."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.task import Clock

from signaling.core import messages
from signaling.core.resume import Moving
from signaling.core.rooms import Joined, JoinRefused, RoomFull, RoomsUnavailable

from .conftest import on_reactor, wait_for
from .fakes import FakeMember
from .redis_rooms import RoomsOnReactor, nodes, require_redis_rooms
from .redis_servers import PrivateRedis, redis_command, redis_keys

pytestmark = pytest.mark.usefixtures("reactor_thread")


def join(
    rooms: RoomsOnReactor, room_id: str, member: FakeMember, **options: Any
) -> Joined | JoinRefused:
    """``options``: the join's ``identity`` and ``max_room_size``."""
    outcomes: list[Joined | JoinRefused] = []
    rooms.join(room_id, member, outcomes.append, **options)
    assert wait_for(lambda: bool(outcomes)), "no answer to the join"
    return outcomes[0]


def joined(rooms: RoomsOnReactor, room_id: str, member: FakeMember, **options: Any) -> Joined:
    outcome = join(rooms, room_id, member, **options)
    assert isinstance(outcome, Joined), outcome
    return outcome


def settle(*all_nodes: RoomsOnReactor) -> None:
    for _ in range(2):
        for rooms in all_nodes:
            rooms.settle()


def decoded(member: FakeMember) -> list[tuple[str, str]]:
    """(type, client_id) of each frame received."""
    return [(f["type"], f["payload"].get("client_id", "")) for f in member.decoded()]


def test_members_on_two_nodes_meet_relay_and_leave() -> None:
    with nodes(2) as (one, two):
        a, b = FakeMember("a"), FakeMember("b")
        joined(one, "r", a)
        b_joined = joined(two, "r", b)
        assert b_joined.existing == ["a"]
        settle(one, two)
        assert decoded(a) == [("new-client", "b")]
        assert b.received == []
        room_one = one.room("r")
        room_two = two.room("r")
        assert room_one is not None and room_two is not None
        assert room_one.member_ids() == room_two.member_ids() == ["a", "b"]

        offer = messages.relayed("offer", "a", "v=0")
        assert room_one.send("b", offer) is True
        answer = messages.relayed("answer", "b", "v=0")
        assert room_two.send("a", answer) is True
        settle(one, two)
        assert b.received == [offer]
        assert a.received[-1] == answer

        two.leave(b)
        settle(one, two)
        assert decoded(a)[-1] == ("leave-client", "b")
        assert room_one.member_ids() == ["a"]
        assert room_one.send("b", b"late") is False


def test_the_last_leave_anywhere_deletes_the_room_in_redis() -> None:
    with nodes(2) as (one, two):
        prefix = on_reactor(lambda: one.target.prefix)
        a, b = FakeMember("a"), FakeMember("b")
        joined(one, "gone", a)
        joined(two, "gone", b)
        assert any(key.endswith("room:gone") for key in redis_keys(prefix))
        one.leave(a)
        two.leave(b)
        settle(one, two)
        assert not [key for key in redis_keys(prefix) if "room:" in key]
        assert one.room("gone") is None and two.room("gone") is None


ALICE = {"sub": "alice", "name": "Alice", "metadata": {"n": 12345678901234567, "tags": ["x"]}}
BOB = {"sub": "bob", "metadata": {"empty": {}, "city": "Zürich"}}


def identities_in_redis(prefix: str, room_id: str, port: int = 6379) -> dict[str, Any]:
    flat = redis_command(port, "HGETALL", f"{prefix}room:{room_id}:ids")
    return {flat[i].decode(): json.loads(flat[i + 1]) for i in range(0, len(flat), 2)}


def test_identities_travel_between_nodes_and_go_with_their_members() -> None:
    with nodes(3) as (one, two, three):
        prefix = on_reactor(lambda: one.target.prefix)
        a, b, c, d = (FakeMember(n) for n in "abcd")
        assert joined(one, "r", a, identity=ALICE).identities == {}
        assert joined(two, "r", b, identity=BOB).identities == {"a": ALICE}
        settle(one, two)
        assert a.received == [messages.new_client("b", BOB)]
        assert joined(two, "r", c).identities == {"a": ALICE, "b": BOB}
        settle(one, two)
        assert a.received[-1] == messages.new_client("c")
        assert b.received == [messages.new_client("c")]
        assert identities_in_redis(prefix, "r") == {"a": ALICE, "b": BOB}

        one.leave(a)
        settle(one, two)
        assert identities_in_redis(prefix, "r") == {"b": BOB}
        assert joined(one, "r", d).identities == {"b": BOB}

        # a node that stops takes its members' identities with them
        joined(three, "r", FakeMember("e"), identity=ALICE)
        settle(one, two, three)
        assert identities_in_redis(prefix, "r") == {"b": BOB, "e": ALICE}
        on_reactor(three.target.stop)
        settle(one, two)
        assert identities_in_redis(prefix, "r") == {"b": BOB}
        two.leave(b)
        two.leave(c)
        one.leave(d)
        settle(one, two)
        assert not [key for key in redis_keys(prefix) if "room:" in key]


def test_order_per_sender_and_target_is_kept_across_nodes() -> None:
    with nodes(2) as (one, two):
        a, b, c = FakeMember("a"), FakeMember("b"), FakeMember("c")
        room_a = joined(one, "r", a).room
        room_c = joined(one, "r", c).room
        joined(two, "r", b)
        settle(one, two)
        frames_a = [messages.relayed("candidate", "a", {"n": i}) for i in range(300)]
        frames_c = [messages.relayed("candidate", "c", {"n": i}) for i in range(300)]

        def send_all() -> None:
            for fa, fc in zip(frames_a, frames_c, strict=True):
                room_a._room.send("b", fa)
                room_c._room.send("b", fc)

        on_reactor(send_all)
        settle(one, two)
        relays = [frame for frame in b.received if b'"candidate"' in frame]
        assert [f for f in relays if b'"client_id":"a"' in f] == frames_a
        assert [f for f in relays if b'"client_id":"c"' in f] == frames_c


def test_relays_between_members_of_one_node_do_not_touch_redis() -> None:
    with nodes(2) as (one, two):
        a, c, b = FakeMember("a"), FakeMember("c"), FakeMember("b")
        room = joined(one, "r", a).room
        joined(one, "r", c)
        joined(two, "r", b)
        settle(one, two)
        before = on_reactor(lambda: one.target.relays_published)
        for i in range(50):
            assert room.send("c", messages.relayed("offer", "a", str(i)))
        assert on_reactor(lambda: one.target.relays_published) == before
        assert len([f for f in c.received if b'"offer"' in f]) == 50
        assert room.send("b", messages.relayed("offer", "a", "x"))
        settle(one, two)
        assert on_reactor(lambda: one.target.relays_published) == before + 1


def test_concurrent_joins_on_three_nodes_each_pair_meets_once() -> None:
    with nodes(3) as all_nodes:
        members = [FakeMember(f"m{i:02d}") for i in range(30)]
        outcomes: dict[str, list[Joined | JoinRefused]] = {m.client_id: [] for m in members}

        def start_all() -> None:
            for i, m in enumerate(members):
                all_nodes[i % 3].target.join("r", m, outcomes[m.client_id].append)

        on_reactor(start_all)
        settle(*all_nodes)
        existing: dict[str, list[str]] = {}
        for m in members:
            [outcome] = outcomes[m.client_id]
            assert isinstance(outcome, Joined)
            existing[m.client_id] = outcome.existing
        for x, y in itertools.permutations(members, 2):
            told = decoded(x).count(("new-client", y.client_id))
            assert told + (y.client_id in existing[x.client_id]) == 1, (x, y)
        views = [rooms.room("r") for rooms in all_nodes]
        member_ids = [view.member_ids() for view in views if view is not None]
        assert len(member_ids) == 3
        assert member_ids[0] == member_ids[1] == member_ids[2]
        assert sorted(member_ids[0]) == sorted(m.client_id for m in members)


def test_max_room_size_holds_across_nodes() -> None:
    with nodes(3, max_room_size=4) as all_nodes:
        members = [FakeMember(f"m{i}") for i in range(9)]
        outcomes: list[list[Joined | JoinRefused]] = [[] for _ in members]

        def start_all() -> None:
            for i, m in enumerate(members):
                all_nodes[i % 3].target.join("r", m, outcomes[i].append)

        on_reactor(start_all)
        settle(*all_nodes)
        results = [o[0] for o in outcomes]
        assert sum(isinstance(r, Joined) for r in results) == 4
        assert all(isinstance(r, RoomFull) for r in results if not isinstance(r, Joined))


def test_a_newcomer_gets_nothing_before_joined_even_from_other_nodes() -> None:
    """A relay or notice sent to a member as soon as another node hears of
    it reaches it only after its own join has completed."""
    with nodes(2) as (one, two):
        a = FakeMember("a")
        room_a = joined(one, "r", a).room
        order: list[str] = []

        class Recording(FakeMember):
            def deliver(self, data: bytes) -> None:
                order.append(json.loads(data)["type"])
                super().deliver(data)

        b = Recording("b")

        def answered(outcome: Joined | JoinRefused) -> None:
            order.append("joined")

        def offer_on_notice(data: bytes) -> None:
            FakeMember.deliver(a, data)
            if b'"new-client"' in data:
                room_a._room.send("b", messages.relayed("offer", "a", "v=0"))

        a.deliver = offer_on_notice  # type: ignore[method-assign]
        two.join("r", b, answered)
        settle(one, two)
        assert order == ["joined", "offer"]


def test_a_join_and_a_relay_to_another_node_fail_at_once_while_redis_is_down(
    tmp_path: Path,
) -> None:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        with nodes(2, url=server.url()) as (one, two):
            a, c, b = FakeMember("a"), FakeMember("c"), FakeMember("b")
            room = joined(one, "r", a).room
            joined(one, "r", c)
            joined(two, "r", b)
            settle(one, two)
            server.stop()
            assert wait_for(lambda: not on_reactor(lambda: one.target.available))

            started = time.monotonic()
            refused = join(one, "other", FakeMember("x"))
            assert isinstance(refused, RoomsUnavailable)
            assert refused.code == "unavailable"
            with pytest.raises(RoomsUnavailable):
                room.send("b", b"to-b")
            assert time.monotonic() - started < 1.0
            # the members of this node still reach each other
            assert room.send("c", b"to-c") is True
            assert c.received[-1] == b"to-c"
    finally:
        server.stop()


def test_recovery_after_redis_restarts_empty(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        with nodes(2, url=server.url(), ttl=1.0, heartbeat=0.2) as (one, two):
            a, c, b, d = (FakeMember(n) for n in "acbd")
            room_a = joined(one, "r", a).room
            joined(one, "r", c)
            joined(two, "r", b)
            joined(two, "r", d)
            settle(one, two)
            server.stop()
            assert wait_for(lambda: not on_reactor(lambda: one.target.available))
            two.leave(d)  # while Redis is down: its own node's members hear at once
            assert decoded(b)[-1] == ("leave-client", "d")
            server.start()  # empty: it kept nothing
            for rooms in (one, two):
                assert wait_for(lambda r=rooms: on_reactor(lambda: r.target.available), 10)
            # While the nodes put their members back, joins wait: a newcomer
            # would otherwise miss members not yet back.
            refused = join(one, "r", FakeMember("early"))
            assert isinstance(refused, RoomsUnavailable) and "recovering" in refused.text
            # Both nodes put their members back; the other node hears d has gone.
            assert wait_for(lambda: decoded(a)[-1:] == [("leave-client", "d")], 10), decoded(a)
            assert decoded(c)[-1] == ("leave-client", "d")
            assert wait_for(lambda: room_a.member_ids() == ["a", "c", "b"], 10)
            after = messages.relayed("offer", "a", "after")
            assert room_a.send("b", after) is True
            settle(one, two)
            assert b.received[-1] == after
            # and joins work again once the grace is over, numbered after the
            # members put back
            e = FakeMember("e")
            assert wait_for(lambda: not on_reactor(lambda: two.target.recovering), 5)
            assert joined(two, "r", e).existing == ["a", "c", "b"]
            settle(one, two)
            assert decoded(a)[-1] == ("new-client", "e")
            assert decoded(b)[-1] == ("new-client", "e")
            # nobody heard twice of anything
            for member in (a, c, b):
                events = decoded(member)
                assert len(events) == len(set(events)), events
    finally:
        server.stop()


def test_identities_are_put_back_after_redis_restarts_empty(tmp_path: Path) -> None:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        with nodes(2, url=server.url(), ttl=1.0, heartbeat=0.2) as (one, two):
            prefix = on_reactor(lambda: one.target.prefix)
            a, b = FakeMember("a"), FakeMember("b")
            joined(one, "r", a, identity=ALICE)
            joined(two, "r", b)
            settle(one, two)
            server.stop()
            assert wait_for(lambda: not on_reactor(lambda: one.target.available))
            server.start()  # empty
            assert wait_for(
                lambda: identities_in_redis(prefix, "r", server.port) == {"a": ALICE}, 10
            )
            assert wait_for(lambda: not on_reactor(lambda: two.target.recovering), 5)
            c = FakeMember("c")
            assert joined(two, "r", c).identities == {"a": ALICE}
            settle(one, two)
            assert a.received[-1] == messages.new_client("c")
    finally:
        server.stop()


def test_a_newcomer_missed_while_the_inbox_was_down_is_told_with_its_identity(
    tmp_path: Path,
) -> None:
    """Node one's subscription drops and comes back late: the join it
    missed is found by comparing its view with Redis, and its members
    hear ``new-client`` with the newcomer's identity."""
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        with nodes(
            2,
            url=server.url(),
            ttl=1.0,
            heartbeat=0.2,
            each=[{"retry_policy": lambda attempt: 1.0}, {}],  # one resubscribes late
        ) as (one, two):
            a, b = FakeMember("a"), FakeMember("b")
            joined(one, "r", a)
            settle(one, two)
            # past the comparison that follows the first registration
            assert wait_for(lambda: on_reactor(lambda: one.target._reconcile_call is None), 5)
            redis_command(server.port, "CLIENT", "KILL", "TYPE", "pubsub")
            assert wait_for(lambda: not on_reactor(lambda: one.target.available))
            assert wait_for(lambda: on_reactor(lambda: two.target.available))
            assert joined(two, "r", b, identity=BOB).existing == ["a"]
            assert a.received == []  # its inbox was down
            assert wait_for(lambda: a.received == [messages.new_client("b", BOB)], 5), a.received
            room = one.room("r")
            assert room is not None and room.member_ids() == ["a", "b"]
    finally:
        server.stop()


def test_a_frozen_node_is_declared_dead_and_closes_its_members_when_it_wakes() -> None:
    frozen_clock = Clock()  # node two's timers run only when the test says
    evicted: list[list[Any]] = []
    with nodes(
        2,
        ttl=1.0,
        heartbeat=0.2,
        clocks=[reactor, frozen_clock],
        on_evicted=evicted.append,
    ) as (one, two):
        a, b = FakeMember("a"), FakeMember("b")
        joined(one, "r", a)
        joined(two, "r", b, identity=BOB)
        settle(one, two)
        prefix = on_reactor(lambda: one.target.prefix)
        node_two = on_reactor(lambda: two.target.node_id)
        assert identities_in_redis(prefix, "r") == {"b": BOB}
        # two refreshed its key once, when it connected, and never since
        started = time.monotonic()
        assert wait_for(lambda: ("leave-client", "b") in decoded(a), 6)
        assert time.monotonic() - started < 4.5  # the TTL, after the grace of 2 TTLs
        assert one.room("r") is not None and one.room("r").member_ids() == ["a"]  # type: ignore[union-attr]
        leftover = [k for k in redis_keys(prefix) if node_two in k]
        assert leftover == [f"{prefix}node:{node_two}:dead"]
        assert identities_in_redis(prefix, "r") == {}
        assert evicted == []

        # It wakes up: a join it sends before its next refresh is refused
        # (a dead node adds nothing to Redis), and makes it look.
        late = FakeMember("late")
        assert isinstance(join(two, "r", late), RoomsUnavailable)
        assert wait_for(lambda: bool(evicted))
        assert one.room("r").member_ids() == ["a"]  # type: ignore[union-attr]
        assert not [k for k in redis_keys(prefix) if node_two in k and not k.endswith(":dead")]
        assert [m.client_id for m in evicted[0]] == ["b"]
        assert two.member_count == 0 and two.room("r") is None
        assert on_reactor(lambda: two.target.node_id) != node_two
        assert wait_for(lambda: on_reactor(lambda: two.target.available))
        # it starts over under a new id, and b's next join works
        b2 = FakeMember("b2")
        assert joined(two, "r", b2).existing == ["a"]


def test_the_operator_lists_and_closes_rooms_across_the_cluster() -> None:
    closed: list[tuple[list[str], str]] = []

    def on_room_closed(members: list[Any], reason: str) -> None:
        closed.append((sorted(m.client_id for m in members), reason))

    with nodes(2, on_room_closed=on_room_closed) as (one, two):
        a, b, c, x = (FakeMember(n) for n in "abcx")
        joined(one, "r", a)
        joined(two, "r", b)
        joined(two, "r", c)
        joined(two, "other", x)
        settle(one, two)
        # node one holds no member of "other", and still lists it
        assert on_reactor(one.target.cluster_rooms) == {"r": ["a", "b", "c"], "other": ["x"]}
        assert one.room("other") is None
        assert on_reactor(one.target.close_room, "r", "maintenance") == 3
        settle(one, two)
        assert sorted(closed) == [(["a"], "maintenance"), (["b", "c"], "maintenance")]
        assert on_reactor(one.target.close_room, "nowhere", "x") == 0


def test_relays_are_refused_while_redis_is_behind(tmp_path: Path) -> None:
    """Relays to other nodes wait in memory until Redis acknowledges them;
    past ``max_backlog`` bytes they are refused, and accepted again once
    Redis catches up."""
    server = PrivateRedis(tmp_path)
    server.start()
    assert server.process is not None
    try:
        with nodes(2, url=server.url(), max_backlog=20_000, reply_timeout=30) as (one, two):
            a, b = FakeMember("a"), FakeMember("b")
            room = joined(one, "r", a).room
            joined(two, "r", b)
            settle(one, two)
            frame = messages.relayed("offer", "a", "x" * 2500)
            server.process.send_signal(signal.SIGSTOP)
            try:
                accepted = 0
                with pytest.raises(RoomsUnavailable):
                    for _ in range(100):
                        room.send("b", frame)
                        accepted += 1
                        time.sleep(0.005)  # each in a reactor turn of its own
                assert 7 <= accepted <= 10, accepted  # 20,000 bytes of about 2,560 each
            finally:
                server.process.send_signal(signal.SIGCONT)
            settle(one, two)
            assert room.send("b", frame) is True
            settle(one, two)
            assert b.received.count(frame) == accepted + 1
    finally:
        server.stop()


def test_a_redis_restart_that_kept_its_data_declares_nobody_dead(tmp_path: Path) -> None:
    """Redis restarted from its snapshot after longer than the TTL: every
    liveness key has expired, yet no node is declared dead: the first node
    back starts the cluster's grace, and the others refresh within it."""
    server = PrivateRedis(tmp_path)
    server.start()
    evicted: list[list[Any]] = []
    try:
        with nodes(
            3, url=server.url(), ttl=1.0, heartbeat=0.2, on_evicted=evicted.append
        ) as all_nodes:
            members = [FakeMember(name) for name in "abc"]
            for rooms, member in zip(all_nodes, members, strict=True):
                joined(rooms, "r", member)
            settle(*all_nodes)
            assert redis_command(server.port, "SAVE") == b"OK"
            server.stop()
            time.sleep(2.5)  # every key of the snapshot is past its TTL
            server.start()  # loads the snapshot
            for rooms in all_nodes:
                assert wait_for(lambda r=rooms: on_reactor(lambda: r.target.available), 10)
            time.sleep(3)  # past the grace: reaping runs again
            assert evicted == []
            assert [on_reactor(lambda r=r: r.target.nodes_reaped) for r in all_nodes] == [0, 0, 0]
            room = all_nodes[0].room("r")
            assert room is not None and room.member_ids() == ["a", "b", "c"]
            assert room.send("c", messages.relayed("offer", "a", "still here")) is True
            settle(*all_nodes)
            assert decoded(members[2])[-1] == ("offer", "a")
    finally:
        server.stop()


def test_a_node_back_after_the_grace_lets_its_lost_members_go(tmp_path: Path) -> None:
    """Redis restarted empty; one node comes back at once, the other only
    after the grace: the first has told its members the other's are gone, so
    the late node closes them rather than put them back unannounced."""
    server = PrivateRedis(tmp_path)
    server.start()
    evicted: list[list[Any]] = []
    try:
        with nodes(
            2,
            url=server.url(),
            ttl=1.0,
            heartbeat=0.2,
            on_evicted=evicted.append,
            each=[{}, {"retry_policy": lambda attempt: 4.0}],  # two reconnects late
        ) as (one, two):
            a, b = FakeMember("a"), FakeMember("b")
            joined(one, "r", a)
            joined(two, "r", b)
            settle(one, two)
            server.stop()
            time.sleep(0.3)
            server.start()  # empty
            assert wait_for(lambda: ("leave-client", "b") in decoded(a), 8)
            assert wait_for(lambda: bool(evicted), 10)
            assert [m.client_id for m in evicted[0]] == ["b"]
            assert two.member_count == 0
            room = one.room("r")
            assert room is not None and room.member_ids() == ["a"]
            assert on_reactor(lambda: one.target.nodes_reaped) == 0
    finally:
        server.stop()


def test_a_join_into_a_room_of_thousands() -> None:
    """The scripts read a room's nodes in chunks: Lua's unpack fails past
    about 8,000 values."""
    with nodes(1) as [one]:
        prefix = on_reactor(lambda: one.target.prefix)
        fill = (
            "for i = 1, 9000 do"
            " redis.call('ZADD', KEYS[1], i, 'm' .. i)"
            " redis.call('HSET', KEYS[1] .. ':nodes', 'm' .. i, 'elsewhere') end"
            " redis.call('SET', ARGV[1] .. 'seq', 9000)"
            " redis.call('SADD', ARGV[1] .. 'rooms', 'big')"
        )
        redis_command(6379, "EVAL", fill, "1", f"{prefix}room:big", prefix)
        outcome = joined(one, "big", FakeMember("x"))
        assert len(outcome.existing) == 9000
        assert outcome.existing[:2] == ["m1", "m2"] and outcome.existing[-1] == "m9000"
        room = one.room("big")
        assert room is not None and len(room) == 9001


def test_failing_joins_are_logged_within_a_budget(
    tmp_path: Path, info_events: list[dict[str, Any]]
) -> None:
    """Redis refusing every write (out of memory): each join gets
    ``unavailable``, but clients decide how many there are, so only a few
    a minute are logged, the rest counted."""
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        with nodes(1, url=server.url()) as [one]:
            from signaling.backplane.rooms import LOG_FAILURES_PER_MINUTE

            redis_command(server.port, "CONFIG", "SET", "maxmemory", "1")
            outcomes = [join(one, "r", FakeMember(f"m{i}")) for i in range(30)]
            assert all(isinstance(o, RoomsUnavailable) for o in outcomes), outcomes
            redis_command(server.port, "CONFIG", "SET", "maxmemory", "0")
        logged = [e for e in info_events if e.get("log_format") == "A join failed in Redis"]
        assert len(logged) == LOG_FAILURES_PER_MINUTE
    finally:
        server.stop()


def _unstarted_node(url: str, **options: Any) -> Any:
    """A RedisRooms on ``url`` (not started), with a fresh prefix."""
    from signaling.backplane.redis import parse_url
    from signaling.backplane.rooms import RedisRooms

    return on_reactor(
        lambda: RedisRooms(
            parse_url(url),
            reactor,
            prefix=f"signaling-test:{os.urandom(8).hex()}:",
            reactor=reactor,
            retry_policy=lambda attempt: 0.05,
            **options,
        )
    )


def test_a_join_made_while_the_node_starts_waits_for_redis(tmp_path: Path) -> None:
    """A process just started is not in an outage: a join made before it
    first reaches Redis waits for it (within --redis-timeout), and the
    node says it is ready only then."""
    require_redis_rooms()
    server = PrivateRedis(tmp_path)
    node = _unstarted_node(server.url(), reply_timeout=10.0)
    started: list[object] = []
    outcomes: list[Joined | JoinRefused] = []
    try:
        on_reactor(lambda: node.started().addCallback(started.append) and None)
        on_reactor(node.start)
        on_reactor(node.join, "r", FakeMember("a"), outcomes.append, ALICE)
        on_reactor(node.join, "r", FakeMember("b"), outcomes.append, None, 1)
        time.sleep(0.3)
        assert outcomes == [] and started == []
        server.start()
        assert wait_for(lambda: len(outcomes) == 2), "the joins were never answered"
        assert isinstance(outcomes[0], Joined), outcomes[0]
        # what the joins came with waited with them: b's bound, a's identity
        assert isinstance(outcomes[1], RoomFull) and outcomes[1].limit == 1, outcomes[1]
        assert started == [None]
        assert on_reactor(lambda: node.available)
        c = FakeMember("c")
        assert joined(RoomsOnReactor(node), "r", c).identities == {"a": ALICE}
    finally:
        on_reactor(node.stop)
        server.stop()


def test_joins_made_while_redis_is_unreachable_at_start_fail_after_the_bound(
    tmp_path: Path,
) -> None:
    require_redis_rooms()
    server = PrivateRedis(tmp_path)  # never started: nothing listens on its port
    node = _unstarted_node(server.url(), reply_timeout=0.5)
    started: list[object] = []
    outcomes: list[Joined | JoinRefused] = []
    try:
        on_reactor(lambda: node.started().addCallback(started.append) and None)
        begun = time.monotonic()
        on_reactor(node.start)
        on_reactor(node.join, "r", FakeMember("a"), outcomes.append)
        assert wait_for(lambda: bool(outcomes)), "the join was never answered"
        waited = time.monotonic() - begun
        assert isinstance(outcomes[0], RoomsUnavailable), outcomes[0]
        assert 0.4 < waited < 3.0, waited
        assert started == [None]  # ready, degraded: local relays are served
        # from then on, a join fails at once
        begun = time.monotonic()
        assert isinstance(join(RoomsOnReactor(node), "r", FakeMember("b")), RoomsUnavailable)
        assert time.monotonic() - begun < 0.3
    finally:
        on_reactor(node.stop)


def moving(client_id: str) -> Moving:
    return Moving(client_id, "token", 2, 2, [], 10.0, True)


def test_a_moved_member_hears_what_changed_while_moving_and_late_relays_follow_it() -> None:
    """Node one hands member a over to node two (hooks standing in for the
    sessions): the room hears nothing of it; a leave and a join made while
    it moves reach it from the comparison, once; relays that still reach
    its old node are passed on; its old node's members relay to its new one."""
    with nodes(3) as (one, two, three):
        a, e, c, b = FakeMember("a"), FakeMember("e"), FakeMember("c"), FakeMember("b")
        joined(one, "r", a)
        room_e = joined(one, "r", e).room
        joined(three, "r", c)
        joined(two, "r", b)
        settle(one, two, three)
        a.received.clear()
        d = FakeMember("d")
        arrived = FakeMember("a")
        calls: list[str] = []

        def hand_over(token: str) -> tuple[FakeMember, Moving]:
            calls.append(token)
            three.target.leave(c)  # while it moves: both reach it once
            three.target.join("r", d, lambda outcome: None)
            return a, moving("a")

        def arrive(state: Moving, room: Any) -> FakeMember:
            assert (state.client_id, room.room_id) == ("a", "r")
            return arrived

        fetched: list[bool] = []
        on_reactor(setattr, one.target, "hand_over", hand_over)
        on_reactor(setattr, two.target, "hand_over", lambda token: None)
        on_reactor(setattr, two.target, "arrive", arrive)
        on_reactor(one.target.issued, "token-of-a", "a")
        on_reactor(two.target.fetch, "token-of-a", lambda: fetched.append(True))
        assert wait_for(lambda: fetched)
        assert calls == ["token-of-a"]
        settle(one, two, three)
        assert decoded(arrived) == [("leave-client", "c"), ("new-client", "d")]
        for member in (e, b):  # no leave, no join of a; c and d once
            assert decoded(member)[-2:] == [("leave-client", "c"), ("new-client", "d")]
            assert ("leave-client", "a") not in decoded(member)
        assert a.received == []
        # Relays: from its old node, and one that reaches it there late.
        offer = messages.relayed("offer", "e", "v=0")
        assert room_e.send("a", offer) is True
        view_three = on_reactor(lambda: three.target._views["r"])
        number = view_three.members["a"][1]
        on_reactor(view_three.members.__setitem__, "a", (one.target.node_id, number))
        late = messages.relayed("offer", "d", "late")
        assert on_reactor(view_three.send, "a", late) is True
        settle(one, two, three)
        assert arrived.received[-2:] == [offer, late]
        assert a.received == []
        # Redis holds it under its new node: its leave there empties the room.
        two.leave(arrived)
        one.leave(e)
        two.leave(b)
        three.leave(d)
        settle(one, two, three)
        prefix = on_reactor(lambda: one.target.prefix)
        assert not [key for key in redis_keys(prefix) if "room:" in key]


def test_a_member_handed_over_to_no_node_leaves_its_room() -> None:
    """The node that asked is gone (nobody receives the answer): the member
    is removed, and the room hears leave-client. A member the asker never
    moved in Redis goes once the old node checks, a while later."""
    with nodes(2) as (one, two):
        a, c, b = FakeMember("a"), FakeMember("c"), FakeMember("b")
        joined(one, "r", a)
        joined(one, "r", c)
        joined(two, "r", b)
        settle(one, two)
        on_reactor(setattr, one.target, "hand_over", lambda token: (a, moving("a")))
        request = b"Q" + json.dumps({"t": "token", "n": "nowhere", "r": "x"}).encode()
        on_reactor(one.target._inbox, request)
        settle(one, two)
        assert decoded(b)[-1] == ("leave-client", "a")
        assert decoded(c)[-1] == ("leave-client", "a")
        # Still this node's in Redis, though no longer held here: it goes.
        on_reactor(one.target._check_moved, "c", "r")
        settle(one, two)
        assert decoded(b)[-1] == ("leave-client", "c")
        on_reactor(one.target._check_moved, "b", "r")  # another node's: stays
        settle(one, two)
        prefix = on_reactor(lambda: one.target.prefix)
        assert redis_command(6379, "ZRANGE", f"{prefix}room:r", 0, -1) == [b"b"]


def test_a_member_that_left_and_rejoined_while_another_moved_is_told_both() -> None:
    """c leaves and joins again (same id, a new join number) while a moves:
    a hears both, as the members that stayed do."""
    with nodes(3) as (one, two, three):
        a, e, c, b = FakeMember("a"), FakeMember("e"), FakeMember("c"), FakeMember("b")
        joined(one, "r", a)
        joined(one, "r", e)
        joined(three, "r", c)
        joined(two, "r", b)
        settle(one, two, three)
        arrived = FakeMember("a")
        outcomes: list[Any] = []

        def hand_over(token: str) -> tuple[FakeMember, Any]:
            three.target.leave(c)
            three.target.join("r", c, outcomes.append)
            return a, moving("a")

        fetched: list[bool] = []
        on_reactor(setattr, one.target, "hand_over", hand_over)
        on_reactor(setattr, two.target, "hand_over", lambda token: None)
        on_reactor(setattr, two.target, "arrive", lambda state, room: arrived)
        on_reactor(one.target.issued, "token-of-a", "a")
        on_reactor(two.target.fetch, "token-of-a", lambda: fetched.append(True))
        assert wait_for(lambda: fetched)
        settle(one, two, three)
        assert len(outcomes) == 1
        assert decoded(e)[-2:] == [("leave-client", "c"), ("new-client", "c")]
        assert decoded(arrived) == [("leave-client", "c"), ("new-client", "c")]


def test_resume_tokens_live_with_their_node_not_for_a_time() -> None:
    """A connected session's token must be found by other nodes however long
    it has been connected: it is kept without a TTL in its node's hash, and
    goes with the node."""
    with nodes(1) as (one,):
        on_reactor(one.target.issued, "token-1", "a")
        key = f"{one.target.prefix}node:{one.target.node_id}:resume"
        assert wait_for(lambda: redis_command(6379, "HGET", key, "token-1") == b"a")
        assert redis_command(6379, "TTL", key) == -1
        on_reactor(one.target.used, "token-1")
        assert wait_for(lambda: redis_command(6379, "EXISTS", key) == 0)
        on_reactor(one.target.issued, "token-2", "b")
        assert wait_for(lambda: redis_command(6379, "EXISTS", key) == 1)
        on_reactor(one.target.stop)
        assert wait_for(lambda: redis_command(6379, "EXISTS", key) == 0)


def test_resume_tokens_changed_while_redis_was_down_are_written_on_return(
    tmp_path: Path,
) -> None:
    """Tokens issued and used while Redis could not be reached: once back
    (even empty), the node's hash holds exactly the tokens of its sessions,
    nothing lost and nothing left behind."""
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        with nodes(1, url=server.url(), ttl=1.0, heartbeat=0.2) as (one,):
            key = f"{one.target.prefix}node:{one.target.node_id}:resume"
            on_reactor(one.target.issued, "t1", "a")
            on_reactor(one.target.issued, "t2", "b")
            assert wait_for(lambda: redis_command(server.port, "HLEN", key) == 2)
            server.stop()
            assert wait_for(lambda: not on_reactor(lambda: one.target.available))
            on_reactor(one.target.used, "t1")
            on_reactor(one.target.issued, "t3", "c")
            server.start()  # empty
            assert wait_for(lambda: on_reactor(lambda: one.target.available), 10)
            assert wait_for(
                lambda: (
                    redis_command(server.port, "HGETALL", key)
                    in (
                        [b"t2", b"b", b"t3", b"c"],
                        [b"t3", b"c", b"t2", b"b"],
                    )
                ),
                10,
            ), redis_command(server.port, "HGETALL", key)
    finally:
        server.stop()
