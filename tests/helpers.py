"""Plain helper functions shared by the test modules (fixtures live in conftest.py, test videos in video_clips.py)."""

from __future__ import annotations

import functools
import importlib
import json
import struct
import zlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from PIL import Image

if TYPE_CHECKING:
    from bgmatting.train.config import TrainConfig


# --------------------------------------------------------------------------------------------- optional packages

@functools.cache
def optional(name: str) -> ModuleType | None:
    """The module ``name``, or None where it cannot be imported (mark the tests that use it with :func:`needs`)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def needs(*names: str, reason: str | None = None) -> pytest.MarkDecorator:
    """A ``skipif`` marker for a test that needs the modules ``names`` (the per-test ``pytest.importorskip``)."""
    missing = [name for name in names if optional(name) is None]
    return pytest.mark.skipif(bool(missing), reason=reason or f"needs {', '.join(missing)} (not installed)")


# --------------------------------------------------------------------------------------------- models and images

def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give a model non-trivial weights and BatchNorm statistics, deterministically.

    The decoder's error and alpha biases are raised so that the error map is positive in many places
    (otherwise the clamp makes it all zero and the refiner would select nothing).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.1 if p.ndim == 1 else (2.0 / p[0].numel()) ** 0.5))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
        model.decoder.conv4.bias[0] = 0.5
        model.decoder.conv4.bias[4] = 0.15
    return model.eval()


def rgb_png(width: int, height: int, idat: bytes, bits: int = 8) -> bytes:
    """A ``bits``-bit RGB PNG whose header declares ``width`` x ``height``, with ``idat`` (zlib data) as its pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bits, 2, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG of ~70 bytes whose header declares ``width`` x ``height`` (a bomb's header, or an absurd size)."""
    return rgb_png(width, height, zlib.compress(b"\x00" * 64))


def png_header_only(path, width: int, height: int, rows: int = 2) -> None:
    """A PNG of a few hundred bytes that declares ``width`` x ``height`` but holds only ``rows`` rows of pixels."""
    rows_data = b"".join(b"\x00" + bytes(3 * width) for _ in range(rows))
    path.write_bytes(rgb_png(width, height, zlib.compress(rows_data, 9)))


# --------------------------------------------------------------------------------------------- command line

def run_cli(capsys, *args) -> tuple[int, str, str]:
    """``bgmatting ARGS`` in this process: ``(exit status, stdout, stderr)`` (usage errors exit through SystemExit)."""
    from bgmatting.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str, *words: str) -> str:
    """``err`` is one ``bgmatting: error: ...`` line (after any ``bgmatting: warning: ...`` lines), with no traceback,
    holding each of ``words``; returns the error line."""
    lines = err.splitlines()
    assert err.endswith("\n") and lines, repr(err)
    assert lines[-1].startswith("bgmatting: error: "), err
    assert all(line.startswith("bgmatting: warning: ") for line in lines[:-1]), err
    assert "Traceback" not in err and "File \"" not in err, err
    for word in words:
        assert word in lines[-1], (word, lines[-1])
    return lines[-1]


def files_below(folder) -> list[str]:
    """Every file and folder below ``folder`` (hidden temporary ones included), relative, sorted; ``[]`` if it does
    not exist."""
    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []


# --------------------------------------------------------------------------------------------- training

def make_corpus(root: Path, side: int = 32) -> Path:
    """A corpus in the layout of ``bgmatting data prepare``: 6 training and 2 validation ``side``² mattes."""
    rng = np.random.default_rng(0)
    c = side // 2
    yy, xx = np.mgrid[:side, :side]
    pha = (np.clip(1.5 - np.hypot(yy - c, xx - c) / (side / 4), 0, 1) * 255).astype(np.uint8)
    for split, n in (("train", 6), ("valid", 2)):
        for sub in ("fgr/toy", "pha/toy", "backgrounds/toy"):
            (root / split / sub).mkdir(parents=True)
        for i in range(n):
            fgr = (rng.random((side, side, 3)) * 255).astype(np.uint8)
            Image.fromarray(fgr).save(root / split / "fgr/toy" / f"{i}.png")
            Image.fromarray(pha).save(root / split / "pha/toy" / f"{i}.png")
            bg = (rng.random((side + side // 4, side + side // 2, 3)) * 255).astype(np.uint8)
            Image.fromarray(bg).save(root / split / "backgrounds/toy" / f"{i}.png")
    return root


def tiny(corpus: Path, out_dir: Path, **kw) -> TrainConfig:
    """A training config for a 2-step run of batch 2 at 32x32 on ``corpus`` (``kw`` overrides any field)."""
    from bgmatting.train.config import TrainConfig

    values = {"data_root": str(corpus), "out_dir": str(out_dir), "size": 32, "batch_size": 2, "steps": 2,
              "num_workers": 0, "log_every": 1, "checkpoint_every": 0, "validate_every": 0, "tensorboard": False,
              "seed": 3}
    values.update(kw)
    return TrainConfig(**values)


def read_metrics(out_dir: Path, split: str = "train") -> dict[int, dict]:
    """The rows of a run's ``metrics.jsonl`` for ``split``, by step."""
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if r["split"] == split}  # a resumed run may repeat a step: last wins
