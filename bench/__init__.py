"""A load generator and benchmark for the signaling server (see docs/performance.rst)."""
