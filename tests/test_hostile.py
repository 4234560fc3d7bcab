"""Hostile input (issue 16): generated damaged, absurd and crafted inputs for every way in — images (`matte`), flags,
videos (`video`, `plate`), weights files, the HTTP API and the live WebSocket — and what must come out: one line
``bgmatting: error: ...`` with exit status 2 (or the right HTTP / WebSocket error), no traceback, no leftover files,
and memory that stays small. The README's reliability section is a table of what this file tries.

Property-based tests run with ``derandomize=True`` (the same examples on every run) and few examples each.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bgmatting import MattingRefine
from bgmatting.cli import build_parser
from bgmatting.io.images import IMAGE_SUFFIXES

from helpers import assert_one_error_line, files_below, png_declaring, randomize_, rgb_png, run_cli


def few(n: int):
    """Hypothesis settings for this file: ``n`` examples, the same ones on every run, no deadline."""
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------- inputs

def scene(h: int = 64, w: int = 64, subject: bool = True) -> np.ndarray:
    """A smooth uint8 RGB scene; with ``subject``, a red square in front of it."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.5 + 0.4 * np.sin(f * np.pi * (x + (0.3 + i) * y)) for i, f in enumerate((3, 5, 7))], axis=2)
    img = (img * 255).round().astype(np.uint8)
    if subject:
        img[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = (230, 30, 40)
    return img


def encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **options)
    return buf.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A real decompression bomb: a complete PNG of ``width`` × ``height`` black pixels, which zlib shrinks about a
    thousandfold (9000 × 9000: 236 kB for 243 MB of pixels)."""
    z = zlib.compressobj(9)
    row = bytes(1 + 3 * width)
    data = b"".join([z.compress(row) for _ in range(height)] + [z.flush()])
    return rgb_png(width, height, data)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) declares ``width`` × ``height``."""
    data = bytearray(encode(scene(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    """A BMP header (and 16 bytes of pixels) that declares ``width`` × ``height`` at 24 bits."""
    dib = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(dib) + 16, 0, 0, 14 + len(dib)) + dib + bytes(16)


SIGNATURES = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBP",
              b"GIF89a"]
PNG = encode(scene(), "PNG")
JPEG = encode(scene(), "JPEG", quality=90)
PNG_DATA_END = len(PNG) - 32  # a cut before this loses pixel data (the last 22 bytes hold no pixels, tested below)


def test_png_cuts_before_the_end_of_its_data_lose_pixels():
    """The premise of the truncation cases: every cut of the test PNG before ``PNG_DATA_END``, and every cut of the
    test JPEG, is a damaged image (Pillow refuses it), not a shorter valid one."""
    from bgmatting.io.images import ImageDecodeError, decode_image

    for data, end in ((PNG, PNG_DATA_END), (JPEG, len(JPEG))):
        for cut in range(0, end, 7):
            with pytest.raises(ImageDecodeError):
                decode_image(data[:cut], max_pixels=None)


@pytest.fixture
def plate_png(tmp_path) -> Path:
    """The background shot of :func:`scene` (64 × 64, no subject)."""
    path = tmp_path / "in" / "plate.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene(subject=False)).save(path)
    return path


# --------------------------------------------------------------------------------------------- images: matte

IMAGE_CASES = {  # name of the file -> its bytes; each is refused in one line, naming the file
    "random.png": lambda: np.random.default_rng(1).bytes(500),
    "random.jpg": lambda: np.random.default_rng(2).bytes(500),
    "empty.png": lambda: b"",
    "signature-only.png": lambda: PNG[:8],
    "cut-in-IHDR.png": lambda: PNG[:20],
    "cut-after-IHDR.png": lambda: PNG[:33],
    "cut-in-IDAT.png": lambda: PNG[:60],
    "cut-half.png": lambda: PNG[: len(PNG) // 2],
    "cut-before-IEND.png": lambda: PNG[:PNG_DATA_END],
    "garbage-after-signature.png": lambda: PNG[:8] + b"\x00garbage" * 20,
    "cut-soi.jpg": lambda: JPEG[:3],
    "cut-in-header.jpg": lambda: JPEG[:100],
    "cut-half.jpg": lambda: JPEG[: len(JPEG) // 2],
    "cut-before-EOI.jpg": lambda: JPEG[:-2],
    "0x64.png": lambda: png_declaring(0, 64),
    "64x0.png": lambda: png_declaring(64, 0),
    "2147483647x1.png": lambda: png_declaring(2 ** 31 - 1, 1),
    "4294967295x4294967295.png": lambda: png_declaring(2 ** 32 - 1, 2 ** 32 - 1),
    "100000x100000.png": lambda: png_declaring(100_000, 100_000),
    "9000x9000.png": lambda: png_declaring(9000, 9000),
    "64x64-no-pixels.png": lambda: png_declaring(64, 64),
    "65535x65535.jpg": lambda: jpeg_declaring(65535, 65535),
    "0x16.jpg": lambda: jpeg_declaring(0, 16),
    "100000x100000.bmp": lambda: bmp_declaring(100_000, 100_000),
    "-64x64.bmp": lambda: bmp_declaring(-64, 64),
    "random.tif": lambda: b"II*\x00" + np.random.default_rng(3).bytes(200),
    "random.webp": lambda: b"RIFF\x00\x01\x00\x00WEBP" + np.random.default_rng(4).bytes(200),
}
TOO_LARGE = {"2147483647x1.png", "4294967295x4294967295.png", "100000x100000.png", "9000x9000.png",
             "65535x65535.jpg", "100000x100000.bmp"}


@pytest.mark.parametrize("role", ["src", "bgr"])
@pytest.mark.parametrize("name", sorted(IMAGE_CASES))
def test_matte_refuses_damaged_and_absurd_images_in_one_line(tmp_path, capsys, tiny_weights, plate_png, name, role):
    bad = tmp_path / "in" / name
    bad.write_bytes(IMAGE_CASES[name]())
    src, bgr = (bad, plate_png) if role == "src" else (plate_png, bad)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "matte", src, "--bgr", bgr, "-o", out, "--weights", tiny_weights, "-q")
    assert code == 2
    line = assert_one_error_line(err, str(bad))
    if name in TOO_LARGE:
        assert "megapixels" in line
    assert not out.exists()


def test_matte_refuses_folders_and_other_views(tmp_path, capsys, tiny_weights, plate_png):
    (tmp_path / "x.png").mkdir()  # a folder with an image's name (and nothing in it)
    Image.fromarray(scene(64, 48)).save(tmp_path / "narrow.png")
    Image.fromarray(np.ascontiguousarray(scene(64, 48).transpose(1, 0, 2))).save(tmp_path / "rotated.jpg",
                                                                                  exif=_orientation(6))
    cases = [((tmp_path / "x.png", plate_png), "no image files"), ((plate_png, tmp_path / "x.png"), "no image files"),
             ((tmp_path / "narrow.png", plate_png), "same view"),
             ((tmp_path / "rotated.jpg", plate_png), "same view")]  # stored 64x48, shown 48x64
    for (src, bgr), words in cases:
        code, _, err = run_cli(capsys, "matte", src, "--bgr", bgr, "-o", tmp_path / "out", "--weights",
                               tiny_weights, "-q")
        assert code == 2
        assert_one_error_line(err, words)
        assert not (tmp_path / "out").exists()


def _orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


@few(12)
@given(prefix=st.sampled_from(SIGNATURES), body=st.binary(max_size=1500), suffix=st.sampled_from(IMAGE_SUFFIXES))
def test_matte_random_bytes_under_an_image_name(tmp_path, capsys, tiny_weights, plate_png, prefix, body, suffix):
    """Property: random bytes (behind an image format's signature or not) are a clean success — only if they happen
    to be an image — or one error line, and nothing is left in the output folder."""
    bad, out = tmp_path / "in" / f"random{suffix}", tmp_path / "out-random"
    bad.write_bytes(prefix + body)
    shutil.rmtree(out, ignore_errors=True)
    code, _, err = run_cli(capsys, "matte", bad, "--bgr", plate_png, "-o", out, "--weights", tiny_weights, "-q",
                           "--no-bgr-check", "--outputs", "pha")
    if code == 0:
        assert Image.open(out / "pha" / "random.png").size == Image.open(bad).size  # an image by chance
    else:
        assert code == 2
        assert_one_error_line(err, str(bad))
        assert files_below(out) == []


@few(12)
@given(fmt=st.sampled_from(["png", "jpg"]), cut=st.floats(0.0, 1.0))
def test_matte_truncated_images(tmp_path, capsys, tiny_weights, plate_png, fmt, cut):
    """Property: an image cut anywhere before the end of its pixel data is one error line, with no output."""
    data, end = (PNG, PNG_DATA_END) if fmt == "png" else (JPEG, len(JPEG))
    bad, out = tmp_path / "in" / f"cut.{fmt}", tmp_path / "out-cut"
    bad.write_bytes(data[: int(cut * (end - 1))])
    code, _, err = run_cli(capsys, "matte", bad, "--bgr", plate_png, "-o", out, "--weights", tiny_weights, "-q")
    assert code == 2
    assert_one_error_line(err, str(bad))
    assert files_below(out) == []


def _rgb16_png(rgb: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow does not write them)."""
    h, w, _ = rgb.shape
    rows = b"".join(b"\x00" + (row.astype(">u2") * 257).tobytes() for row in rgb)
    return rgb_png(w, h, zlib.compress(rows), bits=16)


def _save_as(array: np.ndarray, path: Path, kind: str) -> None:
    img = Image.fromarray(array)
    if kind == "rgb16":
        path.write_bytes(_rgb16_png(array))
    elif kind == "gray16":
        Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257).save(path)
    elif kind == "palette-transparent":
        img.convert("P").save(path, transparency=0)
    elif kind == "multi-page":
        img.save(path, save_all=True, append_images=[img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    elif kind == "exif-rotated":
        img.transpose(Image.Transpose.ROTATE_90).save(path, exif=_orientation(6))
    else:
        img.convert(kind).save(path)


@pytest.mark.parametrize("kind, suffix, warns", [
    ("L", ".png", False), ("gray16", ".png", False), ("rgb16", ".png", False), ("RGBA", ".png", True),
    ("LA", ".png", True), ("P", ".png", False), ("palette-transparent", ".png", True), ("1", ".png", False),
    ("CMYK", ".jpg", False), ("I", ".tif", False), ("multi-page", ".tif", False), ("exif-rotated", ".jpg", False),
    ("RGB", ".webp", False), ("RGB", ".bmp", False),
])
def test_matte_takes_unusual_but_valid_images(tmp_path, capsys, tiny_weights, kind, suffix, warns):
    """Gray, 16-bit, alpha, palette, bilevel, CMYK, 32-bit integer, multi-page and rotated files are images: they
    are matted at their displayed size, with a warning line where an alpha channel is ignored."""
    src, bgr = tmp_path / f"src{suffix}", tmp_path / f"bgr{suffix}"
    _save_as(scene(), src, kind)
    _save_as(scene(subject=False), bgr, kind)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "matte", src, "--bgr", bgr, "-o", out, "--weights", tiny_weights, "--outputs",
                           "pha,com", "--no-bgr-check", "-q")
    assert code == 0, err
    assert Image.open(out / "pha" / "src.png").size == (64, 64) and Image.open(out / "com" / "src.png").mode == "RGBA"
    lines = err.splitlines()
    assert all(line.startswith("bgmatting: warning: ") for line in lines), err
    assert any("alpha channel" in line for line in lines) == warns, err
    assert [p for p in files_below(out) if Path(p).name.startswith(".")] == []


def test_a_smaller_background_of_the_same_view_is_resized_with_a_warning(tmp_path, capsys, tiny_weights):
    src, bgr = tmp_path / "s.png", tmp_path / "b.png"
    Image.fromarray(scene(64, 64)).save(src)
    Image.fromarray(scene(32, 32, subject=False)).save(bgr)
    code, _, err = run_cli(capsys, "matte", src, "--bgr", bgr, "-o", tmp_path / "out", "--weights", tiny_weights,
                           "--no-bgr-check", "-q")
    assert code == 0 and err.startswith("bgmatting: warning: background 32x32 resized") and err.count("\n") == 1


# --------------------------------------------------------------------------------------------- flags

FLAG_COMMANDS = {  # argv that parses, then stops at a missing file before any work (no model, no port, no input)
    "matte": ["matte", "{tmp}/missing.png", "--bgr", "{tmp}/missing.png", "-o", "{tmp}/out", "--weights",
              "{tmp}/missing.safetensors"],
    "video": ["video", "{tmp}/missing.mp4", "--bgr", "{tmp}/missing.png", "-o", "{tmp}/out.mp4", "--weights",
              "{tmp}/missing.safetensors"],
    "plate": ["plate", "{tmp}/missing.mp4", "-o", "{tmp}/plate.png", "--weights", "{tmp}/missing.safetensors"],
    "serve": ["serve", "--port", "0", "--weights", "{tmp}/missing.safetensors"],
    "bench": ["bench", "--weights", "{tmp}/missing.safetensors", "--device", "cpu"],
    "export": ["export", "--format", "onnx", "-o", "{tmp}/out.onnx", "--weights", "{tmp}/missing.safetensors"],
    "eval": ["eval", "--data", "{tmp}/missing", "--weights", "{tmp}/missing.safetensors"],
    "webcam": ["webcam", "--camera", "{tmp}/missing.mp4", "--no-display", "--weights", "{tmp}/missing.safetensors"],
    "data prepare": ["data", "prepare", "--out", "{tmp}/out", "--cache", "{tmp}/cache", "--sources", "nosuch"],
    "data heldout": ["data", "heldout", "--corpus", "{tmp}/missing", "--out", "{tmp}/out"],
}


def numeric_flags() -> list[tuple[str, str, argparse.Action]]:
    """``(command, flag, action)`` of every flag of the commands above that converts its value (a number, a size, a
    port...), found in the parser itself, so that a flag added later is covered."""
    def parser_of(command: str) -> argparse.ArgumentParser:
        parser = build_parser()
        for word in command.split():  # "data prepare": a subcommand of a subcommand
            parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
        return parser

    return [(command, action.option_strings[-1], action) for command in FLAG_COMMANDS
            for action in parser_of(command)._actions if action.type is not None and action.option_strings]


NUMERIC_FLAGS = numeric_flags()
NOT_NUMBERS = ["nan", "NaN", "inf", "-inf", "Infinity", "-Infinity", "", " ", "abc", "1e400", "-1e400", "9" * 5000,
               "0x1p3", "1,5", "1..2", "--", "½", "1/0", "None", "[]", "\x00"]


def _parses(action: argparse.Action, value: str) -> bool:
    try:
        action.type(value)
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False
    return True


def test_the_flag_list_is_found_by_introspection():
    found = {(c, f) for c, f, _ in NUMERIC_FLAGS}
    for expected in [("matte", "--max-pixels"), ("matte", "--workers"), ("video", "--fps"), ("video", "--crf"),
                     ("video", "--max-pixels"), ("plate", "--frames"), ("plate", "--max-pixels"),
                     ("serve", "--port"), ("serve", "--max-upload-mb"), ("bench", "--warmup"),
                     ("bench", "--resolution"), ("eval", "--seed"), ("webcam", "--max-frames"),
                     ("data prepare", "--max-side"), ("data prepare", "--threads"), ("data heldout", "--cases"),
                     ("export", "--example-size"), ("export", "--opset")]:
        assert expected in found
    assert len(found) >= 30


def _check_flag_value(capsys, tmp_path, command: str, flag: str, action: argparse.Action, value: str) -> None:
    argv = [a.format(tmp=tmp_path) for a in FLAG_COMMANDS[command]] + [f"{flag}={value}"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (argv, err)
    line = assert_one_error_line(err)
    assert out == ""
    if _parses(action, value):  # a value the parser takes: the command goes on, to the missing file
        assert f"argument {flag}" not in line, line
    else:
        assert f"argument {flag}" in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command, flag", [(c, f) for c, f, _ in NUMERIC_FLAGS])
def test_numeric_flags_refuse_what_is_not_a_number_when_parsed(tmp_path, capsys, command, flag):
    """NaN, infinities, overflowing and non-numeric values are refused by the parser itself: one line naming the
    flag, exit status 2, before any work."""
    action = next(a for c, f, a in NUMERIC_FLAGS if (c, f) == (command, flag))
    for value in NOT_NUMBERS:
        assert not _parses(action, value), (flag, value)
        _check_flag_value(capsys, tmp_path, command, flag, action, value)


VALUES = st.one_of(st.sampled_from(["0", "-0", "-1", "1", "1/4", "1/64", "0.5", "1e-300", "1e300", "2", "64", "65",
                                    "256", "257", "10000", "10001", "65535", "65536", str(2 ** 63), str(10 ** 30),
                                    "64x64", "0x0", "-4x8", "100000x100000", "١٢", " 7 ", "+5", "1_0", "0b1"]),
                   st.integers().map(str), st.floats().map(repr), st.fractions().map(str), st.text(max_size=6))


@pytest.mark.parametrize("value", ["\x1e", "1\n2", "\r", "\x1b[31m", "\u2028"])
def test_control_characters_in_echoed_values_stay_on_one_line(tmp_path, capsys, value):
    """A flag value or a file name holding a line break or an escape is echoed escaped: still one error line."""
    code, _, err = run_cli(capsys, "matte", "a.png", "--bgr", "b.png", "-o", tmp_path / "o",
                           f"--mask-threshold={value}")
    assert code == 2
    assert_one_error_line(err, "--mask-threshold")
    code, _, err = run_cli(capsys, "matte", f"{value}.png", "--bgr", "b.png", "-o", tmp_path / "o")
    assert code == 2
    assert_one_error_line(err, "does not exist")


@few(60)
@given(which=st.integers(0, len(NUMERIC_FLAGS) - 1), value=VALUES)
def test_any_value_of_any_numeric_flag_is_one_line(tmp_path, capsys, which, value):
    """Property: whatever the value of a numeric flag (negative, zero, huge, fractional, Unicode digits, text), the
    answer is one line and exit status 2 (here every command then meets a missing file); it names the flag
    exactly when its parser refuses the value."""
    command, flag, action = NUMERIC_FLAGS[which]
    _check_flag_value(capsys, tmp_path, command, flag, action, value)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """``clip.mp4`` (12 frames, 64 × 48, index first), its background ``plate.png`` and ``frames/`` (6 PNGs)."""
    folder = tmp_path_factory.mktemp("clip")
    write_clip(folder / "clip.mp4", 12, faststart=True)
    Image.fromarray(clip_frame(-1)).save(folder / "plate.png")
    (folder / "frames").mkdir()
    for i in range(6):
        Image.fromarray(clip_frame(i)).save(folder / "frames" / f"{i:03d}.png")
    return folder


@pytest.mark.parametrize("argv, words", [
    (["matte", "{src}", "--bgr", "{still}", "--refine-threshold=-1"], ["refine_threshold", "[0, 1]"]),
    (["matte", "{src}", "--bgr", "{still}", "--refine-threshold=1e300"], ["refine_threshold"]),
    (["matte", "{src}", "--bgr", "{still}", "--mask-threshold=-0.5"], ["mask threshold"]),
    (["matte", "{src}", "--bgr", "{still}", "--mask-threshold=2"], ["mask threshold"]),
    (["matte", "{src}", "--bgr", "{still}", "--backbone-scale=1/64", "--max-pixels=100"], ["over the limit"]),
    (["video", "{clip}", "--bgr", "{plate}", "--crf=-1"], ["--crf"]),
    (["video", "{clip}", "--bgr", "{plate}", f"--crf={10 ** 30}"], ["--crf"]),
    (["video", "{clip}", "--bgr", "{plate}", "--start=99999999999999999999999:00"], ["no frames between"]),
    (["video", "{clip}", "--bgr", "{plate}", "--start=5", "--end=1"], ["must come after"]),
    (["video", "{frames}", "--bgr", "{plate}", "--fps=1e300"], ["frame rate"]),
    (["video", "{frames}", "--bgr", "{plate}", "--fps=1e-300"], ["frame rate"]),
    (["video", "{frames}", "--bgr", "{plate}", "--fps=-5"], ["frame rate"]),
    (["video", "{clip}", "--bgr", "auto", "--start=1e5"], ["not a time"]),
    (["plate", "{clip}", "--no-refine", "--start=99999999999999999999999:00"], ["no frames between"]),
    (["plate", "{clip}", "--no-refine", "--start=0.2", "--end=0.1"], ["must come after"]),
    (["export", "--format", "onnx", f"--opset={10 ** 30}"], ["opset"]),
    (["export", "--format", "onnx", "--example-size=100000x100000"], ["example size", "at most"]),
    (["export", "--format", "onnx", "--example-size=0x0"], ["example size", "at least"]),
    (["export", "--format", "onnx", "--refine-threshold=-3"], ["refine_threshold"]),
])
def test_absurd_values_the_parser_takes_are_refused_before_any_output(tmp_path, capsys, tiny_weights, clip_dir,
                                                                      argv, words):
    src, still = tmp_path / "s.png", tmp_path / "b.png"
    Image.fromarray(scene()).save(src)
    Image.fromarray(scene(subject=False)).save(still)
    argv = [a.format(src=src, still=still, plate=clip_dir / "plate.png", clip=clip_dir / "clip.mp4",
                     frames=clip_dir / "frames") for a in argv]
    out = {"matte": tmp_path / "out", "video": tmp_path / "out" / "x.mp4", "plate": tmp_path / "out" / "p.png",
           "export": tmp_path / "out" / "x.onnx"}[argv[0]]
    code, _, err = run_cli(capsys, *argv, "-o", out, "--weights", tiny_weights,
                           *(["--no-bgr-check", "-q"] if argv[0] in ("matte", "video") else []))
    assert code == 2
    assert_one_error_line(err, *words)
    assert files_below(tmp_path / "out") == []


# --------------------------------------------------------------------------------------------- video

def clip_frame(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Frame ``i`` of the test clip: noise-textured background with a box moving right (``i < 0``: no box)."""
    img = np.random.default_rng(7).integers(40, 200, (h, w, 3), dtype=np.uint8)
    if i >= 0:
        img[12:36, 4 + 3 * i: 18 + 3 * i] = (240, 240, 240)
    return img


def write_clip(path: Path, n: int, faststart: bool) -> Path:
    """An H.264 mp4 of ``n`` frames at 25 fps with a keyframe every 4; the index (moov) first or last."""
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"} if faststart else {}) as c:
        s = c.add_stream("libx264", rate=25, options={"preset": "ultrafast", "g": "4"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(n):
            for packet in s.encode(av.VideoFrame.from_ndarray(clip_frame(i), format="rgb24")):
                c.mux(packet)
        for packet in s.encode(None):
            c.mux(packet)
    return path


def frames_in(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@few(12)
@given(prefix=st.sampled_from([b"", b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41", b"\x1aE\xdf\xa3",
                               b"RIFF\x00\x00\x00\x00AVI ", b"\x00\x00\x01\xba", b"G"]),
       body=st.binary(max_size=3000))
def test_random_bytes_as_a_video(tmp_path, capsys, tiny_weights, clip_dir, prefix, body):
    """Property: random bytes named .mp4 (behind a container's signature or not) are one error line, with no
    output, and no model is made for them."""
    bad, out = tmp_path / "random.mp4", tmp_path / "out-random"
    bad.write_bytes(prefix + body)
    code, _, err = run_cli(capsys, "video", bad, "--bgr", clip_dir / "plate.png", "-o", out / "x.mp4", "--weights",
                           tiny_weights, "--outputs", "pha", "-q")
    assert code == 2
    assert_one_error_line(err, str(bad))
    assert files_below(out) == []


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {name: write_clip(folder / f"{name}.mp4", 12, faststart=name == "moov-first")
            for name in ("moov-first", "moov-last")}


@few(10)
@given(layout=st.sampled_from(["moov-first", "moov-last"]), cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_videos_are_refused_or_nearly_whole(tmp_path, capsys, tiny_weights, clip_dir, clips, layout, cut):
    """Property: an mp4 cut anywhere (index first or last) is one error line with nothing written — or, cut in its
    last frame's bytes, read as a whole video (within the tolerance of 2 frames): never silently short."""
    data = clips[layout].read_bytes()
    bad, out = tmp_path / f"cut-{layout}.mp4", tmp_path / "out-cut"
    bad.write_bytes(data[: int(cut * len(data))])
    shutil.rmtree(out, ignore_errors=True)
    code, _, err = run_cli(capsys, "video", bad, "--bgr", clip_dir / "plate.png", "-o", out / "pha.mp4",
                           "--weights", tiny_weights, "--outputs", "pha", "--no-bgr-check", "--preset", "ultrafast",
                           "-q")
    if code == 0:
        assert frames_in(out / "pha.mp4") >= 10 and err == ""
    else:
        assert code == 2
        line = assert_one_error_line(err, str(bad))
        assert "cut short" in line or "not a video file" in line
        assert files_below(out) == []


@pytest.mark.parametrize("layout, cut, kept", [
    ("moov-first", 0.5, True), ("moov-first", 0.8, True), ("moov-first", 0.1, False),
    ("moov-first", 0.03, False), ("moov-last", 0.5, False), ("moov-last", 0.95, False), ("moov-first", 0.0, False),
])
def test_keep_partial_keeps_what_can_be_read(tmp_path, capsys, tiny_weights, clip_dir, clips, layout, cut, kept):
    """--keep-partial mattes the frames before the cut (one warning line saying how many); a file of which no frame
    can be read (cut before its first frame, or without its index) is still one error line with no output."""
    bad, out = tmp_path / "cut.mp4", tmp_path / "out"
    data = clips[layout].read_bytes()
    bad.write_bytes(data[: int(cut * len(data))])
    args = ["video", bad, "--bgr", clip_dir / "plate.png", "-o", out / "pha.mp4", "--weights", tiny_weights,
            "--outputs", "pha", "--no-bgr-check", "--preset", "ultrafast", "-q"]
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    line = assert_one_error_line(err, str(bad))
    assert "--keep-partial" in line if kept else "cut short" in line or "not a video file" in line
    assert files_below(out) == []
    code, _, err = run_cli(capsys, *args, "--keep-partial")
    if kept:
        assert code == 0 and err.startswith("bgmatting: warning: ") and err.count("\n") == 1, err
        n = int(err.split("it ends after ")[1].split()[0])
        assert 0 < n < 12 and frames_in(out / "pha.mp4") == n and "--keep-partial" in err
        assert files_below(out) == ["pha.mp4"]
    else:
        assert code == 2
        assert_one_error_line(err, str(bad))
        assert files_below(out) == []


def test_a_folder_of_frames_with_a_corrupt_one(tmp_path, capsys, tiny_weights, clip_dir):
    """A frame that cannot be decoded in a folder of frames: an error, and the outputs already written are
    removed; with --keep-partial the frames before it are kept, with a warning."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(6):
        (frames / f"{i:03d}.png").write_bytes((clip_dir / "frames" / f"{i:03d}.png").read_bytes())
    (frames / "003.png").write_bytes((frames / "003.png").read_bytes()[:100])
    out = tmp_path / "out"
    args = ["video", frames, "--bgr", clip_dir / "plate.png", "-o", out, "--outputs", "pha,com", "--weights",
            tiny_weights, "--no-bgr-check", "--format", "png", "-q"]
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    assert_one_error_line(err, "frame 4 of 6", "003.png", "nothing was written", "--keep-partial")
    assert not out.exists()
    code, _, err = run_cli(capsys, *args, "--keep-partial")
    assert code == 0 and err.count("\n") == 1 and err.startswith("bgmatting: warning: ") and "3 frames" in err, err
    assert files_below(out) == ["com", "com/000000.png", "com/000001.png", "com/000002.png",
                                "pha", "pha/000000.png", "pha/000001.png", "pha/000002.png"]


def test_an_empty_video_file(tmp_path, capsys, tiny_weights, clip_dir):
    (tmp_path / "zero.mp4").write_bytes(b"")
    for command in (["video", tmp_path / "zero.mp4", "--bgr", clip_dir / "plate.png", "-o", tmp_path / "out"],
                    ["plate", tmp_path / "zero.mp4", "-o", tmp_path / "out" / "p.png", "--no-refine"]):
        code, _, err = run_cli(capsys, *command, "--weights", tiny_weights, "-q")
        assert code == 2
        assert_one_error_line(err, "zero.mp4", "not a video file")
        assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------- --max-pixels

@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if a video frame is decoded or an image's pixels are loaded."""
    from PIL import ImageFile

    from bgmatting.io import video as vio

    def refuse(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(vio.VideoReader, "_next_av_frame", refuse)
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.parametrize("case", ["video-file", "frame-folder", "plate", "plate-frames"])
def test_max_pixels_refuses_video_frames_before_decoding(tmp_path, capsys, tiny_weights, clip_dir, no_decoding, case):
    """--max-pixels on `video` and `plate`: the size a video stream (or its first frame) declares is checked before a
    frame is decoded, with the same message as for images."""
    src = clip_dir / ("frames" if case in ("frame-folder", "plate-frames") else "clip.mp4")
    command = ["video", src, "--bgr", clip_dir / "plate.png", "-o", tmp_path / "out" / "x.mp4"] \
        if case.startswith(("video", "frame")) else ["plate", src, "-o", tmp_path / "out" / "p.png", "--no-refine"]
    code, _, err = run_cli(capsys, *command, "--weights", tiny_weights, "--max-pixels", "3000", "-q")
    assert code == 2
    assert_one_error_line(err, "64x48 = 3072 pixels, over the limit of 3000 pixels",
                          "raise the limit with --max-pixels N")
    assert not (tmp_path / "out").exists()


def test_max_pixels_refuses_background_and_target_images(tmp_path, capsys, tiny_weights, clip_dir, decodes):
    """The still background and target of `video` are checked against --max-pixels from their headers (default 40
    MP); --max-pixels 0 lifts the limit (the decoder starts, and is stopped by the test)."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(9000, 9000))
    for extra in (["--bgr", bomb], ["--bgr", clip_dir / "clip.mp4", "--target-bgr", bomb]):  # (no still decoded)
        code, _, err = run_cli(capsys, "video", clip_dir / "clip.mp4", *extra, "-o", tmp_path / "out" / "x.mp4",
                               "--weights", tiny_weights, "--no-bgr-check", "-q")
        assert code == 2
        assert_one_error_line(err, str(bomb), "9000x9000 = 81.0 megapixels, over the limit of 40 megapixels")
        assert decodes == [] and not (tmp_path / "out").exists()
    code, _, err = run_cli(capsys, "video", clip_dir / "clip.mp4", "--bgr", bomb, "-o", tmp_path / "out" / "x.mp4",
                           "--weights", tiny_weights, "--no-bgr-check", "--max-pixels", "0", "-q")
    assert code == 2 and "decoding stopped by the test" in err and decodes == [(9000, 9000)]
    assert not (tmp_path / "out").exists()


def test_video_reader_max_pixels_api(clip_dir):
    from bgmatting import BgMattingError
    from bgmatting.io.video import VideoReader, sample_video

    for src in (clip_dir / "clip.mp4", clip_dir / "frames"):
        with pytest.raises(BgMattingError, match="64x48 = 3072 pixels, over the limit of 3071 pixels"):
            VideoReader(src, max_pixels=3071)
        with VideoReader(src, max_pixels=3072) as reader:
            assert next(reader).image.shape == (48, 64, 3)
        with pytest.raises(BgMattingError, match="max_pixels must be a positive integer"):
            VideoReader(src, max_pixels=0)
        with pytest.raises(BgMattingError, match="over the limit"):
            sample_video(src, 2, max_pixels=100)


# --------------------------------------------------------------------------------------------- plate outputs

def test_plate_refuses_to_overwrite_before_any_work(tmp_path, capsys, tiny_weights, clip_dir, monkeypatch):
    """`plate -o` replaces an existing plate (or coverage map) only with --overwrite, like `matte` and `video`;
    the refusals come before the video is read."""
    plate, cov = tmp_path / "plate.png", tmp_path / "cov.png"
    args = ["plate", clip_dir / "clip.mp4", "-o", plate, "--coverage-map", cov, "--no-refine", "--no-align", "-q"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0 and "wrote" in out and err == "", err
    before = plate.read_bytes(), cov.read_bytes()

    import bgmatting.plate

    def never(*a, **k):
        raise AssertionError("the plate was estimated before the outputs were checked")

    with monkeypatch.context() as m:
        m.setattr(bgmatting.plate, "estimate_plate", never)
        for argv, words in [
            (args, [str(plate), "exists already", "--overwrite"]),
            (["plate", clip_dir / "clip.mp4", "-o", tmp_path / "other.png", "--coverage-map", cov, "-q"],
             [str(cov), "exists already"]),
            (["plate", clip_dir / "clip.mp4", "-o", tmp_path / "p.txt", "-q"], ["name it .png"]),
            (["plate", clip_dir / "clip.mp4", "-o", tmp_path / "new.png", "--coverage-map", tmp_path / "new.png"],
             ["both be written"]),
            (["plate", clip_dir / "clip.mp4", "-o", clip_dir / "clip.mp4", "--overwrite"], ["name it .png"]),
            (["plate", clip_dir / "frames", "-o", clip_dir / "frames" / "plate.png"], ["among the input frames"]),
            (["plate", clip_dir / "clip.mp4", "-o", tmp_path / "file.png" / "plate.png"], ["not a folder"]),
        ]:
            if argv[3] == tmp_path / "file.png" / "plate.png":
                (tmp_path / "file.png").write_bytes(b"")
            code, _, err = run_cli(capsys, *argv, "--weights", tiny_weights)
            assert code == 2
            assert_one_error_line(err, *words)
    assert (plate.read_bytes(), cov.read_bytes()) == before
    code, _, err = run_cli(capsys, *args, "--overwrite")
    assert code == 0 and err == "" and plate.exists() and cov.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# --------------------------------------------------------------------------------------------- weights

def _matte_with(capsys, tmp_path, weights: Path) -> str:
    """``matte`` with ``--weights weights`` on a valid pair; returns the error line (exit 2, nothing written)."""
    src, bgr = tmp_path / "s.png", tmp_path / "b.png"
    if not src.exists():
        Image.fromarray(scene()).save(src)
        Image.fromarray(scene(subject=False)).save(bgr)
    code, _, err = run_cli(capsys, "matte", src, "--bgr", bgr, "-o", tmp_path / "out", "--weights", weights, "-q")
    assert code == 2, err
    line = assert_one_error_line(err)
    assert not (tmp_path / "out").exists()
    return line


def safetensors_bytes(header: dict, body: bytes, length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return (len(text) if length is None else length).to_bytes(8, "little") + text + body


def small_state() -> dict[str, torch.Tensor]:
    """Two tensors with BGMv2 names (a MattingRefine for :func:`~bgmatting.weights.detect_config`), nothing more."""
    return {"backbone.features.0.0.weight": torch.zeros(4, 6, 3, 3), "refiner.conv1.weight": torch.ones(2, 2, 3, 3)}


def small_safetensors(metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    return save(small_state(), metadata=metadata)


def _header(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8: 8 + n]), data[8 + n:]


def _crafted(change) -> bytes:
    header, body = _header(small_safetensors({"format": "bgmatting"}))
    change(header)
    return safetensors_bytes(header, body)


def _not_bgmv2() -> bytes:
    from safetensors.torch import save

    return save({"w": torch.zeros(2)})


CRAFTED = {  # name -> (the file's bytes, a word of the one-line message)
    "header-length-2**40": (lambda: (2 ** 40).to_bytes(8, "little") + small_safetensors()[8:], "not a weights file"),
    "header-length-99MB": (lambda: (99_000_000).to_bytes(8, "little") + small_safetensors()[8:], "safetensors"),
    "header-length-past-the-end": (lambda: safetensors_bytes(*_header(small_safetensors()), length=10_000),
                                   "safetensors"),
    "header-not-json": (lambda: (20).to_bytes(8, "little") + b"{" + b"\xff" * 19 + bytes(64), "safetensors"),
    "unknown-dtype": (lambda: _crafted(lambda h: h["refiner.conv1.weight"].update(dtype="Q9")), "safetensors"),
    "dtype-size-mismatch": (lambda: _crafted(lambda h: h["refiner.conv1.weight"].update(dtype="F64")),
                            "safetensors"),
    "shape-overflow": (lambda: _crafted(lambda h: h["refiner.conv1.weight"].update(shape=[2 ** 62, 2 ** 62])),
                       "safetensors"),
    "offsets-past-the-end": (lambda: _crafted(lambda h: h["refiner.conv1.weight"].update(data_offsets=[0, 2 ** 40])),
                             "safetensors"),
    "offsets-reversed": (lambda: _crafted(lambda h: h["refiner.conv1.weight"].update(data_offsets=[64, 0])),
                         "safetensors"),
    "metadata-not-strings": (lambda: _crafted(lambda h: h.update(__metadata__={"format": 5})), "safetensors"),
    "config-not-json": (lambda: small_safetensors({"format": "bgmatting", "config": "{not json"}), "corrupt"),
    "config-a-list": (lambda: small_safetensors({"format": "bgmatting", "config": "[1, 2]"}), "not a JSON object"),
    "not-bgmv2-keys": (_not_bgmv2, "not a Background Matting V2 model"),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_safetensors_are_one_line(tmp_path, capsys, name):
    make, word = CRAFTED[name]
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(make())
    line = _matte_with(capsys, tmp_path, path)
    assert str(path) in line and word in line, line


@few(15)
@given(prefix=st.sampled_from([b"", b"\x80", b"\x80\x02", b"\x80\x05\x95", b"PK\x03\x04", b"PK\x05\x06" + bytes(18),
                               (24).to_bytes(8, "little") + b"{", (2 ** 63).to_bytes(8, "little") + b"{"]),
       body=st.binary(max_size=400), suffix=st.sampled_from([".pth", ".pt", ".safetensors", ".ckpt"]))
def test_random_bytes_as_weights(tmp_path, capsys, prefix, body, suffix):
    """Property: random bytes (behind a pickle's, a zip's or a safetensors header's first bytes, or not) are one
    error line naming the file."""
    path = tmp_path / f"random{suffix}"
    path.write_bytes(prefix + body)
    assert str(path) in _matte_with(capsys, tmp_path, path)


@pytest.fixture(scope="module")
def small_files(tmp_path_factory) -> dict[str, bytes]:
    """Small weights files of each kind: our safetensors, a zip .pth and a legacy (pickle) .pth."""
    folder = tmp_path_factory.mktemp("small")
    torch.save(small_state(), folder / "zip.pth")
    torch.save(small_state(), folder / "legacy.pth", _use_new_zipfile_serialization=False)
    return {".safetensors": small_safetensors({"format": "bgmatting", "config": "{}"}),
            "-zip.pth": (folder / "zip.pth").read_bytes(), "-legacy.pth": (folder / "legacy.pth").read_bytes()}


@few(20)
@given(kind=st.sampled_from([".safetensors", "-zip.pth", "-legacy.pth"]), cut=st.floats(0.0, 1.0, exclude_max=True),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), max_size=4))
def test_cut_and_damaged_weights(tmp_path, capsys, small_files, kind, cut, flips):
    """Property: a weights file cut short or with bytes changed is one error line naming it (whole, the small file
    is refused too, for its missing keys: what is checked is that no damage makes a reader crash)."""
    data = bytearray(small_files[kind])
    for where, value in flips:
        data[int(where * len(data))] = value
    path = tmp_path / f"damaged{kind}"
    path.write_bytes(bytes(data[: max(1, int(cut * len(data)))]))
    assert str(path) in _matte_with(capsys, tmp_path, path)


def test_weights_that_do_not_fit_the_model(tmp_path, capsys, tiny_weights):
    from safetensors.torch import load_file, save_file

    state = load_file(tiny_weights)
    state["decoder.conv4.weight"] = torch.zeros(7, 7)
    save_file(state, tmp_path / "reshaped.safetensors")
    line = _matte_with(capsys, tmp_path, tmp_path / "reshaped.safetensors")
    assert "wrong shape (file vs model): decoder.conv4.weight (7, 7) vs" in line
    Path(tiny_weights).with_suffix(".cut").write_bytes(Path(tiny_weights).read_bytes()[: 5_000_000])
    line = _matte_with(capsys, tmp_path, Path(tiny_weights).with_suffix(".cut"))
    assert "not a valid safetensors file" in line


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
                           | st.sampled_from(["sampling", "full", "thresholding", 0.25, 1 / 64, 1e-300, 16, 10 ** 30]),
                           lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner,
                                                                                         max_size=2), max_leaves=4)


@few(25)
@given(option=st.sampled_from(["backbone_scale", "refine_mode", "refine_sample_pixels", "refine_threshold",
                               "refine_prevent_oversampling", "refine_kernel_size", "unknown"]), value=JSON_VALUES)
def test_any_config_value_in_a_weights_header(tmp_path, capsys, option, value):
    """Property: whatever JSON value a refiner option has in a safetensors header (NaN and infinities included),
    loading is one error line naming the file: the option is refused by name, or the file's tensors are (the small
    file has too few)."""
    path = tmp_path / "config.safetensors"
    path.write_bytes(small_safetensors({"format": "bgmatting", "config": json.dumps({option: value})}))
    line = _matte_with(capsys, tmp_path, path)
    assert str(path) in line and (f"has a bad refiner option in its metadata header: {option}" in line
                                  or option in ("refine_mode",) and "refine mode must be" in line
                                  or "do not fit" in line), line


class _RunsCode:
    """Unpickling this runs Python code that creates the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


@pytest.mark.parametrize("kind", ["legacy-pickle", "zip-pth", "torchscript-archive", "nested-in-state-dict"])
def test_pickles_that_would_run_code_are_refused_and_do_not_run(tmp_path, capsys, kind):
    marker = tmp_path / "ran.txt"
    path = tmp_path / f"{kind}.pth"
    payload = _RunsCode(marker)
    if kind == "legacy-pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    elif kind == "zip-pth":
        torch.save(payload, path)
    elif kind == "nested-in-state-dict":
        torch.save({"backbone.features.0.0.weight": torch.zeros(1), "evil": payload}, path)
    else:  # laid out as a TorchScript archive: code/, constants.pkl, and its data.pkl the payload
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("m/code/__torch__.py", "")
            z.writestr("m/constants.pkl", pickle.dumps(()))
            z.writestr("m/data.pkl", pickle.dumps(payload, protocol=2))
    line = _matte_with(capsys, tmp_path, path)
    assert ("run code" in line or "refusing to load" in line) and "exec" in line, line
    assert not marker.exists()


# --------------------------------------------------------------------------------------------- web API

WEB_MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def web_client():
    pytest.importorskip("fastapi")
    pytest.importorskip("multipart")
    from fastapi.testclient import TestClient

    from bgmatting import Matter
    from bgmatting.web import create_app

    matter = Matter(randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=320)), device="cpu")
    with TestClient(create_app(matter, max_upload_mb=1, max_pixels=WEB_MAX_PIXELS), raise_server_exceptions=False) as c:
        yield c


def post_pair(client, src: bytes, bgr: bytes = PNG, content_type: str = "image/png", **fields):
    files = {"src": ("src.png", src, content_type), "bgr": ("bgr.png", bgr, "image/png")}
    return client.post("/api/matte", files=files, data={"output": "pha", **fields})


def assert_json_error(r, *statuses: int) -> dict:
    assert r.status_code in statuses, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["status"] == r.status_code and isinstance(body["error"], str) and 0 < len(body["error"]) < 400
    assert "Traceback" not in r.text and 'File "' not in r.text
    return body


def assert_usable(client) -> None:
    r = post_pair(client, encode(scene(), "PNG"), encode(scene(subject=False), "PNG"))
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (64, 64)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's, in the server, for TIFF-looking bytes
@few(40)
@given(kind=st.sampled_from(["random", "signature", "cut", "flipped"]), body=st.binary(max_size=600),
       prefix=st.sampled_from(SIGNATURES), fmt=st.sampled_from(["png", "jpg"]), at=st.floats(0.0, 1.0,
                                                                                            exclude_max=True),
       role=st.sampled_from(["src", "bgr"]))
def test_web_damaged_uploads_get_a_json_4xx(web_client, kind, body, prefix, fmt, at, role):
    """Property: random bytes, bytes behind an image signature, truncated images and images with changed bytes,
    sent as src or bgr, are answered 413/415/422 with a JSON error (never 5xx or a trace) — or, for changed bytes
    that still decode, 200."""
    data, end = (PNG, PNG_DATA_END) if fmt == "png" else (JPEG, len(JPEG))
    if kind == "random":
        data = body
    elif kind == "signature":
        data = prefix + body
    elif kind == "cut":
        data = data[: int(at * end)]
    else:
        changed = bytearray(data)
        for i, b in enumerate(body[:8]):
            changed[(int(at * len(data)) + 97 * i) % len(data)] = b
        data = bytes(changed)
    r = post_pair(web_client, data, PNG) if role == "src" else post_pair(web_client, PNG, data)
    if r.status_code == 200:
        assert kind in ("flipped", "signature") and r.headers["content-type"] == "image/png"
    else:
        assert_json_error(r, 413, 415, 422)
    assert web_client.get("/api/health").status_code == 200


@pytest.mark.parametrize("name, data, status", [
    ("png 40000x40000", png_declaring(40_000, 40_000), 413),
    ("png 1500x1000 (over 1 MP)", png_declaring(1500, 1000), 413),
    ("png 2^32-1 square", png_declaring(2 ** 32 - 1, 2 ** 32 - 1), 413),
    ("jpeg 65535x65535", jpeg_declaring(65535, 65535), 413),
    ("bmp 100000x100000", bmp_declaring(100_000, 100_000), 413),
    ("png 0x64", png_declaring(0, 64), 422),
    ("jpeg 0x16", jpeg_declaring(0, 16), 422),
    ("png 64x64 without pixels", png_declaring(64, 64), 422),
    ("gif", encode(scene(), "GIF"), 415),
    ("svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", 415),
    ("empty", b"", 422),
])
def test_web_absurd_headers(web_client, name, data, status):
    assert_json_error(post_pair(web_client, data), status)
    assert_usable(web_client)


@pytest.mark.parametrize("headers, body, statuses", [
    ({"content-type": "application/json"}, b'{"src": "x"}', (422,)),
    ({"content-type": "text/plain"}, b"src=x", (422,)),
    ({"content-type": "application/x-www-form-urlencoded"}, b"src=x&bgr=y", (422,)),
    ({"content-type": "multipart/form-data"}, b"--x\r\n", (400, 422)),
    ({"content-type": "multipart/form-data; boundary="}, b"garbage", (400, 422)),
    ({"content-type": "multipart/form-data; boundary=abc"}, b"--abc\r\nContent-Disposition: form-data\r\n\r\n",
     (400, 422)),
    ({"content-type": "multipart/form-data; boundary=abc", "content-length": str(10 ** 20)}, b"x", (413,)),
    ({"content-type": "multipart/form-data; boundary=abc", "content-length": "-5"}, b"x", (400, 413, 422)),
    ({"content-type": "multipart/form-data; boundary=abc"}, b"x" * (2 ** 20 + 10), (413,)),
])
def test_web_wrong_content_types_and_bodies(web_client, headers, body, statuses):
    assert_json_error(web_client.post("/api/matte", content=body, headers=headers), *statuses)
    assert_usable(web_client)


@pytest.mark.parametrize("declared", ["text/plain", "application/octet-stream", "", "image/gif", "video/mp4"])
def test_web_the_declared_type_of_a_file_is_not_trusted_either_way(web_client, declared):
    """Files are judged by their bytes: a real PNG declared as something else is matted, and a GIF declared as a
    PNG is refused (415)."""
    r = post_pair(web_client, encode(scene(), "PNG"), encode(scene(subject=False), "PNG"), content_type=declared)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert_json_error(post_pair(web_client, encode(scene(), "GIF"), content_type="image/png"), 415)


def _frame(fid: int, data: bytes) -> bytes:
    return b"F" + struct.pack("<I", fid) + data


def _reply(ws):
    """The next message: a JSON object, or ``("R", id)`` for a matted frame."""
    m = ws.receive()
    if m.get("bytes") is not None:
        assert m["bytes"][:1] == b"R"
        return "R", struct.unpack("<I", m["bytes"][1:5])[0]
    return json.loads(m["text"], parse_constant=lambda name: pytest.fail(f"the server sent {name}"))


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@few(40)
@given(tag=st.sampled_from([b"F", b"B", b"T", b"R", b"\x00", b"f"]), fid=st.integers(0, 2 ** 32 - 1),
       prefix=st.sampled_from(SIGNATURES), body=st.binary(max_size=300))
def test_live_random_binary_messages(web_client, tag, fid, prefix, body):
    """Property: a binary message of any tag with random bytes (behind an image signature or not) is answered with
    one JSON error (for a frame: with its id) — or accepted, if the bytes happen to be an image — and the
    connection then mattes a good frame. (Text messages have their own property test in test_web_api.py.)"""
    with web_client.websocket_connect("/api/live") as ws:
        assert _reply(ws)["type"] == "hello"
        ws.send_bytes(b"B" + encode(scene(subject=False), "JPEG"))
        assert _reply(ws)["type"] == "background"
        payload = prefix + body
        ws.send_bytes(tag + (struct.pack("<I", fid) if tag == b"F" else b"") + payload)
        reply = _reply(ws)
        if isinstance(reply, tuple):
            assert tag == b"F" and reply == ("R", fid)
        elif reply["type"] == "error":
            assert 0 < len(reply["message"]) < 300 and "Traceback" not in reply["message"]
            assert reply.get("id") == (fid if tag == b"F" else None)
        else:
            assert (tag, reply["type"]) in ((b"B", "background"), (b"T", "target"))
        ws.send_bytes(b"B" + encode(scene(subject=False), "JPEG"))
        assert _reply(ws)["type"] == "background"
        ws.send_bytes(_frame(7, encode(scene(), "JPEG")))
        assert _reply(ws) == ("R", 7)


# --------------------------------------------------------------------------------------------- memory

def _peak_rss_mib(args: list[str], tmp_path) -> tuple[int, str, float]:
    """Run ``bgmatting ARGS`` in a child; ``(exit status, stderr, its own peak resident memory in MiB)``.

    The child reads its VmHWM from /proc at exit: ``ru_maxrss`` of a child counts the forking parent's memory
    too (Linux keeps the pre-exec high-water mark), which in a long test session is gigabytes."""
    report = tmp_path / f"hwm-{len(list(tmp_path.glob('hwm-*')))}.txt"
    code = ("import sys; out = sys.argv.pop(1); "
            "import atexit; atexit.register(lambda: open(out, 'w').write(next(l.split()[1] for l in "
            "open('/proc/self/status') if l.startswith('VmHWM')))); "
            "from bgmatting.cli import main; raise SystemExit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, str(report), *args], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc.returncode, proc.stderr, int(report.read_text()) / 1024  # VmHWM is in kB


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the child's peak memory from /proc")
@pytest.mark.slow
def test_a_decompression_bomb_is_refused_in_small_memory(tmp_path, tiny_weights):
    """A 236 kB PNG of 9000 x 9000 pixels (243 MB as RGB, 972 MB as float; a run without the limit peaks at 3.5 GB)
    is refused with the default limit by a process whose peak memory is within 100 MiB of the same command refusing
    a missing file (PyTorch loaded in both), and under 1.5 GB."""
    bomb, plate = tmp_path / "bomb.png", tmp_path / "plate.png"
    bomb.write_bytes(png_bomb(9000, 9000))
    Image.fromarray(scene(subject=False)).save(plate)
    common = ["--bgr", str(plate), "-o", str(tmp_path / "out"), "--weights", tiny_weights, "-q"]
    code, err, bomb_mib = _peak_rss_mib(["matte", str(bomb), *common], tmp_path)
    assert code == 2 and err.count("\n") == 1 and "9000x9000 = 81.0 megapixels, over the limit" in err, err
    code, err, base_mib = _peak_rss_mib(["matte", str(tmp_path / "missing.png"), *common], tmp_path)
    assert code == 2 and "does not exist" in err, err
    assert bomb_mib < 1536 and bomb_mib - base_mib < 100, (bomb_mib, base_mib)
    assert not (tmp_path / "out").exists()
