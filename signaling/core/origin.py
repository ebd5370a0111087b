"""Which browser Origins may open a WebSocket (``--allowed-origin``)."""

from __future__ import annotations

import re
from collections.abc import Iterable

# What "*" may stand for: host name characters, never ":" or "/", so a
# pattern without a port never admits an origin with one.
_WILDCARD = "[a-z0-9.-]*"


class OriginPolicy:
    """Allows every Origin, or only those matching one of ``patterns``.

    A pattern is a full origin (``https://app.example.com``), where ``*``
    matches any run of host-name characters (``https://*.example.com``).
    Matching ignores case.  Requests without an Origin header (non-browser
    clients) are always allowed; browsers always send one.
    """

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns = tuple(patterns)
        self._regex = (
            re.compile(
                "|".join(
                    re.escape(p.lower().rstrip("/")).replace(r"\*", _WILDCARD)
                    for p in self.patterns
                )
            )
            if self.patterns
            else None
        )

    @property
    def open(self) -> bool:
        return self._regex is None

    def allows(self, origin: str | None) -> bool:
        if self._regex is None or origin is None:
            return True
        return self._regex.fullmatch(origin.strip().lower()) is not None
