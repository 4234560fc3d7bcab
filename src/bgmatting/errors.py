"""Errors that a user can cause (bad files, bad options) and that the CLI reports on one line."""


class BgMattingError(Exception):
    """A user-facing error: the message says what went wrong and what to do about it."""


def install_hint(extra: str) -> str:
    """The command that installs the optional dependencies ``extra``, from PyPI or from a checkout (as the README)."""
    return f'pip install "bgmatting[{extra}]" (in a checkout: pip install ".[{extra}]")'


def import_optional(name: str, what: str, extra: str):
    """Import the optional package ``name``, or raise :class:`BgMattingError` saying that ``what`` needs it and how
    to install the extra ``extra`` that holds it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise BgMattingError(f"{what} needs the '{name}' package: {install_hint(extra)}") from None
