"""POSIX signal handlers that run their callback in the reactor thread."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from signaling.logs import ServerLogger

_log = ServerLogger()


def install_handler(
    reactor: Any, signum: int, callback: Callable[[int], object]
) -> Callable[[], None]:
    """On ``signum``, call ``callback(signum)`` in the reactor thread.

    Returns a function restoring the previous handler.  Python allows signal
    handlers only in the main thread; elsewhere (an embedded reactor, as in
    the tests) nothing is installed and the returned function does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        _log.debug(
            "not in the main thread: no handler for {signal}",
            signal=signal.Signals(signum).name,
        )
        return lambda: None

    def handler(number: int, frame: Any) -> None:
        reactor.callFromThread(callback, number)

    previous = signal.signal(signum, handler)

    def restore() -> None:
        if signal.getsignal(signum) is handler:
            signal.signal(signum, previous)

    return restore
