"""Errors a user can fix: the CLI prints them as one line on stderr and exits with code 2.

Raise a :class:`TGuideError` subclass wherever the cause is the user's input (a command-line
value, a recipe, a file, a data set), with a message that names the fix. Everything else is a
bug and keeps its traceback. ``TGUIDE_DEBUG=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

__all__ = ["TGuideError", "UserInputError", "ConfigError", "DataNotFoundError", "ResumeError"]


class TGuideError(Exception):
    """A mistake in the user's input, configuration or data, with a message that says the fix."""


class UserInputError(TGuideError):
    """A value the user gave (on the command line, in a recipe, to a function) is wrong."""


class ConfigError(UserInputError, ValueError):
    """A configuration value is invalid (a layer name that does not exist, an unknown keyword).

    Also a :class:`ValueError`, so code that validates arguments the usual way catches it.
    """


class ResumeError(UserInputError):
    """``resume=PATH`` cannot continue that run (no checkpoint there, or a changed config)."""


class DataNotFoundError(TGuideError, FileNotFoundError):
    """The data root, or a dataset inside it, does not exist."""
