"""Render the README's example figures: source, background shot, alpha and a composite, side by side.

    python benchmarks/pictures.py --corpus /work/corpus [--weights NAME|PATH] [--out docs]

Writes ``docs/example_real.png`` (the real pair in ``examples/``) and ``docs/example_heldout.png`` (a held-out
person of the corpus composited over a held-out background with the BGMv2 perturbations, seed 0).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from bgmatting import Matter
from bgmatting.data.perturb import make_pair
from bgmatting.io import list_images, read_image, write_image
from bgmatting.tensors import cover_resize, to_tensor

TILE_H = 240


def tile(img: np.ndarray, label: str) -> Image.Image:
    """An image (RGB or gray, float in [0, 1]) scaled to TILE_H pixels high, labelled in its top-left corner."""
    arr = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    im = Image.fromarray(arr)
    im = im.resize((round(im.width * TILE_H / im.height), TILE_H), Image.BICUBIC)
    ImageDraw.Draw(im).rectangle((0, 0, 8 * len(label) + 8, 16), fill=(0, 0, 0))
    ImageDraw.Draw(im).text((4, 2), label, fill=(255, 255, 255))
    return im


def _figure(matter: Matter, src: np.ndarray, bgr: np.ndarray, new_bg: np.ndarray, path: Path) -> None:
    result = matter(src, bgr)
    tiles = [tile(src, "src"), tile(bgr, "bgr"), tile(result.pha, "alpha"),
             tile(result.composite(new_bg), "composite")]
    sheet = Image.new("RGB", (sum(t.width for t in tiles), TILE_H), (255, 255, 255))
    x = 0
    for t in tiles:
        sheet.paste(t, (x, 0))
        x += t.width
    write_image(path, np.asarray(sheet, dtype=np.float32) / 255)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--out", type=Path, default=Path("docs"))
    args = ap.parse_args()
    matter = Matter(args.weights, device="cpu")
    root = Path(__file__).resolve().parent.parent
    src, bgr = read_image(root / "examples" / "src.jpg"), read_image(root / "examples" / "bgr.jpg")
    valid = args.corpus / "valid"
    backgrounds = list_images(valid / "backgrounds")
    new_bg = read_image(backgrounds[0])
    _figure(matter, src, bgr, new_bg, args.out / "example_real.png")
    # a held-out real person (the first of valid/fgr/people) over a held-out background, perturbed as in training
    person = sorted((valid / "fgr" / "people").glob("*.png"))[0]
    fgr = to_tensor(read_image(person))
    pha = to_tensor(read_image(valid / "pha" / "people" / person.name, "L"))[:, :1]
    bg = cover_resize(to_tensor(read_image(backgrounds[1])), tuple(fgr.shape[2:]))
    s, b = make_pair(fgr, pha, bg, generator=torch.Generator().manual_seed(0))
    _figure(matter, s[0].permute(1, 2, 0).numpy(), b[0].permute(1, 2, 0).numpy(), new_bg,
            args.out / "example_heldout.png")


if __name__ == "__main__":
    main()
