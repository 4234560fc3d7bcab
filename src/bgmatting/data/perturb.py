"""The Background Matting V2 perturbations: how a real (source, background shot) pair differs from a clean composite.

A background shot is taken at another moment than the source frame: the subject may cast a shadow on the
scene, the camera moved a little, exposure and white balance drifted, and each frame has its own sensor
noise. These functions simulate that, for training augmentation and for building a benchmark from
foreground/alpha/background images (:func:`make_pair`).

Conventions: images are NCHW float tensors in ``[0, 1]`` (``(N, 3, H, W)`` colour, ``(N, 1, H, W)``
alpha), on any device. Every random function takes ``generator`` (a :class:`torch.Generator`, on the CPU
or on the tensors' device; ``None`` uses the global RNG) and ``p``, the probability that each sample of
the batch is perturbed; parameters are drawn per sample. The input is never modified: a new tensor is
returned, of the input's dtype (half-precision inputs are computed in float32 internally). Nothing here
needs gradients (the ops are differentiable, but the random choices are not).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .augment import box_blur

__all__ = [
    "cast_shadow",
    "add_noise",
    "jitter_background_colour",
    "misalign_background",
    "compress",
    "shift_white_balance",
    "camouflage",
    "motion_blur",
    "composite",
    "make_pair",
]

# Shadow: a warped, blurred copy of the subject's alpha darkens the background multiplicatively.
SHADOW_STRENGTH = (0.1, 0.4)  # fraction of light blocked where the shadow is densest
SHADOW_DEGREES = 5.0  # rotation ± degrees
SHADOW_TRANSLATE = 0.2  # shift ± fraction of width / height
SHADOW_SCALE = (0.5, 1.5)
SHADOW_SHEAR = 5.0  # ± degrees
SHADOW_BLUR = (20, 40)  # box-blur size in pixels at 512 px (scaled with the image)
_SHADOW_WORK_SIZE = 512  # the shadow is built at most this large, then upsampled (it is smooth anyway)

# Background shot taken at a different time.
COLOUR_BRIGHTNESS = 0.15  # factor in [1 − b, 1 + b]
COLOUR_CONTRAST = 0.15
COLOUR_SATURATION = 0.15
COLOUR_HUE = 0.05  # rotation of the hue ± fraction of a full turn (0.05 = 18°)
COLOUR_GAMMA = (0.9, 1.1)

# Camera moved slightly between the two shots.
MISALIGN_DEGREES = 1.5
MISALIGN_TRANSLATE = 0.015
MISALIGN_SCALE = (0.98, 1.02)
MISALIGN_SHEAR = 1.0

_LUMA = (0.299, 0.587, 0.114)


# ----------------------------------------------------------------------------------------------------------
# helpers


def _check_images(x: torch.Tensor, name: str, channels: int | None = 3) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or (channels is not None and x.shape[1] != channels):
        want = f"(N, {channels}, H, W)" if channels is not None else "(N, C, H, W)"
        raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [0, 1], got dtype {x.dtype}")


def _check_p(p: float | torch.Tensor, name: str = "p") -> None:
    """``p`` is a probability, or (a tensor) one per sample."""
    if isinstance(p, torch.Tensor):
        if p.dim() != 1 or not bool(((p >= 0) & (p <= 1)).all()):
            raise ValueError(f"{name} must be one probability in [0, 1] per sample, got {p.tolist()}")
    elif not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")


def _rand(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` uniform numbers in ``[0, 1)`` (float32) on ``device``, drawn with ``generator``."""
    gdev = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=gdev).to(device)


def _uniform(n, low, high, generator, device) -> torch.Tensor:
    return low + (high - low) * _rand(n, generator, device)


