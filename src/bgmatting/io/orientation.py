"""Video orientation: turning decoded frames upright from their display matrix or ``rotate`` tag."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class Orientation(NamedTuple):
    """How to turn decoded frames upright: transpose, then flip rows (vertical) and/or columns (horizontal).

    The eight combinations express every rotation by a multiple of 90° and every mirror.
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @classmethod
    def from_matrix(cls, matrix: Sequence[int]) -> Orientation:
        """From FFmpeg's display matrix (9 ``int32``, 16.16 fixed point), as FFmpeg's own auto-rotation reads it.

        The matrix maps a stored pixel ``(x, y)`` to ``(a·x + c·y, b·x + d·y)`` on screen, with
        ``a, b, c, d = m[0], m[1], m[3], m[4]``; rotations other than multiples of 90° are rounded to one.
        """
        a, b, c, d = (int(matrix[i]) for i in (0, 1, 3, 4))
        if abs(a) + abs(d) >= abs(b) + abs(c):  # x stays horizontal
            return cls(False, d < 0, a < 0)
        return cls(True, b < 0, c < 0)  # x becomes vertical: screen row = b·x, screen column = c·y

    @classmethod
    def from_rotation(cls, degrees_ccw: float) -> Orientation:
        """From a counter-clockwise rotation in degrees (rounded to a multiple of 90°)."""
        k = round(degrees_ccw / 90.0) % 4
        return cls(*[(False, False, False), (True, True, False), (False, True, True), (True, False, True)][k])

    @property
    def is_identity(self) -> bool:
        return not any(self)

    def size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The displayed ``(H, W)`` of a stored frame of ``size``."""
        return (size[1], size[0]) if self.transpose else tuple(size)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Turn a stored ``(H, W[, C])`` frame upright (a contiguous copy unless nothing changes)."""
        if self.is_identity:
            return image
        if self.transpose:
            image = image.swapaxes(0, 1)
        if self.flip_rows:
            image = image[::-1]
        if self.flip_cols:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)

    def describe(self) -> str:
        names = {(False, False, False): "none", (True, True, False): "rotated 90° counter-clockwise",
                 (False, True, True): "rotated 180°", (True, False, True): "rotated 90° clockwise",
                 (False, False, True): "mirrored", (False, True, False): "flipped vertically",
                 (True, False, False): "transposed", (True, True, True): "anti-transposed"}
        return names[tuple(self)]


def frame_orientation(frame, stream) -> Orientation:
    """The orientation from a decoded frame's display matrix, else the stream's ``rotate`` tag (clockwise°)."""
    container = frame.side_data
    for item in container:
        # PyAV up to 18.1.0 iterates over the side data themselves; 18.1.1 over their types (Mapping keys).
        sd = item if hasattr(item, "type") else container[item]
        if getattr(sd.type, "name", str(sd.type)) == "DISPLAYMATRIX":
            m = np.frombuffer(bytes(sd), dtype="<i4")
            if m.size >= 5:
                return Orientation.from_matrix(m)
    tag = stream.metadata.get("rotate")
    if tag:
        try:
            return Orientation.from_rotation(-float(tag))
        except ValueError:
            pass
    return Orientation()
