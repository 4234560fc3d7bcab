"""bgmatting: real-time, high-resolution background matting (Background Matting V2)."""

from .errors import BgMattingError

__version__ = "0.1.0"

__all__ = ["BgMattingError", "__version__"]