def _chosen(n: int, p: float | torch.Tensor, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Indices of the samples to perturb, each chosen with probability ``p`` (a tensor: sample ``i`` with
    ``p[i]``; the draws are those of a float ``p`` strictly between 0 and 1)."""
    if isinstance(p, torch.Tensor):
        if p.shape != (n,):
            raise ValueError(f"one probability per sample is needed ({n}), got shape {tuple(p.shape)}")
        return torch.nonzero(_rand(n, generator, device) < p.to(device)).flatten()
    if p >= 1.0:
        return torch.arange(n, device=device)
    if p <= 0.0:
        return torch.zeros(0, dtype=torch.long, device=device)
    return torch.nonzero(_rand(n, generator, device) < p).flatten()


def _apply(x: torch.Tensor, idx: torch.Tensor, fn) -> torch.Tensor:
    """A copy of ``x`` with ``x[idx]`` replaced by ``fn(x[idx])``."""
    out = x.clone()
    if idx.numel():
        out[idx] = fn(x[idx]).to(x.dtype)
    return out


def _affine_grid(a: torch.Tensor, t: torch.Tensor, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    """Sampling grids ``(n, h, w, 2)`` for :func:`torch.nn.functional.grid_sample` of affine warps.

    The warp moves content as ``p_out = A · (p_in − c) + c + t`` in pixels (``A`` ``(n, 2, 2)``, ``t``
    ``(n, 2)`` as ``(x, y)``, ``c`` the image centre); the grid holds its inverse in the normalised
    coordinates of ``align_corners=False``, so rotations stay rigid on non-square images.
    """
    a_inv = torch.linalg.inv(a.float())
    half = torch.tensor([w / 2.0, h / 2.0], device=a.device)
    # normalised n = p / half (p centred pixels): n_in = half⁻¹ A⁻¹ half · n_out − half⁻¹ A⁻¹ t
    lin = a_inv * half[None, None, :] / half[None, :, None]
    off = -(a_inv @ t.float()[:, :, None])[:, :, 0] / half
    theta = torch.cat([lin, off[:, :, None]], dim=2)
    return F.affine_grid(theta.to(dtype), [a.shape[0], 1, h, w], align_corners=False)


def _random_affine_grid(
    n: int, h: int, w: int, *, degrees, translate, scale, shear, generator, device, dtype
) -> torch.Tensor:
    """Grids of random affine warps: ``A = R(angle) · Shear_x(shear) · scale`` and a shift ``t``.

    ``angle`` and ``shear`` uniform in ``±degrees`` / ``±shear`` degrees, ``scale`` uniform in the range,
    ``t`` uniform in ``±translate`` times width / height.
    """
    angle = torch.deg2rad(_uniform(n, -degrees, degrees, generator, device))
    shr = torch.deg2rad(_uniform(n, -shear, shear, generator, device))
    s = _uniform(n, scale[0], scale[1], generator, device)
    tx = _uniform(n, -translate, translate, generator, device) * w
    ty = _uniform(n, -translate, translate, generator, device) * h
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shr)
    a = torch.stack(
        [torch.stack([cos, cos * tan - sin], -1), torch.stack([sin, sin * tan + cos], -1)], -2
    ) * s[:, None, None]
    return _affine_grid(a, torch.stack([tx, ty], -1), h, w, dtype)


def _warp(x: torch.Tensor, grid: torch.Tensor, padding_mode: str) -> torch.Tensor:
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode=padding_mode, align_corners=False)


# ----------------------------------------------------------------------------------------------------------
# perturbations


def composite(fgr: torch.Tensor, pha: torch.Tensor, bgr: torch.Tensor) -> torch.Tensor:
    """The compositing equation ``src = pha · fgr + (1 − pha) · bgr``.

    Args:
        fgr: foreground ``(N, 3, H, W)`` in ``[0, 1]``.
        pha: alpha ``(N, 1, H, W)`` in ``[0, 1]``.
        bgr: background ``(N, 3, H, W)`` in ``[0, 1]``.

    Returns:
        ``(N, 3, H, W)`` in ``[0, 1]``.

    Example:
        >>> fgr, bgr = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
        >>> composite(fgr, torch.full((1, 1, 2, 2), 0.25), bgr)[0, 0, 0, 0].item()
        0.25
    """
    _check_images(fgr, "fgr")
    _check_images(pha, "pha", 1)
    _check_images(bgr, "bgr")
    if not (fgr.shape == bgr.shape and pha.shape[0] == fgr.shape[0] and pha.shape[2:] == fgr.shape[2:]):
        raise ValueError(
            f"fgr, pha and bgr must agree in N, H, W: got {tuple(fgr.shape)}, {tuple(pha.shape)}, {tuple(bgr.shape)}"
        )
    return pha * fgr + (1 - pha) * bgr


def cast_shadow(
    bgr: torch.Tensor, pha: torch.Tensor, generator: torch.Generator | None = None, p: float = 1.0,
    strength: tuple[float, float] = SHADOW_STRENGTH,
) -> torch.Tensor:
    """Darken the background with a soft shadow of the subject.

    The shadow is the alpha, warped by a random affine transform (rotation ±5°, shift ±20 % of the size,
    scale 0.5–1.5, shear ±5°, zeros outside), box-blurred (20–40 px at 512 px, scaled with the image),
    and multiplied by a random strength in ``strength`` (default ``[0.1, 0.4]``); the background is multiplied by
    ``1 − shadow``, so it only ever gets darker. (BGMv2 subtracts ``0.3 · U(0, 1) · shadow`` instead;
    the multiplicative form keeps dark areas from clipping to black.)

    Args:
        bgr: background ``(N, 3, H, W)`` in ``[0, 1]``.
        pha: the subject's alpha ``(N, 1, H, W)`` in ``[0, 1]``.
        generator: random source; ``None`` uses the global RNG.
        p: probability that each sample gets a shadow.
        strength: ``(min, max)`` fraction of the light blocked where the shadow is densest, ``0 <= min <= max
            <= 1``.

    Returns:
        ``(N, 3, H, W)`` in ``[0, 1]``, ``≤ bgr`` everywhere.
    """
    _check_images(bgr, "bgr")
    _check_images(pha, "pha", 1)
    if pha.shape[0] != bgr.shape[0] or pha.shape[2:] != bgr.shape[2:]:
        raise ValueError(f"pha {tuple(pha.shape)} must match bgr {tuple(bgr.shape)} in N, H, W")
    _check_p(p)
    lo, hi = strength
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"shadow strength must be (min, max) with 0 <= min <= max <= 1, got {strength!r}")
    idx = _chosen(bgr.shape[0], p, generator, bgr.device)
    if not idx.numel():
        return bgr.clone()
    h, w = bgr.shape[2:]
    n = idx.numel()
    shadow = pha[idx].float()  # built in float32: half precision overflows in the blur
    factor = min(1.0, _SHADOW_WORK_SIZE / max(h, w))
    sh, sw = max(1, round(h * factor)), max(1, round(w * factor))
    if (sh, sw) != (h, w):
        shadow = F.interpolate(shadow, size=(sh, sw), mode="area")
    grid = _random_affine_grid(
        n, sh, sw, degrees=SHADOW_DEGREES, translate=SHADOW_TRANSLATE, scale=SHADOW_SCALE,
        shear=SHADOW_SHEAR, generator=generator, device=bgr.device, dtype=shadow.dtype,
    )
    shadow = _warp(shadow, grid, "zeros")
    sizes = _uniform(n, SHADOW_BLUR[0], SHADOW_BLUR[1], generator, torch.device("cpu")) * max(sh, sw) / 512
    shadow = torch.cat([box_blur(shadow[i : i + 1], int(k) // 2 * 2 + 1) for i, k in enumerate(sizes.tolist())])
    if (sh, sw) != (h, w):
        shadow = F.interpolate(shadow, size=(h, w), mode="bilinear", align_corners=False)
    density = _uniform(n, lo, hi, generator, bgr.device)
    shadow = (shadow.clamp(0, 1) * density[:, None, None, None]).clamp(0, 1)
    return _apply(bgr, idx, lambda b: b.float() * (1 - shadow))


def add_noise(
    x: torch.Tensor, generator: torch.Generator | None = None, std_max: float = 0.03, p: float = 1.0
) -> torch.Tensor:
    """Add Gaussian sensor noise of a random standard deviation in ``[0, std_max]`` per sample, then clamp.

    Args:
        x: images ``(N, C, H, W)`` in ``[0, 1]``.
        generator: random source; ``None`` uses the global RNG.
        std_max: the largest standard deviation (BGMv2: 0.03).
        p: probability that each sample gets noise.

    Returns:
        ``(N, C, H, W)`` in ``[0, 1]``.
    """
    _check_images(x, "x", None)
    _check_p(p)
    if std_max < 0:
        raise ValueError(f"std_max must be >= 0, got {std_max}")
    idx = _chosen(x.shape[0], p, generator, x.device)

    def noisy(sub: torch.Tensor) -> torch.Tensor:
        std = _uniform(sub.shape[0], 0.0, std_max, generator, x.device)
        gdev = generator.device if generator is not None else x.device
        noise = torch.randn(sub.shape, generator=generator, device=gdev).to(x.device)
        return (sub.float() + noise * std[:, None, None, None]).clamp(0, 1)

    return _apply(x, idx, noisy)


def _hue_rotation(theta: torch.Tensor) -> torch.Tensor:
    """``(n, 3, 3)`` RGB matrices rotating colours by ``theta`` radians about the grey axis (keeps greys)."""
    c = 1.0 / math.sqrt(3.0)
    k = torch.full((3,), c, device=theta.device)
    kx = torch.tensor([[0.0, -c, c], [c, 0.0, -c], [-c, c, 0.0]], device=theta.device)  # cross-product matrix of k
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    eye = torch.eye(3, device=theta.device)
    return cos * eye + sin * kx + (1 - cos) * torch.outer(k, k)


def jitter_background_colour(
    bgr: torch.Tensor, generator: torch.Generator | None = None, p: float = 1.0
) -> torch.Tensor:
    """Small exposure / white-balance drift, as in a background shot taken at another moment.

    Per sample, in this order: brightness × U(0.85, 1.15); contrast U(0.85, 1.15) about the image's mean
    luma; saturation U(0.85, 1.15) about each pixel's luma; hue rotated by up to ±0.05 of a turn (a
    rotation about the grey axis of RGB, so greys stay grey); gamma U(0.9, 1.1); clamped to ``[0, 1]``.
    (BGMv2 uses a colour jitter of 0.18 / 0.18 / 0.18 / 0.1.)

    Args:
        bgr: images ``(N, 3, H, W)`` in ``[0, 1]``.
        generator: random source; ``None`` uses the global RNG.
        p: probability that each sample is changed.

    Returns:
        ``(N, 3, H, W)`` in ``[0, 1]``.
    """
    _check_images(bgr, "bgr")
    _check_p(p)
    idx = _chosen(bgr.shape[0], p, generator, bgr.device)

    def jitter(x: torch.Tensor) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        b = _uniform(n, 1 - COLOUR_BRIGHTNESS, 1 + COLOUR_BRIGHTNESS, generator, dev)
        c = _uniform(n, 1 - COLOUR_CONTRAST, 1 + COLOUR_CONTRAST, generator, dev)
        s = _uniform(n, 1 - COLOUR_SATURATION, 1 + COLOUR_SATURATION, generator, dev)
        hue = _uniform(n, -COLOUR_HUE, COLOUR_HUE, generator, dev) * (2 * math.pi)
        gamma = _uniform(n, COLOUR_GAMMA[0], COLOUR_GAMMA[1], generator, dev)
        luma_w = torch.tensor(_LUMA, device=dev, dtype=torch.float32)[None, :, None, None]
        y = x.float() * b[:, None, None, None]
        luma = (y * luma_w).sum(1, keepdim=True)
        y = (y - luma.mean((2, 3), keepdim=True)) * c[:, None, None, None] + luma.mean((2, 3), keepdim=True)
        luma = (y * luma_w).sum(1, keepdim=True)
        y = (y - luma) * s[:, None, None, None] + luma
        y = torch.einsum("nij,njhw->nihw", _hue_rotation(hue), y)
        return y.clamp(0, 1).pow(gamma[:, None, None, None])

    return _apply(bgr, idx, jitter)


def misalign_background(
    bgr: torch.Tensor, generator: torch.Generator | None = None, p: float | torch.Tensor = 1.0,
    perspective: float = 0.0, strength: float = 1.0,
) -> torch.Tensor:
    """A small random camera movement: affine warp with reflected borders (no black edges).

    Per sample: rotation ±1.5°, shift ±1.5 % of width / height, scale 0.98–1.02, shear ±1°, about the
    image centre, bilinear resampling. (BGMv2: rotation ±1°, shift ±1 %.) With ``perspective > 0`` the warp
    also tilts: a homography whose last row is ``(px, py, 1)`` in normalised coordinates, ``px, py`` uniform in
    ``±perspective`` (0.01 moves a corner by about 1 % of the size). ``strength`` multiplies every range
    (rotation, shift, shear and the scale's distance from 1): a training crop of 640 pixels moved by 1.5 % moves
    by 10 pixels, while a 1920-pixel frame moved by 1 % moves by 19, so training at a size below the one run on
    needs a stronger movement to cover it in pixels.

    Args:
        bgr: images ``(N, C, H, W)`` in ``[0, 1]``.
        generator: random source; ``None`` uses the global RNG.
        p: probability that each sample is moved, or a tensor ``(N,)`` of one probability per sample.
        perspective: the largest projective coefficient (0: affine only, as BGMv2).

    Returns:
        ``(N, C, H, W)`` in ``[0, 1]``.
    """
    _check_images(bgr, "bgr", None)
    _check_p(p)
    if not 0 <= strength <= 10:
        raise ValueError(f"strength must be in [0, 10], got {strength}")
    idx = _chosen(bgr.shape[0], p, generator, bgr.device)
    h, w = bgr.shape[2:]
    scale = tuple(1 + strength * (s - 1) for s in MISALIGN_SCALE)

    def move(x: torch.Tensor) -> torch.Tensor:
        grid = _random_affine_grid(
            x.shape[0], h, w, degrees=strength * MISALIGN_DEGREES, translate=strength * MISALIGN_TRANSLATE,
            scale=scale, shear=strength * MISALIGN_SHEAR, generator=generator, device=x.device, dtype=torch.float32,
        )
        if perspective > 0:
            tilt = _uniform(2 * x.shape[0], -perspective, perspective, generator, x.device).view(-1, 1, 1, 2)
            base = F.affine_grid(torch.eye(2, 3, device=x.device).expand(x.shape[0], 2, 3), [x.shape[0], 1, h, w],
                                 align_corners=False)
            grid = grid / (1 + (base * tilt).sum(-1, keepdim=True))
        return _warp(x.float(), grid, "reflection").clamp(0, 1)

    return _apply(bgr, idx, move)


def compress(
    x: torch.Tensor, generator: torch.Generator | None = None, quality: tuple[int, int] = (30, 95), p: float = 1.0
) -> torch.Tensor:
    """Lossy JPEG compression at a random quality per sample (block artefacts, ringing, chroma subsampling).

    Frames from phones, webcams and H.264/HEVC video carry 8×8-block artefacts of this kind; each image of a pair
    is compressed on its own, so they do not cancel in ``src − bgr``. Runs through torchvision's JPEG codec on the
    CPU (the result is moved back to ``x``'s device).

    Args:
        x: images ``(N, 3, H, W)`` in ``[0, 1]``.
        generator: random source; ``None`` uses the global RNG.
        quality: ``[low, high]`` JPEG quality (1–100), drawn uniformly per sample.
        p: probability that each sample is compressed.

    Returns:
        ``(N, 3, H, W)`` in ``[0, 1]``, quantised to 1/255.
    """
    from torchvision.io import decode_jpeg, encode_jpeg

    _check_images(x, "x")
    _check_p(p)
    if not 1 <= quality[0] <= quality[1] <= 100:
        raise ValueError(f"quality must be [low, high] within 1..100, got {quality}")
    idx = _chosen(x.shape[0], p, generator, x.device)

    def lossy(sub: torch.Tensor) -> torch.Tensor:
        q = _uniform(sub.shape[0], quality[0], quality[1] + 1, generator, torch.device("cpu")).floor().clamp(max=100)
        u8 = (sub.float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
        out = [decode_jpeg(encode_jpeg(img, quality=int(qi))) for img, qi in zip(u8, q.tolist())]
        return (torch.stack(out).float() / 255).to(x.device)

    return _apply(x, idx, lossy)


def shift_white_balance(
    bgr: torch.Tensor, generator: torch.Generator | None = None, amount: float = 0.08, p: float = 1.0
) -> torch.Tensor:
    """White-balance drift: each colour channel gets its own gain in ``[1 − amount, 1 + amount]``.

    The gains are normalised so that a mid grey keeps its luma: only the colour cast changes (exposure is
    :func:`jitter_background_colour`'s job).

    Args:
        bgr: images ``(N, 3, H, W)`` in ``[0, 1]``.
        generator: random source; ``None`` uses the global RNG.
        amount: the largest relative change of one channel's gain.
        p: probability that each sample is changed.

    Returns:
        ``(N, 3, H, W)`` in ``[0, 1]``.
    """
    _check_images(bgr, "bgr")
    _check_p(p)
    if not 0 <= amount < 1:
        raise ValueError(f"amount must be in [0, 1), got {amount}")
    idx = _chosen(bgr.shape[0], p, generator, bgr.device)

    def cast(x: torch.Tensor) -> torch.Tensor:
        gains = _uniform(x.shape[0] * 3, 1 - amount, 1 + amount, generator, x.device).view(-1, 3)
        luma = torch.tensor(_LUMA, device=x.device)
        gains = gains / (gains * luma).sum(1, keepdim=True)
        return (x.float() * gains[:, :, None, None]).clamp(0, 1)

    return _apply(bgr, idx, cast)


def camouflage(
    bgr: torch.Tensor, fgr: torch.Tensor, pha: torch.Tensor, generator: torch.Generator | None = None,
    strength: tuple[float, float] = (0.5, 1.0), p: float = 1.0,
) -> torch.Tensor:
    """Tint a clean background towards the subject's own colours: the hard case of clothing like the scene.

    Per sample and channel the background is multiplied by ``(mean_fgr / mean_bgr) ** s`` with ``s`` uniform in
    ``strength`` (``mean_fgr`` weighted by alpha), so ``s = 1`` gives the background the subject's mean colour
    while keeping its texture. Use it on the clean background before compositing (both shots share it).

    Args:
        bgr: clean backgrounds ``(N, 3, H, W)`` in ``[0, 1]``.
        fgr: foregrounds ``(N, 3, H, W)`` in ``[0, 1]``.
        pha: alpha ``(N, 1, H, W)`` in ``[0, 1]``.
        generator: random source; ``None`` uses the global RNG.
        strength: ``[low, high]`` range of ``s``.
        p: probability that each sample is tinted.

    Returns:
        ``(N, 3, H, W)`` in ``[0, 1]``.
    """
    composite(fgr, pha, bgr)  # shape checks
    _check_p(p)
    idx = _chosen(bgr.shape[0], p, generator, bgr.device)
    eps = 1e-3
    mass = pha.float().sum((2, 3)) + eps  # (N, 1)
    target = (fgr.float() * pha.float()).sum((2, 3)) / mass + eps  # (N, 3)
    current = bgr.float().mean((2, 3)) + eps
    ratio = (target / current).clamp(0.2, 5.0)

    def tint(x: torch.Tensor) -> torch.Tensor:
        s = _uniform(x.shape[0], strength[0], strength[1], generator, x.device)
        gain = ratio[idx].pow(s[:, None])
        return (x.float() * gain[:, :, None, None]).clamp(0, 1)

    return _apply(bgr, idx, tint)


def motion_blur(
    fgr: torch.Tensor, pha: torch.Tensor, generator: torch.Generator | None = None,
    length: tuple[float, float] = (3.0, 15.0), p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blur a moving subject along a random direction: a line kernel on premultiplied colour and on alpha.

    The length is in pixels at 512 px (scaled with the image's long side). Returns the blurred ``fgr`` (colour
    un-premultiplied, kept where alpha is 0) and ``pha``; use both as the training targets.

    Args:
        fgr: foregrounds ``(N, 3, H, W)`` in ``[0, 1]``.
        pha: alpha ``(N, 1, H, W)`` in ``[0, 1]``.
        generator: random source; ``None`` uses the global RNG.
        length: ``[low, high]`` blur length at 512 px.
        p: probability that each sample is blurred.

    Returns:
        ``(fgr, pha)``, shapes as given, in ``[0, 1]``.
    """
    _check_images(fgr, "fgr")
    _check_images(pha, "pha", 1)
    _check_p(p)
    idx = _chosen(fgr.shape[0], p, generator, fgr.device)
    if not idx.numel():
        return fgr.clone(), pha.clone()
    h, w = fgr.shape[2:]
    n = idx.numel()
    lengths = _uniform(n, length[0], length[1], generator, torch.device("cpu")) * max(h, w) / 512
    angles = _uniform(n, 0.0, math.pi, generator, torch.device("cpu"))
    out_f, out_p = fgr.clone(), pha.clone()
    for k, i in enumerate(idx.tolist()):
        size = max(3, int(lengths[k]) // 2 * 2 + 1)
        r = torch.arange(size, dtype=torch.float32) - size // 2
        yy, xx = torch.meshgrid(r, r, indexing="ij")
        c, s = math.cos(angles[k]), math.sin(angles[k])
        # distance of each tap from the line through the centre, and how far along it
        across = (xx * s - yy * c).abs()
        along = (xx * c + yy * s).abs()
        kernel = ((1 - across).clamp(min=0) * (along <= size / 2).float())
        kernel = (kernel / kernel.sum()).to(fgr.device)[None, None]
        a = pha[i : i + 1].float()
        stack = torch.cat([fgr[i : i + 1].float() * a, a], 1)
        blurred = F.conv2d(F.pad(stack, [size // 2] * 4, mode="replicate"), kernel.expand(4, 1, -1, -1), groups=4)
        new_a = blurred[:, 3:].clamp(0, 1)
        colour = torch.where(new_a > 1e-4, blurred[:, :3] / new_a.clamp(min=1e-4), fgr[i : i + 1].float())
        out_f[i], out_p[i] = colour.clamp(0, 1)[0].to(fgr.dtype), new_a[0].to(pha.dtype)
    return out_f, out_p


def make_pair(
    fgr: torch.Tensor,
    pha: torch.Tensor,
    bgr: torch.Tensor,
    generator: torch.Generator | None = None,
    shadow_p: float = 0.3,
    noise_p: float = 0.4,
    colour_p: float = 0.8,
    misalign_p: float | torch.Tensor = 0.3,
    *,
    camouflage_p: float = 0.0,
    white_balance_p: float = 0.0,
    compress_p: float = 0.0,
    perspective: float = 0.0,
    misalign_strength: float = 1.0,
    shadow_strength: tuple[float, float] = SHADOW_STRENGTH,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A realistic (source, background shot) pair from a foreground, its alpha and a clean background.

    As in the BGMv2 training code: ``src = composite(fgr, pha, cast_shadow(bgr))``; then, for the same
    samples (probability ``noise_p``), independent noise is added to ``src`` and to the background shot;
    the background shot then gets :func:`jitter_background_colour` (``colour_p``) and
    :func:`misalign_background` (``misalign_p``). The defaults are BGMv2's probabilities.

    Beyond BGMv2 (all off by default): :func:`camouflage` tints the clean background towards the subject's
    colours first (``camouflage_p``); :func:`shift_white_balance` gives the shot a colour cast
    (``white_balance_p``, after the colour jitter); the misalignment tilts by up to ``perspective`` and its
    ranges are multiplied by ``misalign_strength`` (see :func:`misalign_background`); the shadow's densest
    darkening is drawn from ``shadow_strength`` (see :func:`cast_shadow`); last,
    source and shot are each JPEG-compressed on their own (``compress_p`` per image).

    Args:
        fgr: foreground ``(N, 3, H, W)`` in ``[0, 1]``.
        pha: alpha ``(N, 1, H, W)`` in ``[0, 1]``.
        bgr: clean background ``(N, 3, H, W)`` in ``[0, 1]``.
        generator: random source; ``None`` uses the global RNG.
        shadow_p, noise_p, colour_p, misalign_p: per-sample probabilities of each perturbation; ``misalign_p``
            may also be a tensor ``(N,)`` of one probability per sample.

    Returns:
        ``(src, bgr_shot)``, both ``(N, 3, H, W)`` in ``[0, 1]``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> fgr, pha, bgr = torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32), torch.rand(2, 3, 32, 32)
        >>> src, shot = make_pair(fgr, pha, bgr, generator=g)
        >>> src.shape, shot.shape
        (torch.Size([2, 3, 32, 32]), torch.Size([2, 3, 32, 32]))
    """
    probabilities = {"shadow_p": shadow_p, "noise_p": noise_p, "colour_p": colour_p, "misalign_p": misalign_p,
                     "camouflage_p": camouflage_p, "white_balance_p": white_balance_p, "compress_p": compress_p}
    for name, value in probabilities.items():
        _check_p(value, name)
    if perspective < 0:
        raise ValueError(f"perspective must be >= 0, got {perspective}")
    composite(fgr, pha, bgr)  # shape checks
    if camouflage_p > 0:
        bgr = camouflage(bgr, fgr, pha, generator, p=camouflage_p)
    src = composite(fgr, pha, cast_shadow(bgr, pha, generator, p=shadow_p, strength=shadow_strength))
    idx = _chosen(src.shape[0], noise_p, generator, src.device)
    src = _apply(src, idx, lambda x: add_noise(x, generator))
    shot = _apply(bgr, idx, lambda x: add_noise(x, generator))
    shot = jitter_background_colour(shot, generator, p=colour_p)
    if white_balance_p > 0:
        shot = shift_white_balance(shot, generator, p=white_balance_p)
    shot = misalign_background(shot, generator, p=misalign_p, perspective=perspective, strength=misalign_strength)
    if compress_p > 0:
        src = compress(src, generator, p=compress_p)
        shot = compress(shot, generator, p=compress_p)
    return src, shot
