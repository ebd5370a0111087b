"""Bounding the log lines that clients can cause."""

from __future__ import annotations

from typing import Any, Protocol

from signaling.core.clock import Clock


class EventLog(Protocol):
    """What the core logs to (a ``twisted.logger.Logger`` in the server)."""

    def debug(self, format: str, **kwargs: Any) -> None: ...

    def info(self, format: str, **kwargs: Any) -> None: ...

    def warn(self, format: str, **kwargs: Any) -> None: ...


class NullLog:
    """An :class:`EventLog` that drops everything."""

    def debug(self, format: str, **kwargs: Any) -> None:
        pass

    info = warn = debug


class LogBudget:
    """At most ``per_minute`` log lines a minute for each kind of client event.

    Clients decide how often they make the server report an event (an
    ``error`` reply, a refused handshake, ...); the rest of a minute's
    events of a kind are not logged, only counted, and one line when the
    minute ends says how many there were. ``/metrics`` counts them all.
    ``per_minute`` 0 logs every event; the summaries go to ``log``.
    """

    def __init__(self, clock: Clock, per_minute: int, log: EventLog) -> None:
        self.clock = clock
        self.log = log
        self.per_minute = per_minute
        #: kind -> [start of its minute, lines logged, lines held back]
        self._minutes: dict[str, list[float]] = {}

    def allow(self, kind: str) -> bool:
        """Whether to log this event of ``kind`` (counted either way)."""
        if self.per_minute <= 0:
            return True
        now = self.clock.seconds()
        minute = self._minutes.get(kind)
        if minute is None or not 0 <= now - minute[0] < 60:
            minute = self._minutes[kind] = [now, 0, 0]
        if minute[1] < self.per_minute:
            minute[1] += 1
            return True
        minute[2] += 1
        if minute[2] == 1:
            self.clock.callLater(max(minute[0] + 60 - now, 0), self._summarize, kind, minute)
        return False

    def _summarize(self, kind: str, minute: list[float]) -> None:
        if self._minutes.get(kind) is minute:
            del self._minutes[kind]
        self.log.info(
            "{count} more {kind} events in the last minute were not logged "
            "(at most {per_minute} a minute; /metrics counts them all)",
            count=int(minute[2]),
            kind=kind,
            per_minute=self.per_minute,
        )
