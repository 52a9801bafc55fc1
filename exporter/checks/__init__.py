"""Checks, one module per catalog category; importing this package registers them all."""

from . import broker, data, gates, scoring, state, system  # noqa: F401
