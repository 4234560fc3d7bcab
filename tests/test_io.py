"""Image reading and writing: formats, bit depths, EXIF orientation, bad files, atomic writes."""

import numpy as np
import pytest
from PIL import Image

from bgmatting import BgMattingError
from bgmatting.io import list_images, read_image, write_image

from helpers import png_header_only


def test_roundtrip_8_and_16_bit(tmp_path):
    rgb = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    write_image(tmp_path / "a.png", rgb)
    back = read_image(tmp_path / "a.png")
    assert back.shape == (5, 7, 3) and back.dtype == np.float32
    assert np.abs(back - rgb).max() <= 0.5 / 255 + 1e-6
    gray = np.linspace(0, 1, 35, dtype=np.float32).reshape(5, 7)
    write_image(tmp_path / "g16.png", gray, bits=16)
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
    assert np.abs(read_image(tmp_path / "g16.png", mode="L") - gray).max() <= 0.5 / 65535 + 1e-6
    rgba = np.concatenate([rgb, gray[..., None]], axis=2)
    write_image(tmp_path / "rgba.png", rgba)
    assert read_image(tmp_path / "rgba.png", mode="RGBA").shape == (5, 7, 4)
    with pytest.warns(UserWarning, match="alpha channel"):
        assert read_image(tmp_path / "rgba.png", mode="RGB").shape == (5, 7, 3)
    assert read_image(tmp_path / "g16.png", mode="RGB").shape == (5, 7, 3)


@pytest.mark.parametrize("scale", [1.0, 255.0, 65535.0])
def test_a_32_bit_float_tiff_is_read_in_its_range(tmp_path, scale):
    want = np.array([[0, 0.25, 0.5, 1.0]], np.float32)  # whole numbers at 255 and 65535: 8/16-bit values as floats
    Image.fromarray(np.round(want * scale) if scale > 1 else want, mode="F").save(tmp_path / "f.tif")
    got = read_image(tmp_path / "f.tif", mode="L")
    assert got.dtype == np.float32 and np.abs(got - want).max() <= 0.6 / 255
    hdr = np.array([[0.5, 1.5, 3.25, np.nan, np.inf, -np.inf]], np.float32)  # not whole numbers: highlights clip
    Image.fromarray(hdr, mode="F").save(tmp_path / "hdr.tif")
    assert np.array_equal(read_image(tmp_path / "hdr.tif", mode="L"), [[0.5, 1, 1, 0, 1, 0]])
    assert read_image(tmp_path / "f.tif", mode="RGB").shape == (1, 4, 3)


def test_a_damaged_lzw_tiff_is_one_error_without_libtiff_printing(tmp_path, capfd):
    rgb = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "ok.tif", compression="tiff_lzw")
    data = bytearray((tmp_path / "ok.tif").read_bytes())
    for i in range(200, 2000, 37):  # flip bytes of the LZW strip: codes that are not in the table yet
        data[i] ^= 0xFF
    (tmp_path / "bad.tif").write_bytes(bytes(data))
    capfd.readouterr()
    with pytest.raises(BgMattingError, match="bad.tif' is corrupt"):
        read_image(tmp_path / "bad.tif")
    out, err = capfd.readouterr()  # libtiff writes to the file descriptor itself, past Python's sys.stderr
    assert out == err == ""


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (24, 16), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 8, 8))  # a blue block at the top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=100)
    arr = read_image(tmp_path / "rot.jpg")
    assert arr.shape == (24, 16, 3)  # displayed upright: portrait
    assert arr[2, -3, 2] > 0.7 and arr[2, 2, 2] < 0.3  # the blue block went from top-left to top-right


def test_bad_files(tmp_path):
    with pytest.raises(BgMattingError, match="does not exist"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "fake.png").write_bytes(b"not an image at all")
    with pytest.raises(BgMattingError, match="not an image"):
        read_image(tmp_path / "fake.png")
    write_image(tmp_path / "ok.png", np.zeros((64, 64, 3), np.float32) + 0.5)
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(BgMattingError, match="trunc.png"):
        read_image(tmp_path / "trunc.png")
    with pytest.raises(BgMattingError, match="transparency to JPEG"):
        write_image(tmp_path / "x.jpg", np.zeros((2, 2, 4), np.float32))
    with pytest.raises(BgMattingError, match="unknown image format"):
        write_image(tmp_path / "x.xyz", np.zeros((2, 2), np.float32))


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    write_image(tmp_path / "big.png", np.zeros((40, 40), np.float32))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(BgMattingError, match="too large"):
        read_image(tmp_path / "big.png")


