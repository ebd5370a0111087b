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
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, formatEvent
from zope.interface import provider

from signaling.core.logbudget import EventLog, LogBudget

__all__ = ["LEVELS", "EventLog", "LogBudget", "ServerLogger", "json_observer", "set_level"]

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


_log = ServerLogger()
