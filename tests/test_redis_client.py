"""The Redis client (signaling/backplane/redis.py) against real Redis servers:
the shared one on 127.0.0.1:6379 (keys and channels under a prefix of this
run, removed after), and private ``redis-server`` processes that the tests
stop and restart."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, DeferredList, gatherResults

from .certs import CertificateAuthority
from .conftest import on_reactor, wait_for
from .redis_servers import SHARED, PrivateRedis, shared_prefix
from .tools import missing
from .twistd_process import free_port

try:
    from signaling.backplane import redis as backplane
except ImportError as error:  # hiredis is not installed
    backplane = None  # type: ignore[assignment]
    NO_CLIENT = f"{error}: pip install '.[redis]'"

TIMEOUT = 5.0


@pytest.fixture(autouse=True)
def client_module() -> None:
    if backplane is None:
        missing(NO_CLIENT)


# -- URLs and values: no server ------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", ("127.0.0.1", 6379, 0, None, None, False)),
        ("redis://localhost", ("localhost", 6379, 0, None, None, False)),
        ("redis://localhost/", ("localhost", 6379, 0, None, None, False)),
        ("redis://:s3cret@10.1.2.3:6380/5", ("10.1.2.3", 6380, 5, "s3cret", None, False)),
        ("redis://:p%40ss%3Aw%2Frd@h:1/15", ("h", 1, 15, "p@ss:w/rd", None, False)),
        ("redis://app:pw@h/2", ("h", 6379, 2, "pw", "app", False)),
        ("redis://[::1]:7000/1", ("::1", 7000, 1, None, None, False)),
        ("rediss://:pw@redis.example:6380/0", ("redis.example", 6380, 0, "pw", None, True)),
        ("redis://:@h/3", ("h", 6379, 3, None, None, False)),
    ],
)
def test_parse_url(url: str, expected: tuple[Any, ...]) -> None:
    address = backplane.parse_url(url)
    assert (
        address.host,
        address.port,
        address.db,
        address.password,
        address.username,
        address.tls,
    ) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:6379/0",
        "127.0.0.1:6379",
        "redis://",
        "redis://:pw@/0",
        "redis://h:port/0",
        "redis://h:99999/0",
        "redis://h/db0",
        "redis://h/-1",
        "redis://h/0?timeout=1",
        "redis://user@h/0",
    ],
)
def test_parse_url_refuses(url: str) -> None:
    with pytest.raises(ValueError):
        backplane.parse_url(url)


def test_the_password_stays_out_of_the_repr() -> None:
    address = backplane.parse_url("redis://:hunter2@h:1/0")
    assert "hunter2" not in repr(address)


def test_an_error_reply_names_its_kind() -> None:
    assert backplane.RedisError("NOSCRIPT No matching script.").kind == "NOSCRIPT"
    assert backplane.RedisError("ERR unknown command").kind == "ERR"
    assert issubclass(backplane.NotConnected, backplane.Unavailable)
    assert issubclass(backplane.ReplyLost, backplane.Unavailable)


# -- helpers -------------------------------------------------------------------


class Events:
    """What a connection's hooks reported."""

    def __init__(self) -> None:
        self.connected = 0
        self.disconnected = 0

    def hooks(self) -> dict[str, Callable[[], None]]:
        return {"on_connected": self.on_connected, "on_disconnected": self.on_disconnected}

    def on_connected(self) -> None:
        self.connected += 1

    def on_disconnected(self) -> None:
        self.disconnected += 1


