"""Errors the command line reports to the user without a traceback."""

from __future__ import annotations


class UsageError(Exception):
    """A bad argument or input file: `tagclip` prints the message and exits with status 2."""
