"""A WebRTC signaling server speaking the singo protocol, on Twisted and Autobahn."""

__version__ = "0.1.0"
