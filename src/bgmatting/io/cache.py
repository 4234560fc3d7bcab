"""Where bgmatting keeps files it can rebuild: downloaded packages, exported engines."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """``$BGMATTING_CACHE/<kind>``, else ``$XDG_CACHE_HOME/bgmatting/<kind>`` (``~/.cache/bgmatting/<kind>``)."""
    if os.environ.get("BGMATTING_CACHE"):
        return Path(os.environ["BGMATTING_CACHE"]) / kind
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bgmatting" / kind
