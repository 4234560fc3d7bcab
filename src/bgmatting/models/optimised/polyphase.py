"""Convolutions of an image upsampled ×2 computed at the image's own resolution, one conv per output phase
(row and column parity), interleaved by ``pixel_shuffle``: no upsampled copy is made."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .winograd import winograd_conv

# Bilinear 2x upsampling (align_corners=False) seen from a 3x3 conv on its output: for output phase a (row 2i + a),
# _UP2_TAPS[a][d, e] is the weight of input row i + e - 1 in the upsampled row 2i + a + d - 1.
_UP2_TAPS = torch.tensor([[[0.75, 0.25, 0.0], [0.25, 0.75, 0.0], [0.0, 0.75, 0.25]],
                          [[0.25, 0.75, 0.0], [0.0, 0.75, 0.25], [0.0, 0.25, 0.75]]], dtype=torch.float64)


def up2_conv3x3(x: torch.Tensor, weight: torch.Tensor, polyphase: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(F.interpolate(x, scale 2, bilinear), weight, padding=1)`` without the upsampled image.

    Upsampling and the conv are both linear, so each of the 4 output phases (row and column parity) is a 3×3 conv
    of ``x`` itself (edge-replicated, as the upsampling clamps at the border): one conv with 4 × ``C_out``
    channels at the input's resolution (:func:`up2_polyphase` makes its weight; pass it as ``polyphase`` to reuse
    it), interleaved by ``pixel_shuffle``. The one-pixel border of the output, where the conv's zero padding
    differs from the edge-replicated upsampling, is corrected from thin strips. ``x`` ``(B, C, h, w)`` with
    ``h, w >= 2`` → ``(B, C_out, 2h, 2w)``; within float rounding of the direct computation.
    """
    B, C, h, w = x.shape
    if polyphase is None:
        polyphase = up2_polyphase(weight)
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    out = F.pixel_shuffle(winograd_conv(xp, polyphase.to(xp.dtype)), 2)  # (B, C_out, 2h, 2w), borders still wrong
    rows, cols = up2_border_corrections(x, weight)
    out[:, :, :1] -= rows[:, :, :1]
    out[:, :, -1:] -= rows[:, :, 1:]
    out[:, :, 1:-1, :1] -= cols[..., :1]
    out[:, :, 1:-1, -1:] -= cols[..., 1:]
    return out


def up2_border_corrections(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`up2_conv3x3`'s polyphase conv of the edge-replicated ``x`` ``(B, C, h, w)`` gets wrong on the
    one-pixel border of its ``(2h, 2w)`` output (the direct conv reads zeros beyond the upsampled image, the
    polyphase one its edge-replicated extension), to subtract from it: ``rows`` ``(B, C_out, 2, 2w)`` for the
    first and last output rows, ``cols`` ``(B, C_out, 2h - 2, 2)`` for the first and last columns between them.
    """
    B, C, h, w = x.shape
    H, W = 2 * h, 2 * w
    wt = weight.to(x.dtype)
    # The conv read an upsampled image extended by edge replication: frame[m, n] = up[clamp(m), clamp(n)].
    # It should have read zeros there: what the frame contributed to the border outputs is the correction.
    rows = []
    for sel, first, frame_row in ((slice(0, 2), True, 0), (slice(h - 2, h), False, 2)):
        up = F.interpolate(x[:, :, sel], size=(4, W), mode="bilinear", align_corners=False)
        up = up[:, :, :2] if first else up[:, :, 2:]  # upsampled rows 0, 1 or H-2, H-1
        strip = x.new_zeros(B, C, 3, W + 2)
        strip[:, :, frame_row, 1:-1] = up[:, :, 0 if first else 1]
        inner = slice(1, 3) if first else slice(0, 2)
        strip[:, :, inner, 0], strip[:, :, inner, -1] = up[..., 0], up[..., -1]
        strip[:, :, frame_row, 0], strip[:, :, frame_row, -1] = strip[:, :, frame_row, 1], strip[:, :, frame_row, -2]
        rows.append(F.conv2d(strip, wt))
    cols = []
    for sel, first, frame_col in ((slice(0, 2), True, 0), (slice(w - 2, w), False, 2)):
        up = F.interpolate(x[:, :, :, sel], size=(H, 4), mode="bilinear", align_corners=False)
        strip = x.new_zeros(B, C, H, 3)
        strip[:, :, :, frame_col] = up[..., 0 if first else 3]
        cols.append(F.conv2d(strip, wt))  # rows 1 to H-2 (rows 0 and H-1 are in rows)
    return torch.cat(rows, dim=2), torch.cat(cols, dim=3)


# Nearest 2x upsampling seen from a 3x3 conv on its output: for output phase a, _NEAREST2_TAPS[a][d, e] says
# whether tap d (row 2i + a + d - 1 of the upsampled image) reads input row i + e.
_NEAREST2_TAPS = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]],
                               [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]], dtype=torch.float64)


def nearest2_polyphase(weight: torch.Tensor) -> torch.Tensor:
    """``(4 C_out, C_in, 2, 2)``: a valid 3×3 conv by ``weight`` of an image upsampled ×2 (nearest) is
    ``pixel_shuffle(conv2d(image, this), 2)``, one 2×2 conv per output phase (channel ``4 o + 2 a + b``)."""
    return _polyphase(weight, _NEAREST2_TAPS)


def up2_polyphase(weight: torch.Tensor) -> torch.Tensor:
    """The weight of :func:`up2_conv3x3`'s conv: ``(4 C_out, C_in, 3, 3)``, channel ``4 o + 2 a + b`` for output
    channel ``o`` at row phase ``a`` and column phase ``b`` (the order ``pixel_shuffle`` reads)."""
    return _polyphase(weight, _UP2_TAPS)


def _polyphase(weight: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """The per-phase kernels of a 3×3 ``weight`` applied after an upsampling ×2 whose rows are ``taps``
    ``(2, 3, k)`` (phase, conv tap, input offset), as one ``(4 C_out, C_in, k, k)`` weight for ``pixel_shuffle``."""
    t = taps.to(weight.device)
    k = torch.einsum("ade,bgf,ocdg->oabcef", t, t, weight.to(torch.float64))
    return k.reshape(-1, weight.shape[1], t.shape[2], t.shape[2]).to(weight.dtype)
