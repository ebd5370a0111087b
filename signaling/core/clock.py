"""The time source the core runs on: the reactor in the server, a fake
clock in tests (the subset of ``IReactorTime`` the core uses)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class DelayedCall(Protocol):
    """A call scheduled by :meth:`Clock.callLater`."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Seconds since the epoch, and calls scheduled in them."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, callable: Callable[..., Any], *args: Any) -> Any: ...


def cancel(call: DelayedCall | None) -> None:
    """Cancel ``call`` unless it is None, has run or was cancelled already."""
    if call is not None and call.active():
        call.cancel()
