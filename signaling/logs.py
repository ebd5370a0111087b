"""One JSON object per line, for log shippers: ``twistd --logger signaling.logs.json_observer``."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import IO, Any

import orjson
from twisted.logger import ILogObserver, LogEvent, formatEvent
from zope.interface import provider

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
