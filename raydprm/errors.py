"""Exceptions that mean "the user asked for something wrong".

The CLI prints these as one line and exits non-zero; anything else is a bug and keeps
its traceback.
"""


class RaydprmError(Exception):
    """Base class for errors caused by user input (config, data, arguments)."""


class ConfigError(RaydprmError, ValueError):
    """A config key is unknown, has the wrong type or is out of range."""
