"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class TGuideError(Exception):
    """A mistake in the user's input, configuration or data, with a message that says the fix."""


class DataNotFoundError(TGuideError, FileNotFoundError):
    """The data root, or a dataset inside it, does not exist."""
