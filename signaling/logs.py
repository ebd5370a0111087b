"""The server's loggers and log format.

``ServerLogger`` drops events below the ``--log-level`` threshold before they
are built, so per-connection debug events cost next to nothing when unwanted.
``json_observer`` writes one JSON object per line, for log shippers:
``twistd --logger signaling.logs.json_observer``.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import IO, Any

import orjson
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, formatEvent
from zope.interface import provider

#: The ``--log-level`` names.
LEVELS = {
    level.name: level for level in (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error)
}


class ServerLogger(Logger):
    """A ``Logger`` that drops events below ``ServerLogger.threshold``
    (``info`` unless ``set_level`` changed it).

    Twisted's observers format every event they get (twistd's text log
    formats the time and message and writes the line at once), which costs
    tens of microseconds an event; filtering here costs a comparison.
    """

    threshold = LogLevel.info

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        if level < self.threshold:
            return
        super().emit(level, format, **kwargs)


def set_level(level: LogLevel) -> None:
    """Emit the server's events at ``level`` and above from now on."""
    ServerLogger.threshold = level


#: Event keys that are Twisted's bookkeeping rather than data.
_INTERNAL = frozenset({"log_logger", "log_source", "log_io", "log_trace", "log_format"})


def event_as_json(event: LogEvent) -> bytes:
    """The event as one JSON line: time, level, namespace, message, then its fields."""
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc).isoformat(),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _INTERNAL or key in record:
            continue
        record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return orjson.dumps(record, default=repr, option=orjson.OPT_APPEND_NEWLINE)


def json_observer(stream: IO[bytes] | None = None) -> ILogObserver:
    """A log observer writing JSON lines to ``stream`` (standard output by default)."""
    out = stream if stream is not None else sys.stdout.buffer

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        out.write(event_as_json(event))
        out.flush()

    return observe


class LogBudget:
    """At most ``per_minute`` log lines a minute for each kind of client event.

    Clients decide how often they make the server report an event (an
    ``error`` reply, a refused handshake, ...); the rest of a minute's
    events of a kind are not logged, only counted, and one line when the
    minute ends says how many there were. ``/metrics`` counts them all.
    ``per_minute`` 0 logs every event.
    """

    def __init__(self, clock: IReactorTime, per_minute: int) -> None:
        self.clock = clock
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
        _log.info(
            "{count} more {kind} events in the last minute were not logged "
            "(at most {per_minute} a minute; /metrics counts them all)",
            count=int(minute[2]),
            kind=kind,
            per_minute=self.per_minute,
        )


_log = ServerLogger()
