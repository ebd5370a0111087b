"""The WebSocket connection: Autobahn and Twisted, and the fast paths beside them."""
