import os

import struct
import zlib

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Exported engines and downloads of the tests go to a folder of their own, not the user's cache."""
    old = os.environ.get("BGMATTING_CACHE")
    os.environ["BGMATTING_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("BGMATTING_CACHE", None)
    else:
        os.environ["BGMATTING_CACHE"] = old


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give a model non-trivial weights and BatchNorm statistics, deterministically.

    The decoder's error and alpha biases are raised so that the error map is positive in many places
    (otherwise the clamp makes it all zero and the refiner would select nothing).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
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


@pytest.fixture
def decodes(monkeypatch):
    """Records every decode of image pixels (``ImageFile.load``) and stops it, so no big image is ever allocated."""
    from PIL import ImageFile

    calls = []

    def load(self):
        calls.append(self.size)
        raise OSError("decoding stopped by the test")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return calls


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> str:
    """A small randomly initialised MobileNetV2 ``MattingRefine`` saved as safetensors (for the command line)."""
    from bgmatting import MattingRefine, save_weights

    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    return str(save_weights(randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=320)), path))


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
    from pathlib import Path

    folder = Path(folder)
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []
