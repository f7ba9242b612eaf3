"""Exceptions that mean "the user asked for something wrong".

The CLI prints these as one line and exits non-zero; anything else is a bug and keeps
its traceback.
"""


def one_line(text: str) -> str:
    """``text`` with line breaks escaped: an error message is one line even when it quotes
    the user's input."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


class RaydprmError(Exception):
    """Base class for errors caused by user input (config, data, arguments). Its message is
    always one line (line breaks in quoted input are escaped)."""

    def __str__(self) -> str:
        return one_line(super().__str__())


class ConfigError(RaydprmError, ValueError):
    """A config key is unknown, has the wrong type or is out of range."""
