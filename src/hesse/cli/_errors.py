"""The command line's error type, in its own module so that every verb can import it."""

from __future__ import annotations


class CLIError(Exception):
    """A user error with a message to print (exit status 2)."""
