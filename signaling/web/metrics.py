"""Prometheus metrics, computed from :class:`~signaling.core.stats.Stats` at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from signaling.core.stats import LATENCY_BUCKETS

if TYPE_CHECKING:
    from signaling.wire.protocol import SignalingFactory

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SignalingCollector(Collector):
    """Reads one factory's state and counters each time it is collected."""

    def __init__(self, factory: SignalingFactory) -> None:
        self.factory = factory

    def collect(self) -> Iterator[Metric]:
        factory = self.factory
        hub = factory.hub
        stats = hub.stats
        registry = hub.rooms

        yield GaugeMetricFamily(
            "signaling_connections_open", "Open WebSocket connections.", len(hub.sessions)
        )
        yield CounterMetricFamily(
            "signaling_connections",
            "WebSocket connections opened since start.",
            stats.connections_total,
        )
        yield GaugeMetricFamily(
            "signaling_rooms", "Rooms with a member in this process now.", registry.room_count
        )
        yield GaugeMetricFamily(
            "signaling_clients",
            "Clients of this process that are in a room now.",
            registry.member_count,
        )
        for name, value in registry.counters().items():
            kind, documentation = _ROOMS_FIGURES[name]
            yield kind(f"signaling_{name}", documentation, value)
        yield _by_label(
            "signaling_messages_received",
            "Client messages received, by type ('invalid' when unparseable).",
            "type",
            stats.received,
        )
        yield _by_label(
            "signaling_messages_relayed",
            "Offers, answers and candidates delivered to their target, by type.",
            "type",
            stats.relayed,
        )
        yield _by_label("signaling_errors", "Error messages sent, by code.", "code", stats.errors)
        yield _by_label(
            "signaling_handshakes_refused",
            "WebSocket handshakes refused, by HTTP status.",
            "status",
            {str(k): v for k, v in stats.refused_handshakes.items()},
        )
        yield _by_label(
            "signaling_connections_shed",
            "Connections closed before their handshake by an admission limit, by reason.",
            "reason",
            factory.admission.shed,
        )
        yield CounterMetricFamily(
            "signaling_untrusted_forwarded_requests",
            "Requests that carried X-Forwarded-For or Forwarded while --trust-proxy is 0 "
            "(the header was ignored).",
            stats.untrusted_forwarded,
        )
        failures = CounterMetricFamily(
            "signaling_webhook_failures",
            "Webhook calls that gave no usable answer (auth: the join got 'unavailable'; "
            "disconnect: the notice is lost), by webhook and reason.",
            labels=["webhook", "reason"],
        )
        for (webhook, reason), count in sorted(stats.webhook_failures.items()):
            failures.add_metric([webhook, reason], count)
        yield failures
        yield CounterMetricFamily(
            "signaling_received_bytes", "Message payload bytes received.", stats.bytes_in
        )
        yield CounterMetricFamily(
            "signaling_sent_bytes", "Message payload bytes sent.", stats.bytes_out
        )
        yield CounterMetricFamily(
            "signaling_slow_consumers_dropped",
            "Connections closed because they stopped reading.",
            stats.slow_consumers,
        )
        yield CounterMetricFamily(
            "signaling_keepalive_timeouts",
            "Connections dropped for not answering a ping in time.",
            stats.keepalive_timeouts,
        )
        yield GaugeMetricFamily(
            "signaling_sessions_away",
            "Sessions whose connection dropped, kept for a resume (?resume=1).",
            hub.sessions_away,
        )
        yield CounterMetricFamily(
            "signaling_sessions_resumed",
            "Sessions taken over by a new connection with their resume token.",
            stats.sessions_resumed,
        )
        yield CounterMetricFamily(
            "signaling_sessions_expired",
            "Away sessions that ended unresumed (grace over, or too much to keep).",
            stats.sessions_expired,
        )
        yield CounterMetricFamily(
            "signaling_sessions_moved_in",
            "Sessions that came from another process to resume here (--redis).",
            stats.sessions_moved_in,
        )
        yield CounterMetricFamily(
            "signaling_sessions_moved_out",
            "Sessions that left for another process to resume there (--redis).",
            stats.sessions_moved_out,
        )
        yield CounterMetricFamily(
            "signaling_tls_failures",
            "TLS connections that failed before a WebSocket opened: failed TLS "
            "handshakes (no common version or cipher, plain HTTP on a TLS port) "
            "and TLS errors during the opening request.",
            stats.tls_failures,
        )
        buckets = []
        cumulative = 0
        for bound, count in zip(LATENCY_BUCKETS, stats.latency_counts, strict=False):
            cumulative += count
            buckets.append((repr(bound), cumulative))
        cumulative += stats.latency_counts[-1]
        buckets.append(("+Inf", cumulative))
        yield HistogramMetricFamily(
            "signaling_relay_latency_seconds",
            "Time from receiving a relayed message to writing it to its target.",
            buckets=buckets,
            sum_value=stats.latency_sum,
        )
        yield GaugeMetricFamily(
            "signaling_uptime_seconds",
            "Seconds since the server started.",
            hub.uptime(),
        )


#: What shared rooms (--redis) report: per process unless it says cluster.
_ROOMS_FIGURES: dict[str, tuple[Any, str]] = {
    "backplane_up": (GaugeMetricFamily, "1 while Redis can be reached (joins and relays work)."),
    "cluster_rooms": (GaugeMetricFamily, "Rooms in the whole cluster (as of the last heartbeat)."),
    "cluster_nodes": (GaugeMetricFamily, "Live server processes in the cluster (last heartbeat)."),
    "relays_published": (
        CounterMetricFamily,
        "Relayed messages this process sent to another process through Redis.",
    ),
    "relays_lost": (
        CounterMetricFamily,
        "Relayed messages to another process that Redis may not have delivered.",
    ),
    "nodes_reaped": (
        CounterMetricFamily,
        "Other processes this one declared dead (their clients removed from their rooms).",
    ),
    "evictions": (
        CounterMetricFamily,
        "Times this process found itself declared dead and closed its clients.",
    ),
}


def _by_label(name: str, documentation: str, label: str, counts: dict[str, int]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family


def metrics_registry(factory: SignalingFactory) -> CollectorRegistry:
    """A registry holding this server's metrics and the process's own."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SignalingCollector(factory))
    registry.register(ProcessCollector(registry=None))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
