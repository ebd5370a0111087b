"""Process-wide settings for a server that holds many connections."""

from __future__ import annotations

import gc

#: Young-generation threshold: collect after this many new container objects
#: (Python's default is 700). Each connection allocates a few hundred
#: short-lived objects during its handshake.
GC_THRESHOLD = (20_000, 20, 100)


def native_speedups() -> dict[str, bool]:
    """Which compiled accelerators this install has; each missing one costs a
    large factor on the per-message path."""
    import autobahn.websocket as autobahn_websocket
    import orjson  # noqa: F401  (a hard dependency: compiled by construction)

    from signaling.wire.framing import NATIVE_MASKING

    return {
        "autobahn_nvx": bool(getattr(autobahn_websocket, "USES_NVX", False)),
        "websockets_masking": NATIVE_MASKING,
    }


def tune_gc() -> None:
    """Make garbage collection cheap for a process with many live connections.

    Everything loaded at start-up is frozen out of future collections, and
    collections run less often: with the default thresholds, full
    collections during a burst of connections took most of the CPU and
    paused every client for hundreds of milliseconds.

    A full collection is then rare, so what a closed connection leaves
    must be freed by reference counting alone: a reference cycle would
    keep the whole connection in memory until then
    (``SignalingProtocol.connectionLost`` breaks the one Autobahn makes).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
