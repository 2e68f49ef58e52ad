"""Errors a user can act on: the message names what failed and what to do, and the command
line prints it as one line (no traceback)."""


class UserError(Exception):
    """An expected failure, explained in its message."""
