"""Implementations of the access gates (:class:`signaling.core.access.Gate`)."""
