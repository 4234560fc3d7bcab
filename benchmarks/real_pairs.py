"""Real (frame, plate) pairs from real footage, for a visual check of a model before and after a change.

    python benchmarks/real_pairs.py [--before NAME|PATH] [--after PATH] [--before-scale S] [--after-scale S]
                                    [--frames 100 300 518 700] [--out docs]

OpenCV's ``vtest.avi`` (Debian ``opencv-doc``: 795 frames, 768×576, static camera, people walking) is a real
pair source without true alpha: its temporal median (``bgmatting plate``) is a clean plate, and each frame
with that plate is a real (source, background shot) pair, with real noise, compression and shadows. The
script fetches the package (cached, as ``bgmatting data prepare`` does), estimates the plate once (cached
next to the video), and writes ``OUT/real_pairs.png``: one row per frame, with the frame, the alpha of the
``--before`` model (default: the shipped one) and the alpha of the ``--after`` model, each with its composite
over a flat green.

What to look for: every walking person whole (heads, legs, the small ones far away), no alpha on their
shadows, nothing of the static scene (signs, benches) in the alpha.
"""

from __future__ import annotations

import argparse
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from bgmatting import Matter
from bgmatting.data.downloads import default_cache_dir, fetch_packages
from bgmatting.io import read_image, write_image
from bgmatting.io.video import VideoReader
from bgmatting.plate import estimate_plate, save_plate

from pictures import TILE_H, tile  # benchmarks/pictures.py, beside this script

VTEST = "usr/share/doc/opencv-doc/examples/data/vtest.avi"
GREEN = np.array([0.1, 0.8, 0.2], np.float32)


def vtest_video(cache: Path) -> Path:
    """``vtest.avi`` from the cached ``opencv-doc`` package (extracted from its .deb on first use)."""
    video = cache / "unpacked" / "opencv-doc" / VTEST
    if not video.exists():
        fetch_packages(["opencv-doc"], cache, progress=False)
        deb = next((cache / "downloads" / "debian").glob("opencv-doc_*.deb"))
        tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(cache / "unpacked" / "opencv-doc"), f"./{VTEST}"], input=tar,
                       check=True)
    return video


def plate_of(video: Path) -> np.ndarray:
    path = video.with_suffix(".plate.png")
    if not path.exists():
        save_plate(estimate_plate(video, align=False, progress=True), path)
    return read_image(path)


def frames_at(video: Path, indices: list[int]) -> dict[int, np.ndarray]:
    wanted, out = set(indices), {}
    with VideoReader(video) as reader:
        for i, frame in enumerate(reader):
            if i in wanted:
                out[i] = frame.image.astype(np.float32) / 255
            if len(out) == len(wanted):
                break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=None, help="weights (default: the shipped model)")
    ap.add_argument("--after", default=None, help="weights to compare (default: none, one column)")
    ap.add_argument("--before-scale", type=lambda t: float(Fraction(t)), default=None,
                    help="backbone scale of the --before model (default: its own)")
    ap.add_argument("--after-scale", type=lambda t: float(Fraction(t)), default=None,
                    help="backbone scale of the --after model (default: its own; e.g. 1 for these small people)")
    ap.add_argument("--frames", type=int, nargs="+", default=[100, 300, 518, 700])
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("docs"))
    args = ap.parse_args()
    video = vtest_video(args.cache or default_cache_dir())
    plate = plate_of(video)
    frames = frames_at(video, args.frames)
    def matter(weights, scale):
        return Matter(weights, device="cpu", **({} if scale is None else {"backbone_scale": scale}))

    models = [("before", matter(args.before, args.before_scale))]
    if args.after or args.after_scale:
        models.append(("after", matter(args.after, args.after_scale)))
    rows = []
    for i in args.frames:
        src = frames[i]
        tiles = [tile(src, f"frame {i}")]
        for name, matter in models:
            result = matter(src, plate)
            green = np.broadcast_to(GREEN, src.shape)
            tiles += [tile(result.pha, f"{name}: alpha"), tile(result.composite(green), f"{name}: composite")]
        rows.append(tiles)
    width = max(sum(t.width for t in row) for row in rows)
    sheet = Image.new("RGB", (width, TILE_H * len(rows)), (255, 255, 255))
    for r, row in enumerate(rows):
        x = 0
        for t in row:
            sheet.paste(t, (x, r * TILE_H))
            x += t.width
    path = args.out / "real_pairs.png"
    write_image(path, np.asarray(sheet, dtype=np.float32) / 255)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
