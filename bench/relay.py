"""relay PxW: P pairs, each in its own room, W offers in flight per pair."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .measure import Meter, percentile
from .rooms import Rooms
from .sdp import make_sdp, relay_frame, relayed
from .server import Server
from .wsclient import Tally, WsClient, connect_many

OFFER_SDP = make_sdp(seed=1)
ANSWER_SDP = make_sdp(seed=2)


class Run:
    """What all pairs share: counters, the phase, and latency samples."""

    def __init__(self) -> None:
        self.delivered = 0
        self.sending = True
        self.measuring = False
        self.latencies: list[float] = []


class Pair:
    """The offerer keeps offers in flight to the answerer, who answers each.

    Frames and the bytes each side must receive are computed once; answers
    come back in order, so a deque of send times gives each round trip.
    """

    def __init__(self, run: Run, offerer: WsClient, answerer: WsClient) -> None:
        self.run = run
        self.offerer = offerer
        self.answerer = answerer
        self.offer_frame = relay_frame("offer", answerer.client_id, OFFER_SDP)
        self.answer_frame = relay_frame("answer", offerer.client_id, ANSWER_SDP)
        self.offer_expected = relayed("offer", offerer.client_id, OFFER_SDP)
        self.answer_expected = relayed("answer", answerer.client_id, ANSWER_SDP)
        self.sent_at: deque[float] = deque()
        self.offers_sent = self.offers_received = 0
        self.answers_sent = self.answers_received = 0
        offerer.on_text = self.on_answer
        answerer.on_text = self.on_offer

    def send_offer(self, now: float) -> None:
        self.sent_at.append(now)
        self.offers_sent += 1
        self.offerer.transport.write(self.offer_frame)

    def on_offer(self, payload: bytes) -> None:
        if payload != self.offer_expected and not self.answerer.check(payload, self.offer_expected):
            return
        self.offers_received += 1
        self.run.delivered += 1
        self.answers_sent += 1
        self.answerer.transport.write(self.answer_frame)

    def on_answer(self, payload: bytes) -> None:
        now = time.perf_counter()
        if payload != self.answer_expected and not self.offerer.check(
            payload, self.answer_expected
        ):
            return
        self.answers_received += 1
        run = self.run
        run.delivered += 1
        sent = self.sent_at.popleft()
        if run.measuring:
            run.latencies.append(now - sent)
        if run.sending:
            self.send_offer(now)

    @property
    def lost(self) -> int:
        return self.offers_sent - self.offers_received + self.answers_sent - self.answers_received


def per_message(seconds: float, messages: int) -> float | None:
    return 1e6 * seconds / messages if messages else None


async def drive(
    run: Run,
    all_pairs: list[Pair],
    meter: Callable[[], Meter],
    tally: Tally,
    inflight: int,
    window: float,
    warmup: float,
    drain: float,
) -> tuple[int, dict[str, float]]:
    """Keep ``inflight`` offers in flight per pair; after ``warmup``, measure
    for ``window`` (with the meter ``meter`` starts); then stop sending and
    wait (at most ``drain`` seconds) for every answer.
    Returns the messages relayed in the window and the meter's figures."""
    now = time.perf_counter()
    for pair in all_pairs:
        for _ in range(inflight):
            pair.send_offer(now)
    await asyncio.sleep(warmup)

    measuring = meter()
    delivered = run.delivered
    run.measuring = True
    await asyncio.sleep(window)
    run.measuring = False
    delivered = run.delivered - delivered
    usage = measuring.stop()

    run.sending = False
    deadline = time.monotonic() + drain
    while any(p.sent_at for p in all_pairs) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    lost = sum(p.lost for p in all_pairs)
    if lost:
        tally.error("lost", f"{lost} messages sent but not received after {drain} s", lost)
    return delivered, usage


def relay_figures(run: Run, delivered: int, usage: dict[str, float]) -> dict[str, Any]:
    latencies = sorted(run.latencies)
    return {
        "msgs_per_s": delivered / usage["seconds"],
        "relayed": delivered,
        "round_trips": len(latencies),
        "rtt_p50_us": 1e6 * percentile(latencies, 0.50),
        "rtt_p90_us": 1e6 * percentile(latencies, 0.90),
        "rtt_p99_us": 1e6 * percentile(latencies, 0.99),
        "window_s": usage["seconds"],
        "server_cpu_us_per_msg": per_message(usage["server_cpu_seconds"], delivered),
        "generator_cpu_us_per_msg": per_message(usage["generator_cpu_seconds"], delivered),
    }


async def relay(
    server: Server,
    tally: Tally,
    pairs: int,
    inflight: int,
    window: float = 5.0,
    warmup: float = 2.0,
    drain: float = 10.0,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Relayed messages a second and round-trip latency over ``window``."""
    clients: list[WsClient] = []
    try:
        rooms = Rooms(tally, 2 * pairs, 2, "relay")
        clients = await connect_many(server.port, tally, 2 * pairs, timeout, on_ready=rooms.join)
        await asyncio.wait_for(rooms.done, timeout)
        rooms.verify()
        run = Run()
        all_pairs = [Pair(run, *members) for members in rooms.members.values()]
        delivered, usage = await drive(
            run, all_pairs, lambda: Meter(server), tally, inflight, window, warmup, drain
        )
        await tally.close(clients, timeout)
    finally:
        tally.abort_all()

    return {
        "figures": relay_figures(run, delivered, usage),
        "generator_cpu_pct": usage["generator_cpu_pct"],
        "server_cpu_pct": usage["server_cpu_pct"],
    }
