"""A thin Redis client on Twisted: one pipelined connection for commands, one
for subscriptions, each kept up by ``ClientService``.

Replies are parsed by ``hiredis``'s C reader. Commands go out in the order
they are made, on exactly one connection, and their Deferreds fire in that
order. The failure rule: while there is no ready connection a command fails
at once with ``NotConnected``, and a command in flight when the connection
drops fails with ``ReplyLost`` (both ``Unavailable``); nothing is queued to be
sent late. Each (re)connection authenticates, selects the database and loads
the registered scripts before any command goes out on it; the subscriber
subscribes every channel again before it reports the connection. A
connection with a reply overdue by ``reply_timeout`` (Redis frozen, or the
path to it gone silently) is dropped, and an idle one is pinged as often, so
nothing waits on a dead connection; blocking commands (``BLPOP``, ...)
therefore must not outlast ``reply_timeout``.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, FirstError, fail, gatherResults, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from signaling.logs import ServerLogger

__all__ = [
    "NotConnected",
    "RedisAddress",
    "RedisClient",
    "RedisError",
    "RedisSubscriber",
    "ReplyLost",
    "Script",
    "Unavailable",
    "parse_url",
]

_log = ServerLogger()

DEFAULT_PORT = 6379
#: Channels per SUBSCRIBE command when a subscriber (re)subscribes them all.
SUBSCRIBE_BATCH = 1000

Argument = bytes | str | int | float

# hiredis's stub declares a one-element tuple; it takes any number of arguments.
_pack = cast(Callable[[tuple[Argument, ...]], bytes], hiredis.pack_command)


class RedisError(Exception):
    """An error reply from Redis (``-ERR ...``, ``-NOSCRIPT ...``)."""

    @property
    def kind(self) -> str:
        """The reply's first word: ``ERR``, ``NOSCRIPT``, ``WRONGTYPE``, ..."""
        text = str(self)
        return text.split(" ", 1)[0] if text else ""


class Unavailable(Exception):
    """Redis cannot answer: there is no connection, or it was lost before the reply."""


class NotConnected(Unavailable):
    """The command was not sent: no connection is ready now."""


class ReplyLost(Unavailable):
    """The command was sent, but its connection was lost before the reply came."""


@dataclass(frozen=True)
class RedisAddress:
    """Where a Redis server is and how to log in to it."""

    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    password: str | None = field(default=None, repr=False)
    username: str | None = None
    tls: bool = False


