"""The common case of WebSocket framing, done in as few steps as possible.

Almost every frame a signaling client sends is a whole (unfragmented),
masked text message well under the size limit, and almost every frame the
server sends is a whole text message. :func:`next_frame` reads the first
kind and :func:`text_frame` writes the second; anything else (control
frames, fragments, reserved bits, oversize or unmasked frames) is left to
Autobahn's general implementation, which also enforces the protocol's rules
on them.
"""

from __future__ import annotations

try:
    from websockets.speedups import apply_mask

    NATIVE_MASKING = True
except ImportError:  # pragma: no cover - platforms without the C extension
    from websockets.utils import apply_mask

    NATIVE_MASKING = False

#: :func:`next_frame` results that are not an offset.
NEED_MORE = -1
GENERAL = -2

_FIN_TEXT = 0x81
_FIN_BINARY = 0x82
_MASKED = 0x80

_SHORT_HEADERS = [bytes((_FIN_TEXT, n)) for n in range(126)]


def next_frame(buf: bytes, offset: int, max_size: int) -> tuple[int, bool, bytes]:
    """Read one whole masked data frame from ``buf`` at ``offset``.

    Returns ``(end, is_binary, payload)`` with the payload unmasked, or
    ``(NEED_MORE, ...)`` when the frame is not complete yet, or
    ``(GENERAL, ...)`` when the frame is not the common case.
    """
    available = len(buf) - offset
    if available < 2:
        return NEED_MORE, False, b""
    first = buf[offset]
    second = buf[offset + 1]
    if (first != _FIN_TEXT and first != _FIN_BINARY) or second < _MASKED:
        return GENERAL, False, b""
    length = second & 0x7F
    start = offset + 2
    if length == 126:
        if available < 4:
            return NEED_MORE, False, b""
        length = (buf[start] << 8) | buf[start + 1]
        start += 2
    elif length == 127:
        if available < 10:
            return NEED_MORE, False, b""
        length = int.from_bytes(buf[start : start + 8], "big")
        start += 8
    if length > max_size:
        return GENERAL, False, b""
    end = start + 4 + length
    if end > len(buf):
        return NEED_MORE, False, b""
    payload = apply_mask(buf[start + 4 : end], buf[start : start + 4])
    return end, first == _FIN_BINARY, payload


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented server text frame carrying ``payload``."""
    length = len(payload)
    if length < 126:
        return _SHORT_HEADERS[length] + payload
    if length < 65536:
        return b"\x81\x7e" + length.to_bytes(2, "big") + payload
    return b"\x81\x7f" + length.to_bytes(8, "big") + payload
