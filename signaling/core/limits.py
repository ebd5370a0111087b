"""Per-server limits, the command-line options that set them, and the
per-connection message rate limiter."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, TypeVar, cast

from signaling.core.messages import DEFAULT_MAX_ROOM_ID_LENGTH

KIB = 1024

T = TypeVar("T")


def parse_positive_int(value: str) -> int:
    """An option's value as an integer >= 1 (ValueError otherwise)."""
    number = int(value)
    if number < 1:
        raise ValueError(f"{value} is not a positive integer")
    return number


def parse_count(value: str) -> int:
    """An option's value as a count >= 0, where 0 turns a limit off."""
    number = int(value)
    if number < 0:
        raise ValueError(f"{value} is negative (0 turns the limit off)")
    return number


def parse_seconds(value: str) -> float:
    """An option's value as a finite number of seconds >= 0."""
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{value} is not a number of seconds >= 0")
    return number


def parse_rate(value: str) -> float:
    """An option's value as a finite number of messages a second >= 0."""
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{value} is not a number of messages a second >= 0")
    return number


@dataclass(frozen=True)
class _Option:
    help: str
    parse: Callable[[str], Any]


def _option(default: T, parse: Callable[[str], T], help: str) -> T:
    """A limit set by the command-line option named after it (``max_rooms``:
    ``--max-rooms``), whose value ``parse`` checks and converts."""
    return cast(T, field(default=default, metadata={"option": _Option(help, parse)}))


@dataclass(frozen=True)
class Limits:
    """Every limit the server enforces; 0 turns a count or time limit off."""

    max_message_size: int = _option(
        64 * KIB,
        parse_positive_int,
        "Largest accepted WebSocket message, in bytes; larger ones close the connection with 1009.",
    )
    max_fragments: int = _option(
        128,
        parse_count,
        "Most frames one WebSocket message may be split into; more close the connection with 1009.",
    )
    max_room_id_length: int = _option(
        DEFAULT_MAX_ROOM_ID_LENGTH,
        parse_positive_int,
        "Longest accepted room id, in characters.",
    )
    max_room_size: int = _option(50, parse_count, "Most members in one room.")
    max_rooms: int = _option(10_000, parse_count, "Most rooms at once.")
    max_connections: int = _option(
        10_000,
        parse_count,
        "Most open WebSocket connections; beyond it handshakes get HTTP 503.",
    )
    max_connections_per_address: int = _option(
        100,
        parse_count,
        "Most open connections from one client address, an IPv4 address or IPv6 /64 "
        "(HTTP 503 beyond); peers on a unix socket count only by a trusted forwarded "
        "address.",
    )
    rate_limit: float = _option(
        50.0, parse_rate, "Messages a second one connection may send on average."
    )
    rate_burst: int = _option(
        200,
        parse_positive_int,
        "Messages one connection may send in a burst above --rate-limit.",
    )
    rate_limit_strikes: int = _option(
        100,
        parse_count,
        "Refused messages in a row after which a connection is closed (1008).",
    )
    max_send_buffer: int = _option(
        1024 * KIB,
        parse_count,
        "Bytes that may queue for a client that is not reading before it is closed (1008).",
    )
    ping_interval: float = _option(
        20.0, parse_seconds, "Seconds between WebSocket pings to each client."
    )
    ping_timeout: float = _option(
        20.0, parse_seconds, "Seconds to wait for a pong before dropping the connection."
    )
    join_timeout: float = _option(
        30.0, parse_seconds, "Seconds a connection may stay open without being in a room."
    )
    resume_grace: float = _option(
        15.0,
        parse_seconds,
        "Seconds a client that connected with ?resume=1 keeps its id, room and "
        "frames after its connection drops; 0 turns resuming off.",
    )
    handshake_timeout: float = _option(
        10.0,
        parse_seconds,
        "Seconds the opening handshake may take (and idle HTTP may wait).",
    )
    max_handshake_size: int = _option(
        16 * KIB,
        parse_positive_int,
        "Bytes of request line and headers accepted for the WebSocket handshake.",
    )
    max_pending_connections: int = _option(
        1024,
        parse_count,
        "Most connections that are not WebSockets (yet): handshakes under way and "
        "plain HTTP; beyond it the oldest of them is closed.",
    )
    max_pending_per_address: int = _option(
        32,
        parse_count,
        "Most such connections from one client address; beyond it that address's oldest is closed.",
    )
    connect_rate: float = _option(
        20.0,
        parse_rate,
        "New connections a second one client address may open on average; "
        "beyond it (and --connect-burst) they are closed at once.",
    )
    connect_burst: int = _option(
        100,
        parse_positive_int,
        "New connections one client address may open in a burst above --connect-rate.",
    )
    fd_reserve: int = _option(
        64,
        parse_count,
        "File descriptors kept free under the process's limit: a connection that "
        "would take one of them closes the oldest pending connection (or itself).",
    )
    client_log_rate: int = _option(
        20,
        parse_count,
        "Log lines a minute for each kind of event clients cause (error replies, "
        "refused handshakes, ...); the rest are counted in /metrics.",
    )
    access_log_rate: int = _option(
        300,
        parse_count,
        "Lines a minute of the HTTP access log (/healthz, /metrics, the demo's files); "
        "the rest are counted in one line a minute.",
    )
    #: Set by the repeatable ``--allowed-origin``, which checks each pattern.
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)


class LimitOption(NamedTuple):
    """The command-line option ``--name`` that sets the field ``field`` of
    :class:`Limits`."""

    name: str
    field: str
    default: Any
    help: str
    parse: Callable[[str], Any]


def limit_options() -> list[LimitOption]:
    """The options that set limits, in the order of the fields of :class:`Limits`."""
    return [
        LimitOption(
            f.name.replace("_", "-"),
            f.name,
            f.default,
            f.metadata["option"].help,
            f.metadata["option"].parse,
        )
        for f in fields(Limits)
        if "option" in f.metadata
    ]


class RateLimiter:
    """A token bucket: ``rate`` messages a second, bursts of ``burst``.

    ``allow(now)`` spends one token if there is one.  ``strikes`` counts
    refusals since the last allowed message, so a caller can tell a client
    that briefly overshoots from one that keeps flooding.
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate", "strikes")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now
        self.strikes = 0

    def allow(self, now: float) -> bool:
        # max(): a wall clock stepped back must not take tokens away
        tokens = self._tokens + max(0.0, now - self._stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self._stamp = now
        if tokens < 0.999999:  # float error must not cost a whole token
            self._tokens = tokens
            self.strikes += 1
            return False
        self._tokens = tokens - 1.0
        self.strikes = 0
        return True

    def is_full(self, now: float) -> bool:
        """Whether the bucket would hold ``burst`` tokens at ``now``."""
        return self._tokens + max(0.0, now - self._stamp) * self.rate >= self.burst
