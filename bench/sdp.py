"""Realistic SDP bodies of an exact size, and the frames that carry them."""

from __future__ import annotations

import orjson

from .wsclient import client_frame

SDP_BYTES = 2500

_HEAD = [
    "v=0",
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
    "s=Besprechung – Café Zürich ☕",
    "t=0 0",
    "a=group:BUNDLE 0 1",
    "a=extmap-allow-mixed",
    "a=msid-semantic: WMS 5b2a8c1e-9f0d",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    "c=IN IP4 0.0.0.0",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=ice-ufrag:Xr8q",
    "a=ice-pwd:3tR9mXl0cQ2vZp7hYk4wN1sB",
    "a=ice-options:trickle",
    "a=fingerprint:sha-256 7B:8E:2F:09:4C:A1:D3:5E:66:10:BB:C7:92:4D:E8:31:"
    "AF:05:73:9C:1E:62:D8:4B:30:F7:AE:58:C9:21:6D:84",
    "a=setup:actpass",
    "a=mid:0",
    "a=sendrecv",
    "a=msid:5b2a8c1e-9f0d 0c7d4e2a-mic",
    "a=rtcp-mux",
    "a=rtpmap:111 opus/48000/2",
    "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2",
    "a=ssrc:1001 cname:Gäste-Kanal ü",
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103",
    "c=IN IP4 0.0.0.0",
    "a=mid:1",
    "a=rtpmap:96 VP8/90000",
    "a=rtcp-fb:96 goog-remb",
    "a=rtcp-fb:96 nack pli",
    "a=rtpmap:102 H264/90000",
    "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
    "a=ssrc-group:FID 2001 2002",
    "a=ssrc:2001 cname:Gäste-Kanal ü",
]


def make_sdp(seed: int = 0, size: int = SDP_BYTES) -> str:
    """An SDP-like text of exactly ``size`` UTF-8 bytes, with CRLF line ends
    and non-ASCII text in it; ``seed`` makes different bodies."""
    lines = list(_HEAD)
    lines[1] = f"o=- {4611731400430051336 + seed} 2 IN IP4 127.0.0.1"
    used = sum(len(line.encode()) + 2 for line in lines)
    n = 0
    while True:
        candidate = (
            f"a=candidate:{1000 + n} 1 udp 2122260223 192.0.2.{n % 250 + 1} "
            f"{50000 + n} typ host generation 0 network-id 1"
        )
        if used + len(candidate) + 2 + 40 > size:
            break
        lines.append(candidate)
        used += len(candidate) + 2
        n += 1
    filler = "a=x-note:" + "é"
    used += len(filler.encode()) + 2
    lines.append(filler + "x" * (size - used))
    text = "\r\n".join(lines) + "\r\n"
    if len(text.encode()) != size:
        raise ValueError(f"cannot make an SDP of {size} bytes")
    return text


def relay_frame(kind: str, target: str, sdp: str) -> bytes:
    """The client frame sending an offer or answer to ``target``."""
    return client_frame(orjson.dumps({"type": kind, "payload": {"client_id": target, "sdp": sdp}}))


def relayed(kind: str, sender: str, sdp: str) -> bytes:
    """What the target must receive: the server's encoding, sender stamped."""
    return orjson.dumps({"type": kind, "payload": {"client_id": sender, "sdp": sdp}})
