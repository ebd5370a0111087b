"""Counters the server keeps as plain numbers, read out by /metrics and /healthz.

Incrementing an int attribute costs far less than a prometheus_client
child's ``inc()`` (which takes a lock), so the per-message path only touches
these; :mod:`signaling.web.metrics` turns them into Prometheus metrics when
scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter

#: Upper bounds (seconds) of the relay latency histogram buckets.
LATENCY_BUCKETS = (
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.1,
)


class Stats:
    """Totals since the server started."""

    def __init__(self) -> None:
        self.connections_total = 0
        self.received: Counter[str] = Counter()
        self.relayed: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.bytes_in = 0
        self.bytes_out = 0
        self.slow_consumers = 0
        self.keepalive_timeouts = 0
        #: Sessions taken over by a new connection (``?resume_token=``).
        self.sessions_resumed = 0
        #: Away sessions that ended unresumed (grace over, or too much kept).
        self.sessions_expired = 0
        #: Sessions that moved to or from another process (--redis resumes).
        self.sessions_moved_in = 0
        self.sessions_moved_out = 0
        self.tls_failures = 0
        self.refused_handshakes: Counter[int] = Counter()
        #: Requests with X-Forwarded-For or Forwarded while --trust-proxy is 0.
        self.untrusted_forwarded = 0
        #: Webhook calls that gave no usable answer, by (webhook, reason).
        self.webhook_failures: Counter[tuple[str, str]] = Counter()
        # one count per bucket plus +Inf, not cumulative
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def observe_relay(self, seconds: float) -> None:
        """Record the time from receiving a relayed message to writing it."""
        self.latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
