"""Test doubles for the core."""

from __future__ import annotations

import json
from typing import Any


class FakeMember:
    """A room member that records every frame delivered to it."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.received: list[bytes] = []

    def deliver(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.received.append(data)

    def decoded(self) -> list[Any]:
        return [json.loads(d) for d in self.received]

    def __repr__(self) -> str:
        return f"<FakeMember {self.client_id}>"