class Inbox:
    """Messages a subscriber delivered, in order."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    def __call__(self, message: bytes) -> None:
        self.messages.append(message)


@pytest.fixture
def connections(reactor_thread: Any) -> Iterator[Callable[..., Any]]:
    """Make started clients and subscribers; stop them after the test."""
    made: list[Any] = []

    def make(kind: type, url: str, **options: Any) -> Any:
        options.setdefault("retry_policy", lambda attempt: 0.05)
        connection = on_reactor(lambda: kind(backplane.parse_url(url), **options))
        made.append(connection)
        on_reactor(connection.start)
        return connection

    yield make
    for connection in made:
        on_reactor(connection.stop)


def connected(connection: Any, timeout: float = TIMEOUT) -> Any:
    assert wait_for(lambda: connection.connected, timeout), "no connection to Redis"
    return connection


@pytest.fixture
def prefix(reactor_thread: Any) -> Iterator[str]:
    """A prefix for this test's keys and channels on the shared Redis; its keys
    are deleted after the test."""
    with shared_prefix() as name:
        yield name


@pytest.fixture
def shared(prefix: str) -> str:
    return f"redis://{SHARED[0]}:{SHARED[1]}/0"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., PrivateRedis]]:
    started: list[PrivateRedis] = []

    def start(*options: str, tls: bool = False) -> PrivateRedis:
        server = PrivateRedis(tmp_path, *options, tls=tls)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


def collect(deferreds: list[Deferred[Any]]) -> Deferred[list[Any]]:
    return gatherResults(deferreds, consumeErrors=True)


# -- the shared Redis ------------------------------------------------------------


def test_commands_are_pipelined_and_replies_come_back_in_order(
    connections: Callable[..., Any], shared: str, prefix: str
) -> None:
    client = connected(connections(backplane.RedisClient, shared))
    counter, name = prefix + "counter", prefix + "name"

    def many() -> Deferred[list[Any]]:
        sent = []
        for i in range(2000):
            sent.append(client.execute("INCR", counter))
            sent.append(client.execute("SET", name, f"value-{i}"))
            sent.append(client.execute("GET", name))
        return collect(sent)

    replies = on_reactor(many)
    for i in range(2000):
        assert replies[3 * i : 3 * i + 3] == [i + 1, b"OK", f"value-{i}".encode()]


def test_an_error_reply_fails_its_command_alone(
    connections: Callable[..., Any], shared: str, prefix: str
) -> None:
    client = connected(connections(backplane.RedisClient, shared))
    key = prefix + "text"

    def around_errors() -> Deferred[list[tuple[bool, Any]]]:
        return DeferredList(
            [
                client.execute("SET", key, "not a number"),
                client.execute("INCR", key),
                client.execute("NO-SUCH-COMMAND"),
                client.execute("LPUSH", key, "x"),
                client.execute("GET", key),
            ],
            consumeErrors=True,
        )

    results = [result for _, result in on_reactor(around_errors)]
    ok, incr, unknown, wrongtype, value = results
    assert ok == b"OK" and value == b"not a number"
    for failure, kind, words in [
        (incr, "ERR", "not an integer"),
        (unknown, "ERR", "unknown command"),
        (wrongtype, "WRONGTYPE", "wrong kind of value"),
    ]:
        assert failure.check(backplane.RedisError), failure
        assert failure.value.kind == kind and words in str(failure.value)
    assert on_reactor(client.execute, "PING") == b"PONG"


def test_a_database_is_selected(connections: Callable[..., Any], shared: str, prefix: str) -> None:
    seven = connected(connections(backplane.RedisClient, shared[: -len("/0")] + "/7"))
    zero = connected(connections(backplane.RedisClient, shared))
    on_reactor(seven.execute, "SET", prefix + "where", "seven")
    assert on_reactor(seven.execute, "GET", prefix + "where") == b"seven"
    assert on_reactor(zero.execute, "GET", prefix + "where") is None
    assert b" db=7 " in on_reactor(seven.execute, "CLIENT", "INFO")


def test_messages_arrive_in_the_order_published(
    connections: Callable[..., Any], shared: str, prefix: str
) -> None:
    client = connected(connections(backplane.RedisClient, shared))
    subscriber = connected(connections(backplane.RedisSubscriber, shared))
    first, second, unheard = Inbox(), Inbox(), Inbox()
    on_reactor(subscriber.subscribe, prefix + "one", first)
    on_reactor(subscriber.subscribe, (prefix + "two").encode(), second)
    on_reactor(subscriber.subscribe, prefix + "gone", unheard)
    on_reactor(subscriber.unsubscribe, prefix + "gone")
    assert subscriber.channels == {(prefix + "one").encode(), (prefix + "two").encode()}

    def publish_all() -> Deferred[list[Any]]:
        sent = []
        for i in range(1000):
            sent.append(client.publish(prefix + "one", f"m{i}"))
            sent.append(client.publish(prefix + "two", bytes([i % 256]) * (i % 50)))
        sent.append(client.publish(prefix + "gone", "nobody"))
        return collect(sent)

    receivers = on_reactor(publish_all)
    assert receivers == [1, 1] * 1000 + [0]
    assert wait_for(lambda: len(first.messages) == len(second.messages) == 1000)
    assert first.messages == [f"m{i}".encode() for i in range(1000)]
    assert second.messages == [bytes([i % 256]) * (i % 50) for i in range(1000)]
    assert unheard.messages == []


def test_a_failing_callback_does_not_stop_delivery(
    connections: Callable[..., Any], shared: str, prefix: str
) -> None:
    client = connected(connections(backplane.RedisClient, shared))
    subscriber = connected(connections(backplane.RedisSubscriber, shared))
    inbox = Inbox()

    def fussy(message: bytes) -> None:
        inbox(message)
        if message == b"bad":
            raise RuntimeError("a callback's own bug")

    on_reactor(subscriber.subscribe, prefix + "c", fussy)
    for message in ("a", "bad", "b"):
        on_reactor(client.publish, prefix + "c", message)
    assert wait_for(lambda: inbox.messages == [b"a", b"bad", b"b"])
    assert subscriber.connected


def test_evalsha_falls_back_to_eval_for_a_script_redis_lacks(
    connections: Callable[..., Any], shared: str, prefix: str
) -> None:
    client = connected(connections(backplane.RedisClient, shared))
    # a source no other run has, so Redis cannot have it cached
    source = f"-- {uuid.uuid4()}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])"
    unknown = backplane.Script(source.encode())
    assert on_reactor(client.execute, "SCRIPT", "EXISTS", unknown.sha1) == [0]
    assert on_reactor(client.run_script, unknown, [prefix + "n"], [5]) == 5
    assert on_reactor(client.execute, "SCRIPT", "EXISTS", unknown.sha1) == [1]
    assert on_reactor(client.run_script, unknown, [prefix + "n"], [2]) == 7

    registered = on_reactor(client.script, f"-- {uuid.uuid4()}\nreturn ARGV[1]")
    assert wait_for(lambda: on_reactor(client.execute, "SCRIPT", "EXISTS", registered.sha1) == [1])
    assert on_reactor(client.run_script, registered, [], ["echo"]) == b"echo"

    broken = backplane.Script(b"return redis.call('NO-SUCH-COMMAND')")
    with pytest.raises(backplane.RedisError):
        on_reactor(client.run_script, broken)


def test_no_server_means_every_command_fails_at_once(connections: Callable[..., Any]) -> None:
    events = Events()
    client = connections(
        backplane.RedisClient, f"redis://127.0.0.1:{free_port()}/0", **events.hooks()
    )
    subscriber = connections(backplane.RedisSubscriber, f"redis://127.0.0.1:{free_port()}/0")
    time.sleep(0.2)

    def attempt() -> list[Deferred[Any]]:
        return [
            client.execute("PING"),
            client.publish("c", "m"),
            client.run_script(backplane.Script(b"return 1")),
            subscriber.subscribe("c", Inbox()),
        ]

    for attempted in on_reactor(attempt):
        assert attempted.called
        with pytest.raises(backplane.NotConnected):
            attempted.result.raiseException()
        attempted.addErrback(lambda _: None)
    assert not client.connected and events.connected == events.disconnected == 0
    assert subscriber.channels == {b"c"}


# -- private servers, stopped and restarted -----------------------------------


def down_at_once(client: Any) -> float:
    """Seconds a command takes to fail while Redis is down (checked to fail
    before ``execute`` returns)."""

    def attempt() -> None:
        attempted = client.execute("SET", "late", "sent late")
        assert attempted.called
        attempted.addErrback(lambda failure: failure.trap(backplane.NotConnected))

    started = time.perf_counter()
    on_reactor(attempt)
    took = time.perf_counter() - started
    with pytest.raises(backplane.NotConnected):
        on_reactor(client.publish, "c", "m")
    return took


def test_a_restart_fails_what_is_in_flight_and_reconnects(
    connections: Callable[..., Any], private_redis: Callable[..., PrivateRedis]
) -> None:
    server = private_redis()
    client_events, subscriber_events = Events(), Events()
    url = server.url(db=3)
    client = connected(connections(backplane.RedisClient, url, **client_events.hooks()))
    subscriber = connected(connections(backplane.RedisSubscriber, url, **subscriber_events.hooks()))
    inbox = Inbox()
    on_reactor(subscriber.subscribe, "room", inbox)
    script = on_reactor(client.script, "return redis.call('INCR', KEYS[1])")
    assert on_reactor(client.run_script, script, ["n"]) == 1
    on_reactor(client.publish, "room", "before")
    assert wait_for(lambda: inbox.messages == [b"before"])

    in_flight: list[Any] = []
    on_reactor(lambda: [client.execute("BLPOP", "never", 0).addBoth(in_flight.append)])
    time.sleep(0.1)
    server.stop()
    assert wait_for(lambda: in_flight and client_events.disconnected == 1)
    assert in_flight[0].check(backplane.ReplyLost), in_flight[0]
    assert wait_for(lambda: subscriber_events.disconnected == 1)
    assert not client.connected and not subscriber.connected

    took = down_at_once(client)
    assert took < 0.05, f"a command took {took * 1000:.1f} ms to fail while Redis was down"
    with pytest.raises(backplane.NotConnected):
        on_reactor(subscriber.subscribe, "later", inbox)

    server.start()  # empty: no keys, no scripts, no subscriptions
    connected(client)
    connected(subscriber)
    assert client_events.connected == subscriber_events.connected == 2
    assert b" db=3 " in on_reactor(client.execute, "CLIENT", "INFO")
    assert on_reactor(client.execute, "GET", "late") is None, "a command was sent late"
    assert on_reactor(client.execute, "SCRIPT", "EXISTS", script.sha1) == [1]
    assert on_reactor(client.run_script, script, ["n"]) == 1
    assert on_reactor(client.execute, "PUBSUB", "NUMSUB", "room", "later") == [
        b"room",
        1,
        b"later",
        1,
    ]
    on_reactor(client.publish, "room", "after")
    on_reactor(client.publish, "later", "too")
    assert wait_for(lambda: inbox.messages == [b"before", b"after", b"too"])


def test_a_frozen_redis_fails_what_waits_and_is_reconnected(
    connections: Callable[..., Any], private_redis: Callable[..., PrivateRedis]
) -> None:
    """Redis stopped (SIGSTOP) keeps the TCP connection open and answers
    nothing: within two reply timeouts what waits fails and the connection is
    dropped; when it answers again, a new one is made."""
    server = private_redis()
    assert server.process is not None
    client_events, subscriber_events = Events(), Events()
    url = server.url()
    client = connected(
        connections(backplane.RedisClient, url, reply_timeout=0.3, **client_events.hooks())
    )
    subscriber = connected(
        connections(backplane.RedisSubscriber, url, reply_timeout=0.3, **subscriber_events.hooks())
    )
    waiting: list[Any] = []
    server.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        on_reactor(lambda: [client.execute("GET", "k").addBoth(waiting.append)])
        assert wait_for(lambda: bool(waiting), 3)
        assert waiting[0].check(backplane.ReplyLost), waiting[0]
        assert time.monotonic() - started < 1.0
        # the idle subscriber's PING goes unanswered too
        assert wait_for(lambda: subscriber_events.disconnected == 1, 3)
        assert not client.connected
    finally:
        server.process.send_signal(signal.SIGCONT)
    connected(client)
    connected(subscriber)
    assert on_reactor(client.execute, "PING") == b"PONG"


def test_a_script_flushed_from_redis_still_runs(
    connections: Callable[..., Any], private_redis: Callable[..., PrivateRedis]
) -> None:
    server = private_redis()
    client = connected(connections(backplane.RedisClient, server.url()))
    script = on_reactor(client.script, "return {KEYS[1], ARGV[1]}")
    assert on_reactor(client.run_script, script, ["k"], ["v"]) == [b"k", b"v"]
    on_reactor(client.execute, "SCRIPT", "FLUSH")
    assert on_reactor(client.run_script, script, ["k"], ["w"]) == [b"k", b"w"]


def test_a_password_is_sent_on_every_connection(
    connections: Callable[..., Any], private_redis: Callable[..., PrivateRedis]
) -> None:
    server = private_redis("--requirepass", "s3cret:/@")
    url = server.url(":s3cret%3A%2F%40", db=2)
    events = Events()
    client = connected(connections(backplane.RedisClient, url, **events.hooks()))
    subscriber = connected(connections(backplane.RedisSubscriber, url))
    inbox = Inbox()
    on_reactor(subscriber.subscribe, "c", inbox)
    assert on_reactor(client.execute, "PING") == b"PONG"
    assert b" db=2 " in on_reactor(client.execute, "CLIENT", "INFO")

    wrong = connections(backplane.RedisClient, server.url(":wrong"))
    anonymous = connections(backplane.RedisClient, server.url())
    time.sleep(0.3)
    assert not wrong.connected and not anonymous.connected
    with pytest.raises(backplane.NotConnected):
        on_reactor(anonymous.execute, "PING")

    server.stop()
    server.start()
    connected(client)
    connected(subscriber)
    assert events.connected == 2
    assert b" db=2 " in on_reactor(client.execute, "CLIENT", "INFO")
    on_reactor(client.publish, "c", "after a restart")
    assert wait_for(lambda: inbox.messages == [b"after a restart"])


def test_rediss_connects_over_tls(
    connections: Callable[..., Any],
    private_redis: Callable[..., PrivateRedis],
    tmp_path: Path,
    ca: CertificateAuthority,
) -> None:
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    cert, key = ca.write_server(tmp_path / "tls")
    root = ca.write_root(tmp_path / "ca.pem")
    server = private_redis(
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(root),
        "--tls-auth-clients",
        "no",
        tls=True,
    )
    trust = Certificate.loadPEM(root.read_bytes())
    options = optionsForClientTLS("localhost", trustRoot=trust)
    client = connected(connections(backplane.RedisClient, server.url(), tls_options=options))
    subscriber = connected(
        connections(backplane.RedisSubscriber, server.url(), tls_options=options)
    )
    inbox = Inbox()
    on_reactor(subscriber.subscribe, "c", inbox)
    assert on_reactor(client.publish, "c", "over TLS") == 1
    assert wait_for(lambda: inbox.messages == [b"over TLS"])

    untrusting = connections(backplane.RedisClient, server.url())  # the system's roots
    time.sleep(0.3)
    assert not untrusting.connected


def test_the_in_memory_server_does_not_import_the_client() -> None:
    import sys

    script = (
        "import sys\n"
        "import signaling.ops.tap, signaling.web.site, signaling.wire.protocol\n"
        "print(sorted(m for m in sys.modules if m.startswith(('hiredis', 'signaling.backplane'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]"
