"""Errors that a user can cause (bad files, bad options) and that the CLI reports on one line."""


class BgMattingError(Exception):
    """A user-facing error: the message says what went wrong and what to do about it."""
