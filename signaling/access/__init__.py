"""Implementations of the access gates (signaling.core.access)."""
