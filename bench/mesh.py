"""mesh N: one room that N members join a few milliseconds apart; each member
offers to every newcomer (on ``new-client``), who answers each offer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import cache
from typing import Any

import orjson

from .measure import Meter
from .relay import ANSWER_SDP, OFFER_SDP
from .rooms import join_frame
from .sdp import relay_frame, relayed
from .server import Server
from .wsclient import Tally, WsClient, connect_many

ROOM = "mesh"


@cache
def _expected(kind: str, sender: str) -> bytes:
    return relayed(kind, sender, OFFER_SDP if kind == "offer" else ANSWER_SDP)


class Mesh:
    """The call flow of every member, and when the last answer arrived."""

    def __init__(self, tally: Tally, clients: list[WsClient]) -> None:
        self.tally = tally
        self.ids = {c.client_id for c in clients}
        self.expected_answers = len(clients) * (len(clients) - 1) // 2
        #: (offerer, answerer) pairs whose answer has not arrived yet.
        self.awaiting: set[tuple[str, str]] = set()
        self.answers = 0
        self.last_joined = 0.0
        self.seen: dict[WsClient, list[str]] = {}
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        for client in clients:
            self.seen[client] = []
            client.on_text = self._handler(client)

    def _handler(self, client: WsClient) -> Callable[[bytes], None]:
        me = client.client_id
        seen = self.seen[client]
        loop = asyncio.get_running_loop()

        def on_text(payload: bytes) -> None:
            message = orjson.loads(payload)
            kind = message.get("type")
            body = message.get("payload") or {}
            peer = body.get("client_id")
            if kind == "new-client" and peer in self.ids:
                seen.append(peer)
                self.awaiting.add((me, peer))
                client.send(relay_frame("offer", peer, OFFER_SDP))
            elif kind == "offer" and peer in self.ids:
                if client.check(payload, _expected("offer", peer)):
                    client.send(relay_frame("answer", peer, ANSWER_SDP))
            elif kind == "answer" and type(peer) is str and (me, peer) in self.awaiting:
                if client.check(payload, _expected("answer", peer)):
                    self.awaiting.remove((me, peer))
                    self.answers += 1
                    if self.answers == self.expected_answers:
                        self.done.set_result(loop.time())
            elif kind == "joined":
                seen.extend(body["clients"])
                self.last_joined = loop.time()
            else:
                client.unexpected(payload)

        return on_text

    def verify(self) -> None:
        for client, seen in self.seen.items():
            if len(seen) != len(set(seen)) or set(seen) != self.ids - {client.client_id}:
                self.tally.error("membership", f"{client.client_id} heard of {seen}")


async def mesh(
    server: Server, tally: Tally, members: int = 50, interval: float = 0.005, timeout: float = 60.0
) -> dict[str, Any]:
    """Seconds from the first join to the last answer received."""
    try:
        clients = await connect_many(server.port, tally, members, timeout)
        call = Mesh(tally, clients)
        loop = asyncio.get_running_loop()
        frame = join_frame(ROOM)
        meter = Meter(server)
        started = loop.time()
        for index, client in enumerate(clients):
            loop.call_at(started + index * interval, client.send, frame)
        if members < 2:
            call.done.set_result(started)
        await asyncio.wait_for(call.done, timeout)
        finished = call.done.result()
        usage = meter.stop()
        call.verify()
        await tally.close(clients, timeout)
    finally:
        tally.abort_all()
    return {
        "figures": {
            "seconds": finished - started,
            "joins_seconds": call.last_joined - started,
            "answers": call.answers,
            "server_cpu_seconds": usage["server_cpu_seconds"],
        },
        "generator_cpu_pct": usage["generator_cpu_pct"],
        "server_cpu_pct": usage["server_cpu_pct"],
    }
