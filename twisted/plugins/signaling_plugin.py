from twisted.application.service import ServiceMaker

Signaling = ServiceMaker(
    "signaling",
    "signaling.ops.tap",
    "WebRTC signaling server (singo-compatible WebSocket protocol)",
    "signaling",
)
