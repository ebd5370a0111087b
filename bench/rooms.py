"""Joining clients to rooms, and checking what the server says about members."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson

from .wsclient import Tally, WsClient, message_frame


def join_frame(room_id: str) -> bytes:
    return message_frame("join", {"room_id": room_id})


LEAVE_FRAME = message_frame("leave", {})


class Rooms:
    """Puts each client that gets its id into a room of ``room_size``, in
    arrival order, and resolves ``done`` once every client got ``joined`` and
    every ``new-client`` arrived.
    """

    def __init__(self, tally: Tally, clients: int, room_size: int, prefix: str) -> None:
        self.tally = tally
        self.room_size = room_size
        self.prefix = prefix
        self.members: dict[str, list[WsClient]] = {}
        self.seen: dict[WsClient, list[str]] = {}
        self.arrived = 0
        self.joined = 0
        self.new = 0
        self.left = 0
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.expect(clients)

    def expect(self, clients: int) -> None:
        """Wait for ``clients`` to join (fewer when some could not connect)."""
        self.expected_joined = clients
        full, rest = divmod(clients, self.room_size)
        size = self.room_size
        self.expected_new = full * size * (size - 1) // 2 + rest * (rest - 1) // 2
        self._check_done()

    def join(self, client: WsClient, room: int | None = None) -> None:
        """Send ``client`` (which just got its id) into room number ``room``,
        by default the next room with space."""
        room_id = f"{self.prefix}-{self.arrived // self.room_size if room is None else room}"
        self.arrived += 1
        self.members.setdefault(room_id, []).append(client)
        self.seen[client] = []
        client.on_text = self._handler(client)
        client.send(join_frame(room_id))

    def _handler(self, client: WsClient) -> Callable[[bytes], None]:
        seen = self.seen[client]

        def on_text(payload: bytes) -> None:
            message = orjson.loads(payload)
            kind = message.get("type")
            if kind == "joined":
                seen.extend(message["payload"]["clients"])
                self.joined += 1
                self._check_done()
            elif kind == "new-client":
                seen.append(message["payload"]["client_id"])
                self.new += 1
                self._check_done()
            elif kind == "leave-client":
                self.left += 1
            else:
                client.unexpected(payload)

        return on_text

    def _check_done(self) -> None:
        if (
            self.joined >= self.expected_joined
            and self.new >= self.expected_new
            and not self.done.done()
        ):
            self.done.set_result(asyncio.get_running_loop().time())

    def verify(self) -> None:
        """Every member heard of every other member exactly once (through
        ``joined`` or ``new-client``) and of no one else."""
        for room_id, clients in self.members.items():
            ids = {c.client_id for c in clients}
            for client in clients:
                seen = self.seen[client]
                if len(seen) != len(set(seen)) or set(seen) != ids - {client.client_id}:
                    self.tally.error(
                        "membership", f"{client.client_id} in {room_id} heard of {seen}"
                    )
