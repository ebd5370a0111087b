"""Small helpers for delayed calls."""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall


def cancel(call: IDelayedCall | None) -> None:
    """Cancel ``call`` unless it is None, has run or was cancelled already."""
    if call is not None and call.active():
        call.cancel()
