"""Errors that name the problem, so a user can fix their input without reading a traceback."""

from __future__ import annotations


class MetaADError(Exception):
    """Base class for every error metaad raises on purpose."""


class DataError(MetaADError, ValueError):
    """The input table breaks the canonical data contract (see `metaad.data.schema`)."""


class ConfigError(MetaADError, ValueError):
    """A configuration value is missing, of the wrong type, or out of range."""


class UnknownMethodError(MetaADError, KeyError):
    """A method name is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""
