"""The HTTP side: the site that shares the WebSocket port, the demo page, /metrics."""
