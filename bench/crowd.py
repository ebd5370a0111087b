"""Scenarios about many connections: storm, idle and churn."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from .measure import Meter
from .relay import relay
from .rooms import LEAVE_FRAME, Rooms
from .server import Server
from .wsclient import CLOSE_NORMAL_FRAME, Tally, WsClient, connect_many, start_connection

#: Storm clients started in one turn of the generator's loop.
STORM_BATCH = 500


def listen_drops() -> int:
    """The kernel's count of connections dropped from full accept queues
    (TcpExt ListenDrops, machine-wide)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["ListenDrops"])
    return 0


async def storm(
    server: Server, tally: Tally, clients: int, room_size: int, timeout: float = 60.0
) -> dict[str, Any]:
    """All clients connect at once and join rooms of ``room_size``: seconds
    from the first connect until every id, ``joined`` and ``new-client`` arrived."""
    try:
        rooms = Rooms(tally, clients, room_size, "storm")
        drops = listen_drops()
        loop = asyncio.get_running_loop()
        meter = Meter(server)
        started = loop.time()
        connected = 0

        def failed(error: BaseException) -> None:
            tally.error("connect", repr(error))
            rooms.expect(rooms.expected_joined - 1)

        def greeted_or_not(ready: asyncio.Future[None]) -> None:
            nonlocal connected
            if ready.cancelled():
                return
            if ready.exception() is None:
                connected += 1
            else:
                failed(ready.exception())  # type: ignore[arg-type]

        def connected_or_not(task: asyncio.Future[tuple[Any, WsClient]]) -> None:
            if task.cancelled():
                return
            if task.exception() is None:
                task.result()[1].ready.add_done_callback(greeted_or_not)
            else:
                failed(task.exception())  # type: ignore[arg-type]

        # One task per client (not a coroutine that waits for the greeting
        # with timeouts of its own): the generator must stay cheaper than
        # the server it measures. STORM_BATCH start in a turn of the loop:
        # all within about 0.15 s, but the first requests go out while later
        # clients still connect, not after the last connect() call.
        connects = []
        for first in range(0, clients, STORM_BATCH):
            for _ in range(min(STORM_BATCH, clients - first)):
                task = start_connection(server.port, tally, rooms.join)
                task.add_done_callback(connected_or_not)
                connects.append(task)
            await asyncio.sleep(0)
        try:
            await asyncio.wait_for(asyncio.shield(rooms.done), timeout)
        except TimeoutError:
            waiting = sum(1 for client in tally.clients if not client.ready.done())
            raise RuntimeError(
                f"after {timeout:g} s, {rooms.arrived} of {clients} clients had their id and "
                f"{rooms.joined} had joined; {waiting} were still waiting for the server; "
                f"ListenDrops +{listen_drops() - drops}"
            ) from None
        finished = rooms.done.result()
        usage = meter.stop()
        await asyncio.wait(connects, timeout=timeout)
        rooms.verify()
        drops = listen_drops() - drops
        await tally.close(tally.clients, timeout)
    finally:
        tally.abort_all()
    return {
        "figures": {
            "seconds": finished - started,
            "connected": connected,
            "listen_drops": drops,
            "server_cpu_seconds": usage["server_cpu_seconds"],
        },
        "generator_cpu_pct": usage["generator_cpu_pct"],
        "server_cpu_pct": usage["server_cpu_pct"],
    }


async def idle(
    server: Server, tally: Tally, clients: int, hold: float = 30.0, timeout: float = 60.0
) -> dict[str, Any]:
    """Joined connections held idle: server memory per connection, and the
    CPU the server spends on them (keepalive pings) during ``hold``."""
    try:
        before = server.rss_bytes()
        rooms = Rooms(tally, clients, 2, "idle")
        opened = await connect_many(server.port, tally, clients, timeout, on_ready=rooms.join)
        await asyncio.wait_for(rooms.done, timeout)
        rooms.verify()
        await asyncio.sleep(0.2)  # let the last writes settle
        joined = server.rss_bytes()
        meter = Meter(server)
        await asyncio.sleep(hold)
        usage = meter.stop()
        held = server.rss_bytes()
        still_open = sum(1 for c in opened if not c.lost.done())
        if still_open != clients:
            tally.error("dropped", f"{clients - still_open} connections lost during the hold")
        pings = sum(c.pings for c in opened)
        await tally.close(opened, timeout)
    finally:
        tally.abort_all()
    return {
        "figures": {
            "kb_per_connection": (joined - before) / clients / 1024,
            "kb_per_connection_after_hold": (held - before) / clients / 1024,
            "rss_before_mb": before / 2**20,
            "rss_joined_mb": joined / 2**20,
            "rss_after_hold_mb": held / 2**20,
            "pings_answered": pings,
            "server_cpu_seconds": usage["server_cpu_seconds"],
            "hold_s": usage["seconds"],
        },
        "generator_cpu_pct": usage["generator_cpu_pct"],
        "server_cpu_pct": usage["server_cpu_pct"],
    }