def parse_url(url: str) -> RedisAddress:
    """``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`` (``rediss://`` for TLS)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"not a redis:// or rediss:// URL: {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"a Redis URL takes no query or fragment: {url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in the Redis URL {url!r}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"bad port in the Redis URL {url!r}") from None
    path = parts.path.lstrip("/")
    if path and not (path.isascii() and path.isdigit()):
        raise ValueError(f"the database in a Redis URL is a number: {url!r}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if username and password is None:
        raise ValueError(f"a user name in a Redis URL needs a password: {url!r}")
    return RedisAddress(
        host=host,
        port=port,
        db=int(path) if path else 0,
        password=password or None,
        username=username,
        tls=parts.scheme == "rediss",
    )


@dataclass(frozen=True)
class Script:
    """A Lua script, run by its SHA1 (``EVALSHA``)."""

    source: bytes
    sha1: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha1", hashlib.sha1(self.source).hexdigest())


class RedisProtocol(Protocol):
    """One connection to Redis: commands pipelined, replies matched in order."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(replyError=RedisError, notEnoughData=_INCOMPLETE)
        self._waiting: deque[Deferred[Any]] = deque()
        #: Replies received so far (what the stall check watches).
        self.replies = 0
        self.lost = False
        #: Called once with this protocol when its connection is lost.
        self.on_lost: Callable[[RedisProtocol], object] | None = None

    def connectionMade(self) -> None:
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)

    def execute(self, *args: Argument) -> Deferred[Any]:
        """Send one command; the Deferred fires with its reply."""
        if self.lost:
            return fail(NotConnected("the connection to Redis is closed"))
        waiting: Deferred[Any] = Deferred()
        self._waiting.append(waiting)
        self.transport.write(_pack(args))  # type: ignore[union-attr]
        return waiting

    def publish_parts(self, channel: bytes, parts: list[bytes], size: int) -> Deferred[Any]:
        """``PUBLISH channel`` of the message ``b"".join(parts)`` (``size``
        bytes), written without joining it: a batch of relayed frames is
        copied once (by the transport), not three times."""
        if self.lost:
            return fail(NotConnected("the connection to Redis is closed"))
        waiting: Deferred[Any] = Deferred()
        self._waiting.append(waiting)
        head = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n" % (len(channel), channel, size)
        self.transport.writeSequence([head, *parts, b"\r\n"])  # type: ignore[union-attr]
        return waiting

    def dataReceived(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not _INCOMPLETE:
                self.reply_received(reply)
        except hiredis.ProtocolError as e:
            self._abort(f"Redis protocol error: {e}")

    def reply_received(self, reply: Any) -> None:
        if not self._waiting:
            self._abort(f"a reply from Redis that no command asked for: {reply!r:.100}")
            return
        waiting = self._waiting.popleft()
        self.replies += 1
        if isinstance(reply, RedisError):
            waiting.errback(reply)
        else:
            waiting.callback(reply)

    @property
    def waiting(self) -> int:
        """Commands sent whose reply has not come yet."""
        return len(self._waiting)

    def _abort(self, why: str) -> None:
        _log.error("{why}; dropping the connection", why=why)
        self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self.lost = True
        waiting, self._waiting = self._waiting, deque()
        lost = ReplyLost(f"the connection to Redis was lost: {reason.getErrorMessage()}")
        for each in waiting:
            each.errback(lost)
        if self.on_lost is not None:
            self.on_lost(self)


class _Incomplete:
    """What ``hiredis.Reader.gets`` returns while no whole reply has arrived."""


_INCOMPLETE = _Incomplete()


class SubscriberProtocol(RedisProtocol):
    """A connection in subscribe mode: messages go to the callback of their channel."""

    def __init__(self, callbacks: dict[bytes, Callable[[bytes], object]]) -> None:
        super().__init__()
        self._callbacks = callbacks
        self._confirming: dict[tuple[bytes, bytes], deque[Deferred[None]]] = {}

    def subscribe(self, channels: Sequence[bytes]) -> Deferred[None]:
        """``SUBSCRIBE``; fires when Redis has confirmed every channel."""
        return self._change(b"SUBSCRIBE", b"subscribe", channels)

    def unsubscribe(self, channels: Sequence[bytes]) -> Deferred[None]:
        """``UNSUBSCRIBE``; fires when Redis has confirmed every channel."""
        return self._change(b"UNSUBSCRIBE", b"unsubscribe", channels)

    def _change(self, command: bytes, kind: bytes, channels: Sequence[bytes]) -> Deferred[None]:
        if self.lost:
            return fail(NotConnected("the subscriber's connection to Redis is closed"))
        confirmations = []
        for channel in channels:
            confirmed: Deferred[None] = Deferred()
            self._confirming.setdefault((kind, channel), deque()).append(confirmed)
            confirmations.append(confirmed)
        self.transport.write(_pack((command, *channels)))  # type: ignore[union-attr]
        return gatherResults(confirmations, consumeErrors=True).addCallbacks(
            lambda _: None, _first_error
        )

    def dataReceived(self, data: bytes) -> None:
        reader = self._reader
        callbacks = self._callbacks
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not _INCOMPLETE:
                if type(reply) is list and reply[0] == b"message":
                    callback = callbacks.get(reply[1])
                    if callback is not None:
                        try:
                            callback(reply[2])
                        except Exception:
                            _log.failure("a Redis message's callback failed")
                elif type(reply) is list and reply[0] in (b"subscribe", b"unsubscribe"):
                    self._confirmed(reply[0], reply[1])
                else:
                    self.reply_received(reply)
        except hiredis.ProtocolError as e:
            self._abort(f"Redis protocol error: {e}")

    def _confirmed(self, kind: bytes, channel: bytes) -> None:
        waiting = self._confirming.get((kind, channel))
        if not waiting:
            return
        waiting.popleft().callback(None)
        if not waiting:
            del self._confirming[(kind, channel)]

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        confirming, self._confirming = self._confirming, {}
        lost = ReplyLost(f"the connection to Redis was lost: {reason.getErrorMessage()}")
        for waiting in confirming.values():
            for each in waiting:
                each.errback(lost)
        super().connectionLost(reason)


def _first_error(failure: Failure) -> Failure:
    """The failure inside ``gatherResults``'s ``FirstError``."""
    if isinstance(failure.value, FirstError):
        return failure.value.subFailure
    return failure


class _Factory(Factory):
    def __init__(self, build: Callable[[], RedisProtocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: object) -> RedisProtocol:
        return self._build()


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


class _Connection:
    """One connection kept up by ``ClientService``, ready once logged in."""

    def __init__(
        self,
        address: RedisAddress,
        *,
        reactor: Any = None,
        on_connected: Callable[[], object] | None = None,
        on_disconnected: Callable[[], object] | None = None,
        retry_policy: Callable[[int], float] | None = None,
        connect_timeout: float = 5.0,
        reply_timeout: float = 5.0,
        tls_options: IOpenSSLClientConnectionCreator | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.address = address
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self._protocol: Any = None
        endpoint: Any = HostnameEndpoint(
            reactor, address.host, address.port, timeout=connect_timeout
        )
        if address.tls:
            if tls_options is None:
                from twisted.internet.ssl import optionsForClientTLS

                tls_options = optionsForClientTLS(address.host)
            endpoint = wrapClientTLS(tls_options, endpoint)
        self._built: RedisProtocol | None = None
        #: The connection being set up (logging in), then ready.
        self._current: RedisProtocol | None = None
        self._reply_timeout = reply_timeout
        self._stall_check: Any = None
        self._replies_seen = -1
        self._refusals = 0
        self._clock = reactor
        self._retry_policy = retry_policy or backoffPolicy(initialDelay=0.1, maxDelay=5.0)
        self._service = ClientService(
            endpoint,
            _Factory(self._build),
            retryPolicy=self._retry_policy,
            clock=reactor,
            prepareConnection=self._prepare,
        )

    @property
    def connected(self) -> bool:
        """Whether a connection is ready now (logged in, database selected)."""
        return self._protocol is not None

    def start(self) -> None:
        """Connect, and reconnect whenever the connection is lost, until ``stop``."""
        self._service.startService()
        if self._reply_timeout > 0:
            self._stall_check = self._clock.callLater(self._reply_timeout, self._check_stall)

    def stop(self) -> Deferred[None]:
        """Close the connection and stop reconnecting."""
        if self._stall_check is not None and self._stall_check.active():
            self._stall_check.cancel()
        self._stall_check = None
        return self._service.stopService()  # type: ignore[no-any-return]

    def _check_stall(self) -> None:
        """Every ``reply_timeout`` seconds: drop a connection on which a reply
        is overdue (Redis frozen, or the path to it gone without a reset), so
        that what waits fails and a new connection is made; on an idle one,
        send a PING, so that a dead one is found too. A stall is found within
        two periods."""
        self._stall_check = self._clock.callLater(self._reply_timeout, self._check_stall)
        protocol = self._current
        if protocol is None or protocol.lost:
            return
        if protocol.waiting and protocol.replies == self._replies_seen:
            _log.warn(
                "No reply from Redis at {host}:{port} for {timeout:g} s; reconnecting",
                host=self.address.host,
                port=self.address.port,
                timeout=self._reply_timeout,
            )
            protocol.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._replies_seen = protocol.replies
        if not protocol.waiting:
            protocol.execute(b"PING").addErrback(lambda _: None)

    def _new_protocol(self) -> RedisProtocol:
        return RedisProtocol()

    def _build(self) -> RedisProtocol:
        protocol = self._new_protocol()
        protocol.on_lost = self._lost
        self._built = protocol
        return protocol

    def _prepare(self, connected: object) -> Deferred[None]:
        # ClientService hands over a proxy of the protocol; it connects one at
        # a time, so the connection made is the one last built.
        protocol = self._built
        assert protocol is not None
        self._built = None
        self._current = protocol
        self._replies_seen = -1
        steps: list[Deferred[Any]] = []
        address = self.address
        if address.password is not None:
            login = (
                (address.username, address.password) if address.username else (address.password,)
            )
            steps.append(protocol.execute(b"AUTH", *login))
        steps.extend(self._setup(protocol))
        if not steps:
            # a connection is ready once Redis has answered on it
            steps.append(protocol.execute(b"PING"))
        return gatherResults(steps, consumeErrors=True).addCallbacks(
            lambda _: self._ready(protocol), lambda failure: self._refused(protocol, failure)
        )

    def _setup(self, protocol: RedisProtocol) -> list[Deferred[Any]]:
        """What each new connection does after AUTH, before it counts as ready."""
        return []

    def _ready(self, protocol: RedisProtocol) -> None:
        if protocol.lost:
            return
        self._protocol = protocol
        self._refusals = 0
        _log.info(
            "Connected to Redis at {host}:{port}", host=self.address.host, port=self.address.port
        )
        if self.on_connected is not None:
            self.on_connected()

    def _refused(self, protocol: RedisProtocol, failure: Failure) -> None:
        # The set-up's failure is not passed on to ClientService: it would
        # leave the connection open, and Twisted's state machine has no
        # transition for a connection lost before it counts as made. So the
        # connection counts as made (never as ready here), and is closed
        # after this client's own back-off; ClientService reconnects then.
        if protocol.lost:
            return
        self._refusals += 1
        delay = self._retry_policy(self._refusals)
        _log.error(
            "Redis at {host}:{port} refused the new connection's set-up: {error};"
            " reconnecting in {delay:.1f} s",
            host=self.address.host,
            port=self.address.port,
            error=_first_error(failure).getErrorMessage(),
            delay=delay,
        )
        self._clock.callLater(delay, protocol.transport.loseConnection)  # type: ignore[union-attr]

    def _lost(self, protocol: RedisProtocol) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        _log.warn(
            "Lost the connection to Redis at {host}:{port}",
            host=self.address.host,
            port=self.address.port,
        )
        if self.on_disconnected is not None:
            self.on_disconnected()


class RedisClient(_Connection):
    """Commands over one connection, in order; failing at once while it is down.

    ``on_connected`` is called each time a connection becomes ready (the
    first and every reconnection), ``on_disconnected`` each time a ready one
    is lost.
    """

    def __init__(self, address: RedisAddress, **options: Any) -> None:
        super().__init__(address, **options)
        self._scripts: dict[str, Script] = {}

    def execute(self, *args: Argument) -> Deferred[Any]:
        """Send a command; fires with its reply, or fails with ``RedisError``
        or ``Unavailable`` (at once with ``NotConnected`` while disconnected)."""
        protocol = self._protocol
        if protocol is None:
            return fail(NotConnected("not connected to Redis"))
        return protocol.execute(*args)  # type: ignore[no-any-return]

    def publish(self, channel: bytes | str, message: bytes | str) -> Deferred[int]:
        """``PUBLISH``; fires with the number of subscribers that received it."""
        protocol = self._protocol
        if protocol is None:
            return fail(NotConnected("not connected to Redis"))
        return protocol.execute(b"PUBLISH", channel, message)  # type: ignore[no-any-return]

    def publish_parts(self, channel: bytes, parts: list[bytes], size: int) -> Deferred[int]:
        """``PUBLISH`` of ``b"".join(parts)`` (``size`` bytes long), without
        joining it here; fires with the number of subscribers that received it."""
        protocol = self._protocol
        if protocol is None:
            return fail(NotConnected("not connected to Redis"))
        return protocol.publish_parts(channel, parts, size)  # type: ignore[no-any-return]

    def script(self, source: bytes | str) -> Script:
        """A script to run with ``run_script``; each new connection loads it first."""
        script = Script(_as_bytes(source))
        self._scripts[script.sha1] = script
        protocol = self._protocol
        if protocol is not None:
            protocol.execute(b"SCRIPT", b"LOAD", script.source).addErrback(lambda _: None)
        return script

    def run_script(
        self, script: Script, keys: Sequence[Argument] = (), args: Sequence[Argument] = ()
    ) -> Deferred[Any]:
        """``EVALSHA``, and ``EVAL`` if Redis has lost the script (``NOSCRIPT``).

        Scripts made with ``script`` are loaded on every new connection, so
        ``NOSCRIPT`` comes only after a ``SCRIPT FLUSH``; the ``EVAL`` then goes
        out after any command sent in the meantime.
        """
        tail = (len(keys), *keys, *args)

        def missing(failure: Failure) -> Any:
            error = failure.trap(RedisError) and failure.value
            if not isinstance(error, RedisError) or error.kind != "NOSCRIPT":
                return failure
            return self.execute(b"EVAL", script.source, *tail)

        return self.execute(b"EVALSHA", script.sha1, *tail).addErrback(missing)

    def _setup(self, protocol: RedisProtocol) -> list[Deferred[Any]]:
        steps = []
        if self.address.db:
            steps.append(protocol.execute(b"SELECT", self.address.db))
        steps.extend(
            protocol.execute(b"SCRIPT", b"LOAD", script.source) for script in self._scripts.values()
        )
        return steps


class RedisSubscriber(_Connection):
    """Subscriptions over their own connection, made again on each reconnection.

    ``on_connected`` is called each time a connection is ready with every
    channel subscribed: after a reconnection, messages published while it was
    down are lost, and this is where to reconcile. ``on_disconnected`` is
    called each time a ready connection is lost.
    """

    def __init__(self, address: RedisAddress, **options: Any) -> None:
        super().__init__(address, **options)
        self._callbacks: dict[bytes, Callable[[bytes], object]] = {}

    @property
    def channels(self) -> set[bytes]:
        """The channels subscribed to (on every connection to come too)."""
        return set(self._callbacks)

    def subscribe(
        self, channel: bytes | str, callback: Callable[[bytes], object]
    ) -> Deferred[None]:
        """Call ``callback`` with each message on ``channel``, from now on.

        Fires when Redis confirms. The subscription stands even if this
        fails with ``Unavailable``: it is made on every new connection.
        """
        name = _as_bytes(channel)
        self._callbacks[name] = callback
        protocol = self._protocol
        if protocol is None:
            return fail(NotConnected("the subscriber is not connected to Redis"))
        return protocol.subscribe((name,))  # type: ignore[no-any-return]

    def unsubscribe(self, channel: bytes | str) -> Deferred[None]:
        """Stop delivering ``channel``'s messages; fires when Redis confirms."""
        name = _as_bytes(channel)
        self._callbacks.pop(name, None)
        protocol = self._protocol
        if protocol is None:
            return succeed(None)
        return protocol.unsubscribe((name,))  # type: ignore[no-any-return]

    def _new_protocol(self) -> RedisProtocol:
        return SubscriberProtocol(self._callbacks)

    def _setup(self, protocol: RedisProtocol) -> list[Deferred[Any]]:
        assert isinstance(protocol, SubscriberProtocol)
        channels = list(self._callbacks)
        return [
            protocol.subscribe(channels[start : start + SUBSCRIBE_BATCH])
            for start in range(0, len(channels), SUBSCRIBE_BATCH)
        ]
