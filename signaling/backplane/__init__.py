"""Sharing rooms between server processes: the Redis client it runs on."""