def test_write_is_atomic(tmp_path, monkeypatch):
    write_image(tmp_path / "out.png", np.zeros((4, 4), np.float32))
    before = (tmp_path / "out.png").read_bytes()

    def boom(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "out.png", np.ones((4, 4), np.float32))
    assert (tmp_path / "out.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temporary file left


def test_list_images(tmp_path):
    for rel in ["b/2.png", "a.jpg", "b/1.webp", "notes.txt", ".hidden.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)] == ["a.jpg", "b/1.webp", "b/2.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(BgMattingError, match="no image files"):
        list_images(tmp_path / "empty")


def test_written_files_have_ordinary_permissions(tmp_path):
    import os
    import stat

    path = write_image(tmp_path / "perm.png", np.zeros((2, 2), np.float32))
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_png_is_written_with_fast_compression(tmp_path):
    write_image(tmp_path / "fast.png", np.random.default_rng(0).random((32, 32, 3)))
    data = (tmp_path / "fast.png").read_bytes()
    idat = data.index(b"IDAT") + 4
    assert data[idat] & 0x0F == 8 and data[idat + 1] >> 6 == 0  # zlib stream, FLEVEL 0: compress_level 1


def _png_declaring(path, width: int, height: int) -> None:
    """A tiny valid PNG whose header is then rewritten to declare ``width`` x ``height`` (a bomb's header)."""
    import struct
    import zlib

    Image.new("RGB", (4, 4)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("reader", ["image_size", "read_image"])
def test_a_header_declaring_a_huge_image_is_refused_before_decoding(tmp_path, reader):
    from bgmatting.io import image_size
    from bgmatting.io.images import ImageTooLargeError

    path = tmp_path / "bomb.png"
    _png_declaring(path, 50000, 50000)
    assert path.stat().st_size < 1000
    with pytest.raises(ImageTooLargeError, match="too large"):
        (image_size if reader == "image_size" else read_image)(path)


def test_matte_refuses_a_bomb_in_one_line(tmp_path):
    import subprocess
    import sys

    bomb = tmp_path / "bomb.png"
    _png_declaring(bomb, 50000, 50000)
    Image.new("RGB", (64, 48)).save(tmp_path / "ok.png")
    for src, bgr in ((bomb, tmp_path / "ok.png"), (tmp_path / "ok.png", bomb)):
        run = subprocess.run([sys.executable, "-m", "bgmatting", "matte", str(src), "--bgr", str(bgr),
                              "-o", str(tmp_path / "out")], capture_output=True, text=True)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert "too large" in run.stderr and run.stderr.strip().count("\n") == 0


def test_the_pixel_limit_is_checked_from_the_header_before_decoding(tmp_path, decodes):
    from bgmatting.io import DEFAULT_MAX_PIXELS, image_size
    from bgmatting.io.images import ImageTooLargeError

    path = tmp_path / "9k.png"
    png_header_only(path, 9000, 9000)
    assert path.stat().st_size < 1000
    message = r"'.*9k.png' is 9000x9000 = 81.0 megapixels, over the limit of 40 megapixels; raise the limit with " \
              r"--max-pixels N \(in Python: max_pixels=N\)$"
    for read in (read_image, image_size):
        with pytest.raises(ImageTooLargeError, match=message):
            read(path)
    assert decodes == []  # refused from the header alone
    with pytest.raises(ImageTooLargeError, match="over the limit of 100 pixels"):
        image_size(path, max_pixels=100)
    # raised, or lifted (None), the limit lets the decoder start
    for limit in (100_000_000, None):
        with pytest.raises(BgMattingError, match="decoding stopped by the test"):
            read_image(path, max_pixels=limit)
    assert decodes == [(9000, 9000)] * 2
    # the default lets an 8K photo through
    png_header_only(path, 7680, 4320)
    assert 7680 * 4320 <= DEFAULT_MAX_PIXELS and image_size(path) == (4320, 7680)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(BgMattingError, match="max_pixels must be a positive integer"):
            read_image(path, max_pixels=bad)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_an_ignored_alpha_channel_is_warned_about(tmp_path, mode):
    path = tmp_path / f"{mode}.png"
    img = Image.new("RGBA", (6, 4), (200, 30, 10, 0))
    img.putpixel((0, 0), (10, 200, 30, 255))
    if mode == "P":
        img.convert("RGB").convert("P").save(path, transparency=0)
    else:
        img.convert(mode).save(path)
    with pytest.warns(UserWarning, match=r"'.*\.png' has an alpha channel \(transparency\); it is ignored: the "
                                         "colours stored under transparent pixels are used as they are") as record:
        rgb = read_image(path)
    assert len(record) == 1 and rgb.shape == (4, 6, 3)
    if mode == "RGBA":  # ignored: the colour under alpha 0 is kept, not composited over anything
        assert np.allclose(rgb[3, 5], np.array([200, 30, 10]) / 255)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(path, mode="RGBA").shape == (4, 6, 4)  # the alpha is read: nothing to say
        read_image(path, warn_alpha=False)
        Image.new("RGB", (6, 4)).save(tmp_path / "plain.png")
        read_image(tmp_path / "plain.png")


def test_image_size_reads_the_header_only_exif_included(tmp_path):
    from bgmatting.io import image_size

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.new("RGB", (24, 16)).save(tmp_path / "rot.png", exif=exif.tobytes())
    with pytest.MonkeyPatch.context() as mp:
        from PIL import ImageFile

        mp.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("image_size decoded the pixels"))
        assert image_size(tmp_path / "rot.png") == (24, 16)
    assert read_image(tmp_path / "rot.png").shape == (24, 16, 3)


# --------------------------------------------------------------------------------------------- atomic: folders, SIGTERM

def test_the_folder_check_makes_no_folder(tmp_path):
    from bgmatting.io.atomic import check_writable_folder

    assert check_writable_folder(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []  # made when the first file is written, not when checked
    (tmp_path / "file").write_text("x")
    with pytest.raises(BgMattingError, match="is not a folder"):
        check_writable_folder(tmp_path / "file" / "sub")


def test_a_failed_write_removes_the_folders_it_made(tmp_path):
    from bgmatting.io.atomic import atomic_path, removing_new_folders

    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a" / "b" / "x.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "keep.txt").write_text("x")
    with pytest.raises(KeyboardInterrupt):
        with removing_new_folders(tmp_path / "a" / "b" / "c"):
            with atomic_path(tmp_path / "a" / "b" / "c" / "x.txt"):
                pass  # a complete file: it stays, and so do its folders
            raise KeyboardInterrupt
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == \
        ["a", "a/b", "a/b/c", "a/b/c/x.txt", "a/keep.txt"]
    (tmp_path / "a" / "b" / "c" / "x.txt").unlink()
    with pytest.raises(KeyboardInterrupt):
        with removing_new_folders(tmp_path / "a" / "b" / "c" / "e" / "f"):
            (tmp_path / "a" / "b" / "c" / "e" / "f").mkdir(parents=True)
            raise KeyboardInterrupt
    assert (tmp_path / "a" / "b" / "c").is_dir() and not (tmp_path / "a" / "b" / "c" / "e").exists()


def test_sigterm_becomes_an_interrupt_within_the_block(tmp_path):
    import os
    import signal
    import threading

    from bgmatting.io.atomic import Terminated, terminate_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as caught:
        with terminate_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
    assert isinstance(caught.value, Terminated) and Terminated.EXIT_STATUS == 143
    assert signal.getsignal(signal.SIGTERM) is before
    seen = []
    thread = threading.Thread(target=lambda: seen.append(terminate_as_interrupt().__enter__() is None))
    thread.start()
    thread.join()
    assert seen == [True] and signal.getsignal(signal.SIGTERM) is before  # not in other threads


def test_matte_with_a_bad_option_leaves_no_output_folder(tmp_path, capsys):
    from bgmatting.cli import main

    src = tmp_path / "s.png"
    Image.fromarray(np.full((20, 28, 3), 90, np.uint8)).save(src)
    out = tmp_path / "out" / "deep" / "m"
    assert main(["matte", str(src), "--bgr", str(src), "-o", str(out), "--device", "nonsense"]) == 2
    assert "unknown device" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
