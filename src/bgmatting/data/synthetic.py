"""Procedural matting samples: person-like foregrounds with alpha, and backgrounds.

Nothing here reads files. Every function takes a ``numpy.random.Generator`` and is deterministic for
its state, so ``make_foreground(size, np.random.default_rng(seed), textures)`` gives the same sample
for the same seed and textures.

Arrays are ``float32`` in ``[0, 1]``: foregrounds and backgrounds ``(H, W, 3)``, alpha ``(H, W)``.

A foreground is built from layers drawn at a supersampled resolution and box-filtered down, so every
edge is anti-aliased (partial alpha on a one-pixel band). On top of that:

- a head-and-shoulders silhouette (ellipse head, neck, Bézier shoulders and torso that run off the
  bottom edge, optional arms), tilted at random;
- hair: a cap of overlapping ellipses plus thin strands whose width is below one output pixel, so
  they carry alpha well below 1;
- sometimes a semi-transparent layer (a veil, glass, a scarf) with alpha 0.2–0.7;
- sometimes defocus (Gaussian) or motion blur, applied to the premultiplied colour and to alpha
  together, so the sample stays a valid compositing equation ``I = α F + (1 − α) B``;
- one sample in five is a non-person object (a closed Bézier blob, possibly with a hole).

Colours come from crops of ``textures`` (e.g. real background photographs) or, when none are given,
from procedural noise textures.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .resize import resize_float

__all__ = ["make_foreground", "make_background", "random_texture"]

_SS = 3  # supersampling factor for drawing: edges get 1/9 alpha steps before any blur


# --------------------------------------------------------------------------------------------------
# small numeric helpers


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or int(size[0]) < 8 or int(size[1]) < 8:
        raise ValueError(f"size must be (H, W) with both at least 8 pixels, not {tuple(size)!r}")
    return int(size[0]), int(size[1])


def _resize(arr: np.ndarray, size: tuple[int, int], resample=Image.BICUBIC) -> np.ndarray:
    """Resize a float ``(h, w[, C])`` array in [0, 1] to ``size = (H, W)``."""
    H, W = size
    if arr.shape[:2] == (H, W):
        return arr.astype(np.float32, copy=False)
    return np.clip(resize_float(arr, (W, H), resample), 0.0, 1.0)


def _conv(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve ``(H, W)`` or ``(H, W, C)`` with a 2-D kernel, replicate padding, same size."""
    squeeze = img.ndim == 2
    x = torch.from_numpy(np.ascontiguousarray(img[..., None] if squeeze else img)).permute(2, 0, 1)[None].float()
    C = x.shape[1]
    k = torch.from_numpy(kernel.astype(np.float32))
    kh, kw = k.shape
    x = F.pad(x, (kw // 2, kw - 1 - kw // 2, kh // 2, kh - 1 - kh // 2), mode="replicate")
    y = F.conv2d(x, k[None, None].expand(C, 1, kh, kw), groups=C)
    out = y[0].permute(1, 2, 0).numpy()
    return out[..., 0] if squeeze else out


def _gaussian_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g /= g.sum()
    return np.outer(g, g)


def _motion_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised line kernel of ``length`` pixels at ``angle`` radians (drawn supersampled)."""
    n = int(np.ceil(length)) | 1
    img = Image.new("L", (n * 4, n * 4), 0)
    c = n * 2
    dx, dy = np.cos(angle) * length * 2, np.sin(angle) * length * 2
    ImageDraw.Draw(img).line([(c - dx, c - dy), (c + dx, c + dy)], fill=255, width=4)
    k = np.asarray(img.resize((n, n), Image.BOX), dtype=np.float64)
    return k / max(k.sum(), 1e-8)


def _bezier(points: np.ndarray, n: int = 48) -> np.ndarray:
    """Sample a Bézier curve of any degree with control ``points`` ``(K, 2)`` → ``(n, 2)`` (de Casteljau)."""
    pts = np.asarray(points, dtype=np.float64)
    t = np.linspace(0.0, 1.0, n)[:, None, None]
    pts = np.broadcast_to(pts[None], (n, *pts.shape))
    while pts.shape[1] > 1:
        pts = pts[:, :-1] * (1 - t) + pts[:, 1:] * t
    return pts[:, 0]


def _closed_blob(center: np.ndarray, radius: float, rng: np.random.Generator, k: int = 8,
                 jitter: float = 0.35) -> list[tuple[float, float]]:
    """A smooth closed outline: quadratic Bézier pieces through jittered radial points."""
    ang = np.sort(rng.uniform(0, 2 * np.pi, k)) if k > 3 else np.linspace(0, 2 * np.pi, k, endpoint=False)
    rad = radius * rng.uniform(1 - jitter, 1 + jitter, k)
    pts = center + np.stack([np.cos(ang) * rad, np.sin(ang) * rad], axis=1)
    out = []
    for i in range(k):
        a, b, c = pts[i - 1], pts[i], pts[(i + 1) % k]
        m0, m1 = (a + b) / 2, (b + c) / 2
        out.extend(map(tuple, _bezier(np.stack([m0, b, m1]), 16)))
    return out


# --------------------------------------------------------------------------------------------------
# textures


def _noise_texture(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Coloured multi-scale value noise ``(H, W, 3)``: a stand-in for photo texture."""
    H, W = size
    out = np.zeros((H, W, 3), np.float32)
    base = rng.uniform(0.1, 0.9, 3).astype(np.float32)
    amp = 0.35
    for cells in (3, 8, 24):
        g = rng.uniform(-1, 1, (cells, max(2, cells * W // max(H, 1)), 3)).astype(np.float32)
        out += amp * _resize((g + 1) / 2, size) - amp / 2
        amp *= 0.5
    return np.clip(out + base, 0.0, 1.0)


def random_texture(size: Sequence[int], rng: np.random.Generator,
                   textures: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """A random ``(H, W, 3)`` texture: a random crop of one of ``textures`` (scaled, maybe flipped
    and colour-shifted), or procedural noise when ``textures`` is empty or ``None``.

    ``textures``: ``(h, w, 3)`` float arrays in [0, 1] (uint8 is accepted too).
    """
    H, W = _check_size(size)
    if not textures:
        return _noise_texture((H, W), rng)
    tex = np.asarray(textures[int(rng.integers(len(textures)))])
    if tex.dtype == np.uint8:
        tex = tex.astype(np.float32) / 255.0
    if tex.ndim == 2:
        tex = np.repeat(tex[..., None], 3, axis=2)
    th, tw = tex.shape[:2]
    # crop a window with the output's aspect ratio, 25–100 % of the texture's short side
    frac = rng.uniform(0.25, 1.0)
    ch = max(4, int(min(th, tw * H / W) * frac))
    cw = max(4, int(ch * W / H))
    cw, ch = min(cw, tw), min(ch, th)
    y0 = int(rng.integers(0, th - ch + 1))
    x0 = int(rng.integers(0, tw - cw + 1))
    crop = _resize(tex[y0 : y0 + ch, x0 : x0 + cw, :3].astype(np.float32), (H, W))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    gain = rng.uniform(0.75, 1.25, 3).astype(np.float32)
    return np.clip(crop * gain + rng.uniform(-0.08, 0.08), 0.0, 1.0).astype(np.float32)


def _skin_colour(rng: np.random.Generator) -> np.ndarray:
    light = rng.uniform(0.25, 0.95)
    return np.clip(np.array([0.95, 0.72, 0.58]) * light + rng.uniform(-0.05, 0.05, 3), 0, 1).astype(np.float32)


def _hair_colour(rng: np.random.Generator) -> np.ndarray:
    palette = np.array([[0.08, 0.06, 0.05], [0.25, 0.15, 0.08], [0.55, 0.35, 0.18], [0.85, 0.72, 0.45], [0.6, 0.6, 0.6],
                        [0.55, 0.12, 0.06]])
    c = palette[int(rng.integers(len(palette)))] * rng.uniform(0.7, 1.3)
    return np.clip(c, 0, 1).astype(np.float32)


def _tinted(size: tuple[int, int], colour: np.ndarray, rng: np.random.Generator, textures,
            strength: float) -> np.ndarray:
    """A flat colour modulated by a texture's luminance (skin, hair)."""
    tex = random_texture(size, rng, textures)
    lum = tex.mean(axis=2, keepdims=True)
    return np.clip(colour * (1 - strength + strength * 2 * lum), 0, 1).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# shape layers (drawn supersampled, returned at output size as float alpha)


class _Canvas:
    """Draw onto ``L`` masks at ``_SS``× resolution; ``alpha()`` box-filters back to ``(H, W)``."""

    def __init__(self, size: tuple[int, int]):
        self.H, self.W = size
        self.img = Image.new("L", (self.W * _SS, self.H * _SS), 0)
        self.draw = ImageDraw.Draw(self.img)

    @staticmethod
    def s(pts) -> list[tuple[float, float]]:
        return [(float(x) * _SS, float(y) * _SS) for x, y in pts]

    def polygon(self, pts, fill=255):
        self.draw.polygon(self.s(pts), fill=fill)

    def ellipse(self, cx, cy, rx, ry, fill=255):
        self.draw.ellipse([(cx - rx) * _SS, (cy - ry) * _SS, (cx + rx) * _SS, (cy + ry) * _SS], fill=fill)

    def line(self, pts, width: float, fill=255):
        w = max(1, int(round(width * _SS)))
        self.draw.line(self.s(pts), fill=fill, width=w, joint="curve")
        if w > 2:  # round caps
            for x, y in (pts[0], pts[-1]):
                self.ellipse(x, y, width / 2, width / 2, fill)

    def rotate(self, angle_deg: float, cx: float, cy: float):
        self.img = self.img.rotate(angle_deg, resample=Image.BICUBIC, center=(cx * _SS, cy * _SS))
        self.draw = ImageDraw.Draw(self.img)

    def alpha(self) -> np.ndarray:
        small = self.img.resize((self.W, self.H), Image.BOX)
        return np.asarray(small, dtype=np.float32) / 255.0


def _person_layers(size, rng, textures):
    """Layers (alpha, colour) back to front for a head-and-shoulders figure."""
    H, W = size
    m = min(H, W)
    cx = rng.uniform(0.35, 0.65) * W
    rh = rng.uniform(0.09, 0.17) * m * (H / m) ** 0.3  # head radius (vertical)
    rx = rh * rng.uniform(0.72, 0.88)
    hy = rng.uniform(0.12, 0.42) * H + rh * 0.5
    neck_w = rx * rng.uniform(0.6, 0.85)
    sy = hy + rh * rng.uniform(1.15, 1.5)  # shoulder line
    sw = rx * rng.uniform(2.3, 3.6)  # half shoulder width
    drop = rh * rng.uniform(0.2, 0.7)
    widen = rng.uniform(-0.1, 0.35) * sw
    tilt = rng.uniform(-14, 14)
    cxh = cx + rng.uniform(-0.3, 0.3) * rx  # head offset (head turned / leaning)

    # torso: shoulders are quadratic curves from the neck base to the shoulder tips, then the sides
    # run down past the bottom edge
    bottom = H + rh + sw * 0.7  # far enough below the edge that the tilt never shows the bottom
    left_tip = np.array([cx - sw, sy + drop])
    right_tip = np.array([cx + sw, sy + drop * rng.uniform(0.7, 1.3)])
    nl, nr = np.array([cx - neck_w / 2, sy - rh * 0.05]), np.array([cx + neck_w / 2, sy - rh * 0.05])
    lc = np.array([cx - sw * rng.uniform(0.5, 0.8), sy - rh * rng.uniform(-0.05, 0.2)])
    rc = np.array([cx + sw * rng.uniform(0.5, 0.8), sy - rh * rng.uniform(-0.05, 0.2)])
    left_side = _bezier(np.stack([left_tip, left_tip + [-sw * 0.12, rh * 0.8], [cx - sw - widen, bottom]]), 24)
    right_side = _bezier(np.stack([[cx + sw + widen, bottom], right_tip + [sw * 0.12, rh * 0.8], right_tip]), 24)
    # outline: neck base → left shoulder tip → down the left side → up the right side → neck base
    first = _bezier(np.stack([nl, lc, left_tip]), 24)
    outline = np.concatenate([first, left_side, right_side, _bezier(np.stack([right_tip, rc, nr]), 24)])

    torso = _Canvas(size)
    torso.polygon(outline)
    skin = _Canvas(size)
    skin.polygon([(cx - neck_w / 2, hy), (cx + neck_w / 2, hy), (nr[0], sy + rh * 0.25), (nl[0], sy + rh * 0.25)])
    skin.ellipse(cxh, hy, rx, rh)
    if rng.random() < 0.6:  # ears
        for sgn in (-1, 1):
            skin.ellipse(cxh + sgn * rx * 0.97, hy + rh * 0.05, rx * 0.16, rh * 0.24)

    arms = _Canvas(size)
    n_arms = int(rng.choice([0, 0, 1, 2]))
    arm_w = rx * rng.uniform(0.55, 0.85)
    for sgn in rng.permutation([-1, 1])[:n_arms]:
        tip = right_tip if sgn > 0 else left_tip
        start = tip + [-sgn * arm_w * 0.4, arm_w * 0.5]
        elbow = start + [sgn * rng.uniform(0.0, 0.8) * sw, rng.uniform(0.8, 1.6) * rh * 1.5]
        hand = elbow + [-sgn * rng.uniform(0.2, 1.2) * sw, -rng.uniform(-0.6, 1.4) * rh * 1.5]
        path = _bezier(np.stack([start, elbow, hand]), 24)
        arms.line(path, arm_w)
        skin.ellipse(hand[0], hand[1], arm_w * 0.55, arm_w * 0.6)

    face = _Canvas(size)  # drawn over the hair cap so that hair frames the face instead of hiding it
    face.ellipse(cxh, hy + rh * 0.22, rx * rng.uniform(0.8, 0.9), rh * 0.78)
    hair = _Canvas(size)
    strands = _Canvas(size)
    hair_col = _hair_colour(rng)
    if rng.random() < 0.85:
        length = rng.uniform(0.0, 1.6)  # 0: short hair, >1: below the shoulders
        for _ in range(int(rng.integers(5, 10))):
            a = rng.uniform(np.pi * 0.95, np.pi * 2.05)
            r = rng.uniform(0.55, 0.95)
            hair.ellipse(cxh + np.cos(a) * rx * r * 0.6, hy + np.sin(a) * rh * r * 0.6 - rh * 0.1,
                         rx * rng.uniform(0.55, 0.8), rh * rng.uniform(0.45, 0.7))
        if length > 0.5:  # long hair falls on both sides
            for sgn in (-1, 1):
                top = np.array([cxh + sgn * rx * 0.75, hy - rh * 0.3])
                down = np.array([cxh + sgn * rx * rng.uniform(0.9, 1.4), hy + rh * length * 1.4])
                hair.line(_bezier(np.stack([top, top + [sgn * rx * 0.4, rh * 0.4], down]), 20),
                          rx * rng.uniform(0.35, 0.6))
        # strands: thin curves leaving the cap outwards, many of them below a pixel wide
        n = int(rng.integers(60, 260))
        for _ in range(n):
            a = rng.uniform(np.pi * 0.85, np.pi * 2.15)
            p0 = np.array([cxh + np.cos(a) * rx * 0.95, hy + np.sin(a) * rh * 0.95 - rh * 0.08])
            out = np.array([np.cos(a), np.sin(a)])
            ln = rh * rng.uniform(0.15, 0.6 + 0.6 * length)
            fall = np.array([0.0, 1.0])
            p1 = p0 + out * ln * 0.5 + rng.normal(0, 0.15, 2) * ln
            p2 = p0 + (out * 0.5 + fall * rng.uniform(0, 1.0)) * ln + rng.normal(0, 0.2, 2) * ln
            width = rng.choice([0.34, 0.34, 0.67, 1.0])  # in output pixels
            strands.line(_bezier(np.stack([p0, p1, p2]), 16), width, fill=int(rng.uniform(120, 255)))

    for c in (torso, skin, arms, hair, face, strands):
        c.rotate(tilt, cx, sy)

    HW = (H, W)
    cloth = random_texture(HW, rng, textures)
    skin_tex = _tinted(HW, _skin_colour(rng), rng, textures, 0.3)
    has_hair = hair.img.getbbox() is not None
    layers = [
        (torso.alpha(), cloth),
        (arms.alpha(), cloth * rng.uniform(0.8, 1.1) if rng.random() < 0.7 else skin_tex),
        (skin.alpha(), skin_tex),
        (hair.alpha(), _tinted(HW, hair_col, rng, textures, 0.6)),
        (face.alpha() if has_hair else np.zeros(HW, np.float32), skin_tex),
        (strands.alpha(), _tinted(HW, np.clip(hair_col * rng.uniform(0.9, 1.4), 0, 1), rng, textures, 0.5)),
    ]
    return layers


def _object_layers(size, rng, textures):
    """Layers for a non-person object: a smooth blob, maybe with a hole, maybe translucent."""
    H, W = size
    m = min(H, W)
    c = _Canvas(size)
    center = np.array([rng.uniform(0.35, 0.65) * W, rng.uniform(0.35, 0.7) * H])
    radius = rng.uniform(0.2, 0.38) * m
    c.polygon(_closed_blob(center, radius, rng, int(rng.integers(5, 11))))
    if rng.random() < 0.4:  # a hole: the background shows through
        c.polygon(_closed_blob(center + rng.normal(0, radius * 0.1, 2), radius * rng.uniform(0.2, 0.45), rng, 6, 0.2),
                  fill=0)
    a = c.alpha()
    if rng.random() < 0.3:
        a = a * rng.uniform(0.35, 0.85)  # a tinted glass-like object
    return [(a, random_texture(size, rng, textures))]


def _semi_transparent_layer(size, rng, textures):
    H, W = size
    c = _Canvas(size)
    center = np.array([rng.uniform(0.2, 0.8) * W, rng.uniform(0.4, 0.95) * H])
    c.polygon(_closed_blob(center, rng.uniform(0.12, 0.3) * min(H, W), rng, int(rng.integers(4, 9))))
    a = c.alpha() * rng.uniform(0.2, 0.7)
    colour = np.clip(random_texture(size, rng, textures) * 0.5 + rng.uniform(0, 1, 3).astype(np.float32) * 0.5, 0, 1)
    return a, colour


# --------------------------------------------------------------------------------------------------
# public API


def make_foreground(
    size: Sequence[int], rng: np.random.Generator, textures: Sequence[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One procedural foreground with its alpha matte.

    Args:
        size: ``(H, W)`` in pixels, both at least 8.
        rng: the random generator; the result is a pure function of its state, ``size`` and ``textures``.
        textures: optional ``(h, w, 3)`` arrays (float in [0, 1] or uint8) whose random crops colour the
            clothing, skin and hair; procedural noise when omitted.

    Returns:
        ``(fgr, pha)``: ``fgr`` ``(H, W, 3)`` float32 in [0, 1]; ``pha`` ``(H, W)`` float32 in [0, 1],
        with soft edges (partial alpha) and, most of the time, hair strands and translucent parts.
        ``fgr`` is defined everywhere (also where ``pha == 0``), so ``pha * fgr + (1 - pha) * bgr`` is
        the composite.
    """
    H, W = _check_size(size)
    layers = _object_layers((H, W), rng, textures) if rng.random() < 0.2 else _person_layers((H, W), rng, textures)
    if rng.random() < 0.4:
        layers.append(_semi_transparent_layer((H, W), rng, textures))

    # "over" compositing, back to front, in premultiplied colour
    pre = np.zeros((H, W, 3), np.float32)
    pha = np.zeros((H, W), np.float32)
    for a, col in layers:
        pre = col * a[..., None] + pre * (1 - a[..., None])
        pha = a + pha * (1 - a)
    base = layers[0][1]

    # camera effects on premultiplied colour and alpha together
    if rng.random() < 0.3:
        k = _gaussian_kernel(rng.uniform(0.4, 1.8) * max(H, W) / 512)
        pre, pha = _conv(pre, k), _conv(pha, k)
    if rng.random() < 0.25:
        k = _motion_kernel(rng.uniform(3, 14) * max(H, W) / 512, rng.uniform(0, np.pi))
        pre, pha = _conv(pre, k), _conv(pha, k)

    pha = np.clip(pha, 0.0, 1.0)
    pha[pha < 1.0 / 512] = 0.0
    safe = np.maximum(pha, 1e-6)[..., None]
    fgr = np.where(pha[..., None] > 1e-3, np.clip(pre / safe, 0.0, 1.0), base)
    return fgr.astype(np.float32), pha.astype(np.float32)


def make_background(size: Sequence[int], rng: np.random.Generator,
                    textures: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """A procedural background ``(H, W, 3)`` float32 in [0, 1].

    A mix of a colour gradient, low-frequency noise, out-of-focus shapes and stripes, with mild sensor
    noise; with ``textures``, sometimes blended with a random crop of one of them.
    """
    H, W = _check_size(size)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    c0, c1 = rng.uniform(0, 1, 3).astype(np.float32), rng.uniform(0, 1, 3).astype(np.float32)
    if rng.random() < 0.5:  # linear gradient
        ang = rng.uniform(0, 2 * np.pi)
        t = (np.cos(ang) * xx / W + np.sin(ang) * yy / H)
    else:  # radial gradient
        t = np.hypot(xx / W - rng.uniform(0, 1), yy / H - rng.uniform(0, 1)) * rng.uniform(0.8, 1.6)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    img = img * rng.uniform(0.5, 0.9) + _noise_texture((H, W), rng) * rng.uniform(0.1, 0.5)

    # shapes, blurred as if out of focus
    canvas = Image.new("RGB", (W, H), (0, 0, 0))
    mask = Image.new("L", (W, H), 0)
    d, dm = ImageDraw.Draw(canvas), ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(0, 12))):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(-0.2, 1.0) * W, rng.uniform(-0.2, 1.0) * H
        x1, y1 = x0 + rng.uniform(0.05, 0.5) * W, y0 + rng.uniform(0.05, 0.6) * H
        op = int(rng.uniform(60, 230))
        if rng.random() < 0.5:
            d.ellipse([x0, y0, x1, y1], fill=col)
            dm.ellipse([x0, y0, x1, y1], fill=op)
        else:
            d.rectangle([x0, y0, x1, y1], fill=col)
            dm.rectangle([x0, y0, x1, y1], fill=op)
    if rng.random() < 0.3:  # stripes (shelves, blinds, tiles)
        period = rng.uniform(0.03, 0.15) * H
        for y in np.arange(rng.uniform(0, period), H, period):
            d.rectangle([0, y, W, y + period * rng.uniform(0.1, 0.4)],
                        fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            dm.rectangle([0, y, W, y + period * 0.4], fill=int(rng.uniform(40, 160)))
    shapes = np.asarray(canvas, np.float32) / 255.0
    m = np.asarray(mask, np.float32)[..., None] / 255.0
    k = _gaussian_kernel(rng.uniform(0.5, 6.0) * max(H, W) / 512)
    shapes, m = _conv(shapes, k), _conv(m, k)
    img = shapes * m + img * (1 - m)

    if textures and rng.random() < 0.3:
        w = rng.uniform(0.2, 0.6)
        img = img * (1 - w) + random_texture((H, W), rng, textures) * w
    img = img + rng.normal(0, rng.uniform(0.0, 0.02), img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)
