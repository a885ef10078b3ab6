"""Serving worker: hot-swapped snapshots and the user-level scoring HTTP API."""
