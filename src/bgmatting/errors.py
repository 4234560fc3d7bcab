"""Errors that a user can cause (bad files, bad options) and that the CLI reports on one line."""


class BgMattingError(Exception):
    """A user-facing error: the message says what went wrong and what to do about it."""


def install_hint(extra: str) -> str:
    """The command that installs the optional dependencies ``extra``, from PyPI or from a checkout (as the README)."""
    return f'pip install "bgmatting[{extra}]" (in a checkout: pip install ".[{extra}]")'
