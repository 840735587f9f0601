"""ConfigError: the one exception for a bad template, override, records folder or model dir."""

from __future__ import annotations


class ConfigError(ValueError):
    """A problem with a template, an override or the records it points at (message says what to do)."""


class ModelError(ConfigError):
    """The model cannot be found or used; the message says what exists and what to do."""
