"""One checker for the shapes of the arrays and tensors that cross the package's boundaries (networks, losses,
metrics), and the one error it raises."""

from __future__ import annotations

from typing import Any

from .errors import BgMattingError

_WORDS = {"C": "channel"}


class ShapeError(BgMattingError, ValueError):
    """An array or tensor of the wrong shape. A :class:`BgMattingError` (one line on the command line) and a
    ``ValueError`` (what a Python caller of the losses and metrics expects)."""


def check_shape(x: Any, name: str, layout: str, **sizes: int) -> None:
    """Raise :class:`ShapeError` unless ``x`` (anything with ``.shape``) has one dimension per name of ``layout``
    (``"B C H W"``, ``"H W"``), and the sizes given by name in ``sizes`` (``C=3``).

    Example: ``check_shape(src, "src", "B C H W", C=3)``.
    """
    dims = layout.split()
    shape = tuple(x.shape)
    if len(shape) == len(dims) and all(shape[dims.index(d)] == n for d, n in sizes.items()):
        return
    want = "(" + ", ".join(str(sizes.get(d, d)) for d in dims) + ")"
    detail = "".join(f", {n} {_WORDS.get(d, d)}{'s' if n != 1 else ''}" for d, n in sizes.items())
    raise ShapeError(f"{name} must have shape {want}{detail}, got {shape}")


def check_same_shape(a: Any, name_a: str, b: Any, name_b: str) -> None:
    """Raise :class:`ShapeError` unless ``a`` and ``b`` (arrays, tensors, or shapes themselves) have the same shape."""
    shape_a, shape_b = tuple(getattr(a, "shape", a)), tuple(getattr(b, "shape", b))
    if shape_a != shape_b:
        raise ShapeError(f"{name_a} and {name_b} must have the same shape, got {shape_a} and {shape_b}")
