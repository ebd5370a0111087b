"""Per-server limits and the per-connection message rate limiter."""

from __future__ import annotations

from dataclasses import dataclass, field

from signaling.core.messages import DEFAULT_MAX_ROOM_ID_LENGTH

KIB = 1024


@dataclass(frozen=True)
class Limits:
    """Every limit the server enforces; 0 turns a count or time limit off."""

    max_message_size: int = 64 * KIB
    max_fragments: int = 128
    max_room_id_length: int = DEFAULT_MAX_ROOM_ID_LENGTH
    max_room_size: int = 50
    max_rooms: int = 10_000
    max_connections: int = 10_000
    max_connections_per_address: int = 100
    rate_limit: float = 50.0
    rate_burst: int = 200
    rate_limit_strikes: int = 100
    max_send_buffer: int = 1024 * KIB
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    join_timeout: float = 30.0
    handshake_timeout: float = 10.0
    max_handshake_size: int = 16 * KIB
    max_pending_connections: int = 1024
    max_pending_per_address: int = 32
    connect_rate: float = 20.0
    connect_burst: int = 100
    fd_reserve: int = 64
    client_log_rate: int = 20
    access_log_rate: int = 300
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)


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
