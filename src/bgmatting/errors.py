"""Errors that a user can cause (bad files, bad options) and that the CLI reports on one line."""


class BgMattingError(Exception):
    """A user-facing error: the message says what went wrong and what to do about it."""


def install_hint(extra: str) -> str:
    """The command that installs the optional dependencies ``extra``, from PyPI or from a checkout (as the README)."""
    return f'pip install "bgmatting[{extra}]" (in a checkout: pip install ".[{extra}]")'


def import_optional(name: str, what: str, extra: str | None):
    """Import the package ``name``, or raise :class:`BgMattingError` saying that ``what`` needs it and how to install
    the extra ``extra`` that holds it (``None``: ``name`` is a dependency of bgmatting itself, missing here)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        how = (f": {install_hint(extra)}" if extra
               else f", a dependency of bgmatting that is missing here: pip install {name}")
        raise BgMattingError(f"{what} needs the '{name}' package{how}") from None
