"""State & Configuration (FP-5.x): environment, configuration values, state files."""

from __future__ import annotations
