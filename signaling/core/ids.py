"""Client ids: unique, unguessable and URL-safe."""

from __future__ import annotations

import base64
import os

#: Random bytes in a client id.
CLIENT_ID_BYTES = 16


class _ClientIds:
    """Client ids cut from a buffer of the OS's randomness, refilled
    ``batch`` ids at a time: one system call per ``batch`` connections
    rather than one each (a noticeable share of accepting a connection)."""

    def __init__(self, batch: int = 256) -> None:
        self._batch = batch
        self._pool = b""
        self._offset = 0
        os.register_at_fork(after_in_child=self.discard)

    def discard(self) -> None:
        """Forget the buffer (a forked child must not repeat its parent's ids)."""
        self._pool, self._offset = b"", 0

    def __call__(self) -> str:
        start = self._offset
        if start >= len(self._pool):
            self._pool, start = os.urandom(CLIENT_ID_BYTES * self._batch), 0
        self._offset = end = start + CLIENT_ID_BYTES
        return base64.urlsafe_b64encode(self._pool[start:end]).rstrip(b"=").decode()


#: A unique, unguessable, URL-safe client id (128 random bits).
new_client_id = _ClientIds()
