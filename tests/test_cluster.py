"""Several real ``twistd signaling --redis`` processes sharing rooms through
Redis (the shared server under a prefix of the test's own, or a private
``redis-server`` the test stops and restarts), with real WebSocket clients."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from bench.twistd import ServerProcess, source_env

from .conftest import TIMEOUT, Client, wait_for
from .rawws import RawWebSocket
from .redis_rooms import require_redis_rooms
from .redis_servers import SHARED_URL, PrivateRedis, redis_keys, shared_prefix

Start = Callable[..., ServerProcess]


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    """/healthz's status and document. Takes 0.1 s at least, so that a test
    polling it stays under the admission limits' connection rate (20/s)."""
    time.sleep(0.1)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=TIMEOUT) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def metric_values(port: int) -> dict[str, float]:
    """The unlabelled samples of /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if line and not line.startswith("#") and "{" not in name:
            values[name] = float(value)
    return values


def registered(port: int) -> bool:
    """Whether the process on ``port`` serves with its rooms shared."""
    try:
        return healthz(port)[1].get("status") == "ok"
    except OSError:
        return False


@pytest.fixture
def prefix() -> Iterator[str]:
    require_redis_rooms()
    with shared_prefix() as name:
        yield name


@pytest.fixture
def cluster(run_twistd: Start, prefix: str) -> Start:
    """Start a server process sharing rooms with the others of the test."""

    def start(*args: str, url: str = SHARED_URL) -> ServerProcess:
        process = run_twistd(
            "--port",
            "0",
            "--interface",
            "127.0.0.1",
            "--redis",
            url,
            "--redis-prefix",
            prefix,
            *args,
        )
        assert wait_for(lambda: registered(process.port), 10), process.output
        return process

    return start


def open_ws_client(stack: contextlib.ExitStack, process: ServerProcess) -> Client:
    """A signaling client of ``process``, closed with ``stack``."""
    ws = stack.enter_context(
        connect(
            f"ws://127.0.0.1:{process.port}/connect",
            open_timeout=TIMEOUT,
            close_timeout=1,
            compression=None,
            proxy=None,
        )
    )
    return Client(ws)


@pytest.fixture
def clients() -> Iterator[Callable[[ServerProcess], Client]]:
    with contextlib.ExitStack() as stack:
        yield lambda process: open_ws_client(stack, process)


def test_the_whole_protocol_across_two_processes(cluster: Start, clients: Any, prefix: str) -> None:
    one, two = cluster(), cluster()
    a, b = clients(one), clients(two)
    assert a.join("r") == []
    assert b.join("r") == [a.id]
    assert a.expect("new-client") == {"client_id": b.id}
    a.offer(b.id, "v=0 offer")
    assert b.expect("offer") == {"client_id": a.id, "sdp": "v=0 offer"}
    b.send("answer", {"client_id": a.id, "sdp": "v=0 answer"})
    assert a.expect("answer") == {"client_id": b.id, "sdp": "v=0 answer"}
    for i in range(20):
        b.send("candidate", {"client_id": a.id, "candidate": {"candidate": f"c{i}"}})
    for i in range(20):
        assert a.expect("candidate")["candidate"] == {"candidate": f"c{i}"}
    a.send("offer", {"client_id": "nobody", "sdp": "x"})
    assert a.expect_error("unknown_client")["client_id"] == "nobody"
    metrics = metric_values(one.port)
    assert metrics["signaling_backplane_up"] == 1
    assert metrics["signaling_relays_published_total"] >= 1  # a's offer
    assert wait_for(lambda: metric_values(two.port)["signaling_cluster_rooms"] == 1)
    assert metric_values(two.port)["signaling_cluster_nodes"] == 2
    b.send("leave")
    assert a.expect("leave-client") == {"client_id": b.id}
    a.send("leave")
    assert wait_for(lambda: not [k for k in redis_keys(prefix) if ":room:" in k])


def test_a_six_peer_mesh_split_across_three_processes(cluster: Start, clients: Any) -> None:
    processes = [cluster(), cluster(), cluster()]
    peers = [clients(processes[i % 3]) for i in range(6)]
    for i, peer in enumerate(peers):
        assert peer.join("mesh") == [p.id for p in peers[:i]]
        for earlier in peers[:i]:
            assert earlier.expect("new-client") == {"client_id": peer.id}
    for sender in peers:
        for target in peers:
            if target is not sender:
                sender.offer(target.id, f"from {sender.id}")
    for target in peers:
        senders = {target.expect("offer")["client_id"] for _ in range(5)}
        assert senders == {p.id for p in peers} - {target.id}
    statuses = [healthz(p.port)[1] for p in processes]
    assert [s["clients"] for s in statuses] == [2, 2, 2]


def test_concurrent_joins_across_processes_meet_once(cluster: Start, clients: Any) -> None:
    processes = [cluster(), cluster()]
    peers = [clients(processes[i % 2]) for i in range(10)]
    for peer in peers:
        peer.send("join", {"room_id": "together"})
    existing = {}
    for peer in peers:
        existing[peer.id] = peer.expect("joined")["clients"]
    for peer in peers:
        heard = set()
        expected = len(peers) - 1 - len(existing[peer.id])
        for _ in range(expected):
            heard.add(peer.expect("new-client")["client_id"])
        assert heard.isdisjoint(existing[peer.id])
        assert heard | set(existing[peer.id]) == {p.id for p in peers} - {peer.id}
    assert {peer.id: len(v) for peer, v in zip(peers, existing.values(), strict=True)}


def test_max_room_size_holds_across_processes(cluster: Start, clients: Any) -> None:
    one, two = cluster("--max-room-size", "2"), cluster("--max-room-size", "2")
    clients(one).join("small")
    clients(two).join("small")
    third = clients(two)
    third.send("join", {"room_id": "small"})
    assert third.expect_error("room_full")


def node_of(process: ServerProcess) -> str:
    node: str = healthz(process.port)[1]["node"]
    return node


def test_kill_9_of_a_process_removes_its_clients_within_the_timeout(
    cluster: Start, clients: Any, prefix: str
) -> None:
    one, two = cluster("--node-timeout", "2"), cluster("--node-timeout", "2")
    a, b = clients(one), clients(two)
    a.join("r")
    b.join("r")
    a.expect("new-client")
    time.sleep(0.5)  # a new cluster has no grace: losses are found at once
    healthz_node_before = node_of(two)
    two.signal(signal.SIGKILL)
    killed = time.monotonic()
    assert a.expect("leave-client", timeout=10) == {"client_id": b.id}
    elapsed = time.monotonic() - killed
    assert elapsed < 2 + 1.5, elapsed
    node_one, node_two = node_of(one), healthz_node_before
    leftover = [k for k in redis_keys(prefix) if ":node:" in k and node_one not in k]
    assert leftover == [f"{prefix}node:{node_two}:dead"]


def test_sigterm_removes_the_processes_clients_at_once(
    cluster: Start, clients: Any, prefix: str
) -> None:
    one, two = cluster(), cluster()
    a, b = clients(one), clients(two)
    a.join("r")
    b.join("r")
    a.expect("new-client")
    node_two = node_of(two)
    two.signal(signal.SIGTERM)
    started = time.monotonic()
    assert a.expect("leave-client", timeout=5) == {"client_id": b.id}
    assert time.monotonic() - started < 2
    assert two.wait_exit() == 0
    # nothing of the stopped process is left in Redis
    assert not [k for k in redis_keys(prefix) if node_two in k]


def test_redis_outage_local_relays_go_on_and_the_rest_recovers(
    tmp_path: Path, run_twistd: Start, clients: Any
) -> None:
    require_redis_rooms()
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        start: Start = lambda: _started(run_twistd, server.url())  # noqa: E731
        one, two = start(), start()
        a, c, b = clients(one), clients(one), clients(two)
        a.join("r")
        c.join("r")
        b.join("r")
        for _ in range(2):
            a.expect("new-client")
        c.expect("new-client")
        server.stop()
        assert wait_for(lambda: healthz(one.port)[1]["status"] == "degraded")
        status, body = healthz(one.port)
        assert status == 200 and body["backplane"] == "no connection to Redis"
        # a local relay still works; one to the other process and a join fail at once
        a.offer(c.id, "local")
        assert c.expect("offer") == {"client_id": a.id, "sdp": "local"}
        a.offer(b.id, "remote")
        assert a.expect_error("unavailable")["client_id"] == b.id
        x = clients(one)
        x.send("join", {"room_id": "new"})
        assert x.expect_error("unavailable")["in_reply_to"] == "join"
        server.start()  # empty
        assert wait_for(lambda: registered(one.port) and registered(two.port), 15)
        a.offer(b.id, "back")
        assert b.expect("offer") == {"client_id": a.id, "sdp": "back"}
        assert x.join("new") == []
    finally:
        server.stop()


def _started(run_twistd: Start, url: str, *args: str) -> ServerProcess:
    process = run_twistd(
        "--port", "0", "--interface", "127.0.0.1", "--redis", url, "--node-timeout", "1", *args
    )
    assert wait_for(lambda: registered(process.port), 10), process.output
    return process


def test_degraded_503_for_load_balancers(tmp_path: Path, run_twistd: Start) -> None:
    require_redis_rooms()
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        process = _started(run_twistd, server.url(), "--degraded-503")
        assert healthz(process.port)[0] == 200
        server.stop()
        assert wait_for(lambda: healthz(process.port)[0] == 503)
        assert healthz(process.port)[1]["status"] == "degraded"
    finally:
        server.stop()


def test_a_process_started_before_redis_is_ready_only_once_it_is_reached(
    tmp_path: Path, run_twistd: Start, clients: Any
) -> None:
    """systemd hears READY=1 once the rooms are shared, not before; a join
    made meanwhile waits for Redis rather than failing."""
    require_redis_rooms()
    server = PrivateRedis(tmp_path)  # not started yet
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notifications:
        name = f"signaling-test-{os.getpid()}-{id(notifications)}"
        notifications.bind("\0" + name)
        notifications.settimeout(0.5)
        try:
            process = run_twistd(
                "--port", "0", "--interface", "127.0.0.1", "--redis", server.url(),
                "--redis-timeout", "20",
                env=source_env() | {"NOTIFY_SOCKET": "@" + name},
            )  # fmt: skip
            a = clients(process)
            a.send("join", {"room_id": "r"})
            with pytest.raises(TimeoutError):
                notifications.recv(4096)
            assert healthz(process.port)[1]["status"] == "degraded"
            server.start()
            notifications.settimeout(TIMEOUT)
            assert "READY=1" in notifications.recv(4096).decode().splitlines()
            assert a.expect("joined") == {"room_id": "r", "clients": []}
            assert registered(process.port)
        finally:
            server.stop()


def test_room_tokens_and_identities_across_two_processes(
    cluster: Start, clients: Any, tmp_path: Path, prefix: str
) -> None:
    """Each process checks tokens with the same secret; a member's identity
    (from its token) reaches a member on the other process; a token's room
    bound holds cluster-wide; a refusal closes 4001 there too."""
    import jwt

    secret = os.urandom(32).hex()
    secret_file = tmp_path / "token-secret"
    secret_file.write_text(secret + "\n")
    one = cluster("--auth-secret", str(secret_file))
    two = cluster("--auth-secret", str(secret_file))

    def token(sub: str, **claims: Any) -> str:
        claims = {"room_pattern": "team-*", "exp": int(time.time()) + 60, "sub": sub, **claims}
        return jwt.encode(claims, secret, algorithm="HS256")

    a, b = clients(one), clients(two)
    a.send("join", {"room_id": "team-1", "token": token("alice", name="Alice")})
    assert a.expect("joined") == {"room_id": "team-1", "clients": [], "members": []}
    b.send("join", {"room_id": "team-1", "token": token("bob", max_room_size=2)})
    assert b.expect("joined") == {
        "room_id": "team-1",
        "clients": [a.id],
        "members": [{"client_id": a.id, "sub": "alice", "name": "Alice"}],
    }
    assert a.expect("new-client") == {"client_id": b.id, "sub": "bob"}
    c = clients(one)
    c.send("join", {"room_id": "team-1", "token": token("carol", max_room_size=2)})
    assert c.expect_error("room_full")["in_reply_to"] == "join"
    d = clients(two)
    d.send("join", {"room_id": "other", "token": token("dave")})
    assert d.expect_error("unauthorized")["message"] == "the token is not for this room"
    assert d.expect_closed() == 4001
    b.send("leave")
    assert a.expect("leave-client") == {"client_id": b.id}
    a.send("leave")
    assert wait_for(lambda: not [k for k in redis_keys(prefix) if ":room:" in k])


def opted_in(process: ServerProcess, query: str = "resume=1") -> RawWebSocket:
    return RawWebSocket(process.port, target=f"/connect?{query}")


def silent(client: Client, timeout: float = 0.5) -> bool:
    """Whether ``client`` receives nothing within ``timeout``."""
    try:
        message = client.recv(timeout)
    except TimeoutError:
        return True
    raise AssertionError(f"unexpected {message}")


def test_a_resume_on_another_process_moves_the_session(
    cluster: Start, clients: Any, prefix: str
) -> None:
    """The session moves with its room membership and kept frames; the room
    hears no leave or new client; relays from both processes reach it."""
    one, two = cluster(), cluster()
    a = opted_in(one)
    a.send("join", {"room_id": "r"})
    assert a.recv_json()["seq"] == 1  # joined
    b, c = clients(two), clients(one)
    assert b.join("r") == [a.id]
    assert c.join("r") == [a.id, b.id]
    assert [a.recv_json()["payload"]["client_id"] for _ in range(2)] == [b.id, c.id]  # seq 2, 3
    b.expect("new-client")
    token = a.hello["resume_token"]
    b.offer(a.id, "to the dying socket")
    a.reset()
    b.offer(a.id, "during the gap")
    c.offer(a.id, "from its old process")
    with opted_in(two, f"resume_token={token}&last_seq=3") as again:
        assert again.before == []
        assert again.id == a.id
        assert again.hello["resumed"] is True and again.hello["resume_token"] != token
        replayed = [again.recv_json() for _ in range(3)]
        assert [m["seq"] for m in replayed] == [4, 5, 6]
        by_b = [m["payload"]["sdp"] for m in replayed if m["payload"]["client_id"] == b.id]
        assert by_b == ["to the dying socket", "during the gap"]
        assert {m["payload"]["client_id"] for m in replayed} == {b.id, c.id}
        # Relays both ways, from both processes.
        again.send("answer", {"client_id": b.id, "sdp": "to b"})
        assert b.expect("answer") == {"client_id": a.id, "sdp": "to b"}
        again.send("answer", {"client_id": c.id, "sdp": "to c"})
        assert c.expect("answer") == {"client_id": a.id, "sdp": "to c"}
        b.offer(a.id, "after, same process")
        c.offer(a.id, "after, old process")
        later = [again.recv_json() for _ in range(2)]
        assert [m["seq"] for m in later] == [7, 8]
        assert {m["payload"]["sdp"] for m in later} == {"after, same process", "after, old process"}
        assert silent(b) and silent(c)  # never a leave-client, nor a new-client
        assert metric_values(two.port)["signaling_sessions_moved_in_total"] == 1
        assert metric_values(one.port)["signaling_sessions_moved_out_total"] == 1
        assert metric_values(one.port)["signaling_clients"] == 1
        # The room, in Redis, holds it under its new process.
        assert wait_for(lambda: healthz(two.port)[1]["clients"] == 2)
        b.send("leave")
        c.send("leave")
        assert {again.recv_json()["payload"]["client_id"] for _ in range(2)} == {b.id, c.id}
        again.send("leave", {})
        assert wait_for(lambda: not [k for k in redis_keys(prefix) if ":room:" in k])
        again.send_close(1000)
        assert again.recv_close()[0] == 1000
    assert wait_for(lambda: not [k for k in redis_keys(prefix) if k.endswith(":resume")])
    # The token was used: on its first process it resumes nothing.
    with opted_in(one, f"resume_token={token}&last_seq=3") as late:
        assert [m["payload"]["code"] for m in late.before] == ["resume_failed"]


def test_a_resume_on_another_process_after_the_grace_fails_cleanly(
    cluster: Start, clients: Any
) -> None:
    one, two = cluster("--resume-grace", "1"), cluster("--resume-grace", "1")
    a = opted_in(one)
    a.send("join", {"room_id": "r"})
    a.recv_json()
    b = clients(two)
    assert b.join("r") == [a.id]
    a.reset()
    assert b.expect("leave-client", timeout=5) == {"client_id": a.id}
    with opted_in(two, f"resume_token={a.hello['resume_token']}&last_seq=1") as late:
        assert [m["payload"]["code"] for m in late.before] == ["resume_failed"]
        assert late.id != a.id and late.hello["resumed"] is False


def test_a_resume_whose_process_was_killed_fails_and_the_room_hears_the_leave(
    cluster: Start, clients: Any
) -> None:
    options = ("--node-timeout", "2", "--redis-timeout", "1")
    one, two = cluster(*options), cluster(*options)
    a = opted_in(one)
    a.send("join", {"room_id": "r"})
    a.recv_json()
    b = clients(two)
    assert b.join("r") == [a.id]
    time.sleep(0.5)  # a new cluster has no grace: losses are found at once
    a.reset()
    one.signal(signal.SIGKILL)
    killed = time.monotonic()
    resume = f"resume_token={a.hello['resume_token']}&last_seq=1"
    # Just killed: nobody answers within --redis-timeout.
    with opted_in(two, resume) as late:
        assert [m["payload"]["code"] for m in late.before] == ["resume_failed"]
        assert late.id != a.id
    assert time.monotonic() - killed < 1 + 0.5
    assert b.expect("leave-client", timeout=10) == {"client_id": a.id}
    assert time.monotonic() - killed < 2 + 1.5
    # Declared dead: fails at once.
    started = time.monotonic()
    with opted_in(two, resume) as later:
        assert [m["payload"]["code"] for m in later.before] == ["resume_failed"]
    assert time.monotonic() - started < 0.5


def test_a_session_moved_there_and_back_stays_in_its_room(
    cluster: Start, clients: Any, prefix: str
) -> None:
    """One to two and back to one within the forwarding time: one holds the
    member again, and must not remove it when that time ends."""
    options = ("--node-timeout", "1")
    one, two = cluster(*options), cluster(*options)
    a = opted_in(one)
    a.send("join", {"room_id": "r"})
    assert a.recv_json()["seq"] == 1  # joined
    b = clients(two)
    assert b.join("r") == [a.id]
    assert a.recv_json()["seq"] == 2  # new-client b
    a.reset()
    moved = opted_in(two, f"resume_token={a.hello['resume_token']}&last_seq=2")
    assert moved.id == a.id and moved.hello["resumed"] is True
    moved.reset()
    back = opted_in(one, f"resume_token={moved.hello['resume_token']}&last_seq=2")
    assert back.id == a.id and back.hello["resumed"] is True
    time.sleep(3.5)  # 2 x --node-timeout, and a heartbeat
    assert silent(b)
    back.send("offer", {"client_id": b.id, "sdp": "still here"})
    assert b.expect("offer") == {"client_id": a.id, "sdp": "still here"}


def test_a_token_used_on_another_process_closes_the_owner_with_4003(
    cluster: Start, clients: Any, prefix: str
) -> None:
    one, two = cluster(), cluster()
    a = opted_in(one)
    a.send("join", {"room_id": "r"})
    assert a.recv_json()["seq"] == 1
    b = clients(two)
    assert b.join("r") == [a.id]
    assert a.recv_json()["seq"] == 2
    with opted_in(two, f"resume_token={a.hello['resume_token']}&last_seq=2") as thief:
        assert thief.before == [] and thief.id == a.id
        assert a.recv_close()[0] == 4003
        assert silent(b)
        away = [metric_values(p.port)["signaling_sessions_away"] for p in (one, two)]
        assert away == [0, 0]
    a.close()
