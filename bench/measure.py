"""CPU and wall time over a measurement window, for generator and server."""

from __future__ import annotations

import time
from typing import Protocol


class Measured(Protocol):
    """A server, or several: CPU seconds so far (summed)."""

    def cpu_seconds(self) -> float: ...


class Meter:
    """Wall time, this process's CPU and the server's CPU between start and stop."""

    def __init__(self, server: Measured) -> None:
        self.server = server
        self.start()

    def start(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()
        self.server_cpu = self.server.cpu_seconds()

    def stop(self) -> dict[str, float]:
        """``seconds`` elapsed, and each side's CPU as a percentage of one core."""
        wall = time.perf_counter() - self.wall
        cpu = time.process_time() - self.cpu
        server_cpu = self.server.cpu_seconds() - self.server_cpu
        return {
            "seconds": wall,
            "generator_cpu_pct": 100 * cpu / wall if wall else 0.0,
            "server_cpu_pct": 100 * server_cpu / wall if wall else 0.0,
            "server_cpu_seconds": server_cpu,
            "generator_cpu_seconds": cpu,
        }


def percentile(ordered: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of the sorted samples lie (nearest rank)."""
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]