async def _churn_batch(
    server: Server, tally: Tally, size: int, number: int, timeout: float
) -> None:
    """``size`` clients connect, join rooms of 2, leave, and close."""
    rooms = Rooms(tally, size, 2, f"churn{number}")
    clients = await connect_many(server.port, tally, size, timeout, on_ready=rooms.join)
    await asyncio.wait_for(rooms.done, timeout)
    rooms.verify()
    for client in clients:
        client.closing = True
        client.send(LEAVE_FRAME + CLOSE_NORMAL_FRAME)
    await asyncio.wait([c.lost for c in clients], timeout=timeout)
    stuck = [c for c in clients if not c.lost.done()]
    if stuck:
        tally.error("close", f"{len(stuck)} connections not closed by the server")
    tally.clients.clear()
    for client in stuck:
        client.abort()


async def churn(
    server: Server,
    tally: Tally,
    clients: int = 20000,
    batch: int = 500,
    pairs: int = 100,
    inflight: int = 8,
    window: float = 5.0,
    warmup: float = 2.0,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """relay PxW, then ``clients`` through connect/join/leave/close in batches,
    then relay PxW again on the same server: does throughput hold?"""
    first = await relay(server, tally, pairs, inflight, window, warmup, timeout=timeout)
    rss_before = server.rss_bytes()
    meter = Meter(server)
    try:
        for number, start in enumerate(range(0, clients, batch)):
            await _churn_batch(server, tally, min(batch, clients - start), number, timeout)
    finally:
        tally.abort_all()
    usage = meter.stop()
    rss_after = server.rss_bytes()
    deadline = time.monotonic() + 10
    health = await asyncio.to_thread(server.health)
    while (health["clients"], health["rooms"]) != (0, 0) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        health = await asyncio.to_thread(server.health)
    if (health["clients"], health["rooms"]) != (0, 0):
        tally.error("leak", f"after churn the server still reports {health}")
    second = await relay(server, tally, pairs, inflight, window, warmup, timeout=timeout)
    before, after = first["figures"]["msgs_per_s"], second["figures"]["msgs_per_s"]
    return {
        "figures": {
            "msgs_per_s_before": before,
            "msgs_per_s_after": after,
            "change_pct": 100 * (after - before) / before,
            "rtt_p50_us_before": first["figures"]["rtt_p50_us"],
            "rtt_p50_us_after": second["figures"]["rtt_p50_us"],
            "server_cpu_us_per_msg_before": first["figures"]["server_cpu_us_per_msg"],
            "server_cpu_us_per_msg_after": second["figures"]["server_cpu_us_per_msg"],
            "generator_cpu_us_per_msg_before": first["figures"]["generator_cpu_us_per_msg"],
            "generator_cpu_us_per_msg_after": second["figures"]["generator_cpu_us_per_msg"],
            "churn_clients_per_s": clients / usage["seconds"],
            "churn_seconds": usage["seconds"],
            "churn_server_cpu_pct": usage["server_cpu_pct"],
            "churn_generator_cpu_pct": usage["generator_cpu_pct"],
            "rss_before_churn_mb": rss_before / 2**20,
            "rss_after_churn_mb": rss_after / 2**20,
        },
        "generator_cpu_pct": max(first["generator_cpu_pct"], second["generator_cpu_pct"]),
        "server_cpu_pct": max(first["server_cpu_pct"], second["server_cpu_pct"]),
    }
