"""Inference-only twins of the networks: the same outputs as ``MattingBase``/``MattingRefine``, with less work.

:class:`FastMatting` wraps a trained model (it is copied, never changed) and computes what the model computes,
within float rounding (≤ 1e-4 in fp32), by doing less:

* **BatchNorm folded** into the convolution before it (eval mode: BN is a per-channel affine map).
* **channels_last** memory layout for the base network on the CPU (oneDNN's fast path for depthwise convs).
* **No full-resolution intermediates in the refiner**: the original resizes ``[hid, pha, fgr]`` (36 channels) and
  ``[src, bgr]`` to 1/2 resolution and concatenates ``[src, bgr]`` at full resolution, then crops the selected
  patches out of those images. Here the crops are made straight from the inputs:

  - the 1/2-resolution ``src``/``bgr`` crops are 2×2 means of full-resolution windows (bilinear downsampling by
    exactly 2 with ``align_corners=False`` *is* the 2×2 mean), and the stage-2 crops are parts of the same windows;
  - the 1/2-resolution coarse crops are resampled from a small window of the coarse maps by two small matrix
    products (the bilinear weights ``F.interpolate`` uses, clamped at the border as it does);
  - refined patches are written in place into the upsampled coarse result; on CUDA, one Triton kernel upsamples,
    pastes, clamps and adds ``src`` in a single pass (:mod:`bgmatting.models.compose`).
* **The refiner where the patches are**, one of four ways, the cheapest for each call's selection by a cost model
  (:meth:`FastMatting.choose_path`: the pixels each way computes, counted from the selection, times per-pixel
  costs measured per device, :data:`PATH_COSTS`):

  - ``tiles``: selected patches cluster along the subject's outline and their crops overlap, so both stages run
    densely on 4×4-patch tiles that hold any selected patch, and each patch takes its part of its tile's result;
  - ``patches``: one crop per patch, for patches too scattered to share tiles;
  - ``dense``/``full``: for patches spread over the whole frame, stage 1 runs on the whole image (the refiner's
    full mode: valid convs on the same zero-padded image give each patch what its own crops give), then stage 2
    per patch or on the whole image too.

  Stage 2's first conv reads stage 1's output upsampled ×2 (nearest): it is computed as one 2×2 conv per output
  phase at half resolution (:func:`nearest2_polyphase`), with no upsampled copy.
* **Hidden channels only where they are read**: the decoder's last convolution (a third of MobileNetV2's base
  network at HD) makes 5 output channels that are needed everywhere (alpha, foreground, error) and 32 hidden ones
  that only the refiner reads, around the selected patches. The 5 are computed densely; the 32 after the
  selection, on the 4×4 blocks of the coarse grid that the refiner's crops touch (each from its window of the
  conv's input; one conv per output phase where the last upsampling is by exactly 2), kept compactly
  (:class:`_BlockStore`), or on the whole grid when the blocks would cost more.
* **Winograd convolutions** (NNPACK) for the decoder's first three 3×3 convs on the CPU: half the time of oneDNN's
  or ONNX Runtime's, at a rounding error of about 1e-5 (:class:`WinogradConv2d`).
* **The last conv's 5 output channels without the upsampled image**: where the decoder's last upsampling is by
  exactly 2, the conv of the upsampled features is computed at their own resolution, one conv per output phase
  (:func:`up2_conv3x3`: a third of the time of upsample, concatenate and convolve).
* **Static shapes** (``static=True``, sampling mode): always ``sample_pixels // 16`` patches per image, found with
  top-k and no ``nonzero`` (no host synchronisation), so the whole pass can be captured in a CUDA graph; the
  refiner's way is chosen from the shapes alone (no tiles, whose number depends on the data). With
  ``prevent_oversampling`` the patches whose error is 0 are still computed but not pasted, which gives the same
  result as dropping them.

``encoder`` swaps the backbone and ASPP for another engine that computes the same function (ONNX Runtime in
:mod:`bgmatting.backends`, faster than PyTorch there): a callable ``(src_sm, bgr_sm) -> (aspp(x4), x3, x2, x1)``.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .compose import compose
from .matting import MattingBase, MattingRefine, _check_pair

TILE = 4  # patches per side of the tiles both stages of the refiner run on
HID_BLOCK = 4  # side of the blocks of the coarse grid on which the hidden channels are computed


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm2d into the Conv2d that feeds it, in place; returns ``module``.

    Covers both ways the networks pair them: consecutive ``(Conv2d, BatchNorm2d)`` in an ``nn.Sequential``
    (torchvision's MobileNetV2 and ASPP, ResNet downsample) and attributes ``convN``/``bnN`` of one module
    (ResNet stem and bottlenecks, the decoder, the refiner). The BatchNorm becomes ``nn.Identity``.
    """
    for child in list(module.modules()):
        if isinstance(child, nn.Sequential):
            items = list(child)
            for i in range(len(items) - 1):
                conv, bn = items[i], items[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    child[i] = fuse_conv_bn_eval(conv, bn)
                    child[i + 1] = nn.Identity()
        for suffix in ("", "1", "2", "3", "4"):
            conv, bn = getattr(child, "conv" + suffix, None), getattr(child, "bn" + suffix, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(child, "conv" + suffix, fuse_conv_bn_eval(conv, bn))
                setattr(child, "bn" + suffix, nn.Identity())
    return module


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


def _window_len(size: int, n_in: int, n_out: int) -> int:
    """Input pixels that a crop of ``size`` output pixels can touch, on an axis resized from ``n_in`` to ``n_out``."""
    return int(math.ceil(size * n_in / n_out)) + 2


def _source_pos(pos: torch.Tensor, n_in: int, n_out: int) -> torch.Tensor:
    """Where output pixels ``pos`` sample the input (float64), as ``F.interpolate`` computes it."""
    return ((pos.to(torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)


def _interp_matrix(start: torch.Tensor, size: int, n_in: int, n_out: int, window: torch.Tensor) -> torch.Tensor:
    """1-D bilinear resampling as a matrix, per crop.

    For crops of ``size`` pixels starting at ``start`` ``(N,)`` on an axis resized from ``n_in`` to ``n_out``
    (``F.interpolate``, ``align_corners=False``) that read the input pixels ``window`` ``(N, k)``
    (:func:`_crop_window`), returns ``M`` ``(N, size, k)`` such that crop pixel ``a`` =
    ``sum_j M[n, a, j] * input[window[n, 0] + j]`` (input indices clamped to ``n_in - 1``). Crop pixels outside
    ``[0, n_out)`` get a zero row (zero padding).
    """
    pos = start[:, None] + torch.arange(size, device=start.device)  # (N, size) output pixels
    src = _source_pos(pos, n_in, n_out)
    i0 = src.floor().long().clamp(max=n_in - 1)
    w1 = (src - i0).to(torch.float32)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    first, k = window[:, 0], window.shape[1]
    inside = ((pos >= 0) & (pos < n_out)).to(torch.float32)
    m = torch.zeros(pos.shape[0], size, k, device=start.device)
    m.scatter_add_(2, (i0 - first[:, None])[..., None], ((1 - w1) * inside)[..., None])
    m.scatter_add_(2, (i1 - first[:, None])[..., None], (w1 * inside)[..., None])
    return m


def _crop_window(start: torch.Tensor, size: int, n_in: int, n_out: int, resized: bool) -> torch.Tensor:
    """The input pixels ``(N, k)`` (clamped into ``[0, n_in)``) that :func:`_fetched_crops` reads for crops of
    ``size`` pixels starting at ``start``, on an axis of ``n_in`` pixels resized to ``n_out``: the crop itself
    when the image is not ``resized``, else the window that :func:`_interp_matrix` resamples."""
    if not resized:
        return (start[:, None] + torch.arange(size, device=start.device)).clamp(0, n_in - 1)
    k = _window_len(size, n_in, n_out)
    first = _source_pos(start, n_in, n_out).floor().long().clamp(max=n_in - 1)
    return (first[:, None] + torch.arange(k, device=start.device)).clamp(max=n_in - 1)


Fetch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _sample_crops(x: torch.Tensor, ib: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                  out_size: tuple[int, int], size: int) -> torch.Tensor:
    """Crops of ``x`` ``(B, C, h, w)`` as if it were first resized to ``out_size`` (bilinear, ``align_corners=False``).

    Returns ``(N, C, size, size)`` (a channels-last view): the pixels ``rows[n] + a``, ``cols[n] + b``
    (``0 <= a, b < size``) of the resized image of batch item ``ib[n]``; pixels outside it are 0 (the refiner's
    zero padding). Only the crops are computed: a small window of ``x`` per crop, resampled by two matrix products.
    """
    def fetch(ib_, ry, rx):
        return x.permute(0, 2, 3, 1)[ib_[:, None, None], ry[:, :, None], rx[:, None, :]]

    return _fetched_crops(fetch, tuple(x.shape[2:]), ib, rows, cols, out_size, size)


def _fetched_crops(fetch: Fetch, in_size: tuple[int, int], ib: torch.Tensor, rows: torch.Tensor,
                   cols: torch.Tensor, out_size: tuple[int, int], size: int) -> torch.Tensor:
    """:func:`_sample_crops` of an image of ``in_size`` ``(h, w)`` that is read through ``fetch(ib, ry, rx)``:
    ``ry`` ``(N, k_y)`` and ``rx`` ``(N, k_x)`` are pixel rows and columns (inside the image) of item ``ib`` ``(N,)``;
    it returns their ``(N, k_y, k_x, C)`` values. An axis that is not resized is cropped without resampling."""
    h, w = in_size
    resized = (h, w) != tuple(out_size)
    ry, rx = _crop_window(rows, size, h, out_size[0], resized), _crop_window(cols, size, w, out_size[1], resized)
    win = fetch(ib, ry, rx)  # (N, k_y, k_x, C)
    if not resized:  # the crops themselves, zero outside the image
        off = torch.arange(size, device=ib.device)
        ry, rx = rows[:, None] + off, cols[:, None] + off
        inside = ((ry >= 0) & (ry < h))[:, :, None] & ((rx >= 0) & (rx < w))[:, None, :]
        return (win * inside[..., None].to(win.dtype)).permute(0, 3, 1, 2)
    k_y, k_x = ry.shape[1], rx.shape[1]
    my, mx = _interp_matrix(rows, size, h, out_size[0], ry), _interp_matrix(cols, size, w, out_size[1], rx)
    n, c = win.shape[0], win.shape[3]
    t = torch.bmm(my.to(win.dtype), win.reshape(n, k_y, k_x * c)).view(n, size, k_x, c)  # rows resampled
    out = torch.matmul(mx.to(win.dtype)[:, None], t)  # (N, size, size, C): columns resampled
    return out.permute(0, 3, 1, 2)


class _BlockStore:
    """An image of ``image_size`` ``(h, w)`` of which only some ``bs × bs`` blocks are known, stored compactly.

    ``store`` ``(1 + nb, bs, bs, C)`` holds zeros (block 0) and the known blocks; ``table`` ``(B, nby, nbx)``
    gives each block of the image its place in ``store`` (0: not known, reads as zeros). ``fetch`` reads pixels
    as :func:`_fetched_crops` asks.
    """

    def __init__(self, store: torch.Tensor, table: torch.Tensor, image_size: tuple[int, int]):
        self.store, self.table = store, table
        self.h, self.w = image_size
        self.bs = store.shape[1]

    def fetch(self, ib: torch.Tensor, ry: torch.Tensor, rx: torch.Tensor) -> torch.Tensor:
        bs = self.bs
        ry, rx = ry[:, :, None], rx[:, None, :]
        return self.store[self.table[ib[:, None, None], ry // bs, rx // bs], ry % bs, rx % bs]

    def dense(self) -> torch.Tensor:
        """The whole image ``(B, C, h, w)``, zeros where no block is known (for tests)."""
        B, nby, nbx = self.table.shape
        img = self.store[self.table]  # (B, nby, nbx, bs, bs, C)
        img = img.permute(0, 5, 1, 3, 2, 4).reshape(B, -1, nby * self.bs, nbx * self.bs)
        return img[:, :, :self.h, :self.w]


def _add_on_block_edge(blocks: torch.Tensor, ids: torch.Tensor, values: torch.Tensor, row: int | None = None,
                       col: int | None = None) -> None:
    """Add ``values`` ``(B, C, n, bs)`` to one row (or column) of the blocks ``ids`` ``(B, n)`` of ``blocks``
    ``(1 + nb, C, bs, bs)``, in place; id 0 (block 0, the zeros of a :class:`_BlockStore`) stays zero."""
    B, C, n, bs = values.shape
    upd = values.permute(0, 2, 1, 3).reshape(B * n, C, bs) * (ids > 0).reshape(-1, 1, 1).to(values.dtype)
    full = blocks.new_zeros(B * n, C, bs, bs)
    if row is not None:
        full[:, :, row, :] = upd
    else:
        full[:, :, :, col] = upd
    blocks.index_put_((ids.reshape(-1),), full, accumulate=True)


def _windows(src: torch.Tensor, bgr: torch.Tensor, ib: torch.Tensor, top: torch.Tensor,
             left: torch.Tensor, size: int, margin: int) -> torch.Tensor:
    """``size × size`` windows of ``[src, bgr]`` at ``(top[n], left[n])`` of batch item ``ib[n]`` → ``(N, 6, size, size)``.

    Pixels outside the image are 0 (the refiner's zero padding). Every window must lie within ``margin`` pixels
    around the image. Where the windows cover a fifth of the images or more, they are views of ``[src, bgr]``
    padded by ``margin`` (one copy of the images), gathered whole; else they are gathered pixel by pixel.
    """
    B, _, H, W = src.shape
    if ib.shape[0] * size * size < B * H * W / 5:
        return _windows_by_pixel(src, bgr, ib, top, left, size)
    m = margin
    x = src.new_empty(B, 6, H + 2 * m, W + 2 * m)  # [src, bgr] in a zero frame, written once
    x[:, :3, m:m + H, m:m + W] = src
    x[:, 3:, m:m + H, m:m + W] = bgr
    if m:
        x[:, :, :m].zero_()
        x[:, :, m + H:].zero_()
        x[:, :, m:m + H, :m].zero_()
        x[:, :, m:m + H, m + W:].zero_()
    sb, sc, sh, sw = x.stride()
    view = x.as_strided((B, H + 2 * m - size + 1, W + 2 * m - size + 1, 6, size, size), (sb, sh, sw, sc, sh, sw))
    return view[ib, top + m, left + m]


def _windows_by_pixel(src: torch.Tensor, bgr: torch.Tensor, ib: torch.Tensor, top: torch.Tensor,
                      left: torch.Tensor, size: int) -> torch.Tensor:
    """:func:`_windows`, gathered pixel by pixel (rows and columns clamped into the image, then masked)."""
    _, _, H, W = src.shape
    off = torch.arange(size, device=src.device)
    ry, rx = top[:, None] + off, left[:, None] + off
    inside = ((ry >= 0) & (ry < H))[:, :, None] & ((rx >= 0) & (rx < W))[:, None, :]
    yy, xx = ry.clamp(0, H - 1)[:, :, None], rx.clamp(0, W - 1)[:, None, :]
    out = torch.cat([src.permute(0, 2, 3, 1)[ib[:, None, None], yy, xx],
                     bgr.permute(0, 2, 3, 1)[ib[:, None, None], yy, xx]], dim=3)  # (N, size, size, 6)
    return (out * inside[..., None].to(out.dtype)).permute(0, 3, 1, 2)


def nnpack_available() -> bool:
    """Whether this PyTorch has NNPACK (Winograd convolutions on the CPU)."""
    try:
        return bool(torch._nnpack_available())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without it
        return False


class WinogradConv2d(nn.Conv2d):
    """A 3×3, stride-1 ``Conv2d`` computed by NNPACK's Winograd convolution on the CPU in fp32 inference.

    On one wide image (the decoder's convolutions) it does about half of oneDNN's or ONNX Runtime's work, at a
    rounding error of about 1e-5 (fp32). Anywhere else (CUDA, other dtypes, autograd) it is a plain ``Conv2d``.
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "WinogradConv2d":
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
            raise ValueError("WinogradConv2d computes 3x3 convolutions with stride 1, dilation 1 and one group")
        new = cls(conv.in_channels, conv.out_channels, 3, padding=conv.padding, bias=True,
                  device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            new.bias.copy_(conv.bias if conv.bias is not None else torch.zeros_like(new.bias))
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return winograd_conv(x, self.weight, self.bias, self.padding)


_nnpack_failed = False  # set when NNPACK raised once: from then on oneDNN computes these convs


def winograd_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  padding=(0, 0)) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` (3×3, stride 1) by NNPACK's Winograd convolution where it
    can run (CPU, fp32, inference); elsewhere, or if NNPACK fails (a warning, once), by ``F.conv2d``."""
    global _nnpack_failed
    if (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not torch.is_grad_enabled() and not _nnpack_failed and nnpack_available()):
        b, w, pad = bias if bias is not None else x.new_zeros(weight.shape[0]), weight.contiguous(), list(padding)
        try:  # one image per call: NNPACK's batched algorithm is 1.1 to 2.7 times slower per image
            if x.shape[0] == 1:
                return torch._nnpack_spatial_convolution(x.contiguous(), w, b, pad)
            return torch.cat([torch._nnpack_spatial_convolution(xi.contiguous(), w, b, pad) for xi in x.split(1)])
        except RuntimeError as e:
            _nnpack_failed = True
            warnings.warn(f"NNPACK failed ({e}); using oneDNN's convolutions instead", stacklevel=2)
    return F.conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), padding=tuple(padding))


EncoderFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]

#: the ways :class:`FastMatting` can run the refiner's two stages (``refine_path``); ``"auto"`` takes the cheapest
REFINE_PATHS = ("auto", "tiles", "patches", "dense", "full")
#: the ways it can make the hidden channels the refiner reads (``hid_path``)
HID_PATHS = ("auto", "blocks", "dense")


@dataclass(frozen=True)
class PathCosts:
    """Time per pixel of each way of running a part of the refiner, in microseconds (only ratios matter).

    Calibrated with ``benchmarks/refiner_paths.py``, which measures each way and fits these numbers.
    """

    tiles: float  # both stages on tiles, per pixel of a tile's 1/2-resolution stage-1 crop ((2 TILE + 6)²)
    patches: float  # both stages on one crop per patch, per pixel of its stage-1 crop (8²)
    dense1: float  # stage 1 on the whole image, per pixel of the zero-padded 1/2-resolution image
    patch2: float  # stage 2 on a patch cut from the dense stage 1, per pixel of its stage-2 input (8²)
    full2: float  # stage 2 on the whole image, per pixel of its zero-padded input
    blocks: float  # hidden channels on HID_BLOCK blocks, per pixel of their (HID_BLOCK + 2)² windows
    hid: float  # hidden channels on the whole coarse image, per coarse pixel


#: per device type. A device without costs keeps tiles (one crop per patch in static mode) and hidden channels
#: on blocks, whatever the selection.
PATH_COSTS = {
    # 2 threads of an Intel Xeon, torch 2.14, HD (benchmarks/results/2026-12-06-cpu-refiner-paths.md)
    "cpu": PathCosts(tiles=0.79, patches=0.67, dense1=0.68, patch2=0.14, full2=0.15, blocks=0.17, hid=0.51),
}


class FastMatting(nn.Module):
    """Inference twin of a ``MattingBase``/``MattingRefine``: same ``forward(src, bgr)`` and outputs.

    Args:
        model: the trained network (copied; BatchNorm folded in the copy).
        static: sampling mode with a fixed number of patches and no host synchronisation (for CUDA graphs).
        channels_last: run the base network in channels_last layout (faster on CPU and on tensor cores).
        encoder: optional replacement for the backbone and ASPP, ``(src_sm, bgr_sm) -> (aspp(x4), x3, x2, x1)``
            (what ``MattingBase._encode`` computes, less ``x0``), e.g. an ONNX Runtime session.
        sparse_hid: make the hidden channels after the patches are chosen, only where the refiner reads them
            when that is cheaper (``hid_path``). Used when the patches are chosen per frame (sampling or
            thresholding mode, not ``static``); :attr:`sparse_hid` says whether.
        winograd: compute the decoder's first three convolutions with :class:`WinogradConv2d` (NNPACK) when
            the model is on the CPU and NNPACK is available; ``False`` keeps oneDNN's.
        refine_path: how the refiner runs on the selected patches (:data:`REFINE_PATHS`): ``"tiles"`` (both
            stages on TILE × TILE-patch tiles), ``"patches"`` (one crop per patch), ``"dense"`` (stage 1 on the
            whole image, stage 2 per patch), ``"full"`` (both stages on the whole image, the patches taken from
            it), or ``"auto"``: the cheapest by :data:`PATH_COSTS`, chosen per call (:meth:`choose_path`). All
            give the same result. ``static`` cannot use ``"tiles"`` (their number depends on the data).
        hid_path: with :attr:`sparse_hid`, ``"blocks"`` (only the blocks the crops read), ``"dense"`` (the whole
            coarse image) or ``"auto"`` (the cheaper, from the number of blocks). ``"dense"`` and ``"full"``
            always make them dense.
    """

    def __init__(self, model: MattingBase, static: bool = False, channels_last: bool = True,
                 encoder: EncoderFn | None = None, sparse_hid: bool = True, winograd: bool = True,
                 refine_path: str = "auto", hid_path: str = "auto"):
        super().__init__()
        if not isinstance(model, MattingBase):
            raise TypeError(f"FastMatting needs a MattingBase or MattingRefine, not {type(model).__name__}")
        if refine_path not in REFINE_PATHS or hid_path not in HID_PATHS:
            raise ValueError(f"refine_path must be one of {REFINE_PATHS} and hid_path one of {HID_PATHS}, "
                             f"not {refine_path!r} and {hid_path!r}")
        self.net = fold_batchnorm(copy.deepcopy(model).eval())
        self.is_refine = isinstance(model, MattingRefine)
        self.static = static and self.is_refine and model.refiner.mode == "sampling"
        if self.static and refine_path == "tiles":
            raise ValueError("static mode cannot run the refiner on tiles: their number depends on the data")
        self.refine_path, self.hid_path = refine_path, hid_path
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        device = next(model.parameters()).device
        self.costs = PATH_COSTS.get(device.type)
        self.winograd = winograd and device.type == "cpu" and nnpack_available()  # on CUDA the convs stay cuDNN's
        if self.winograd:
            dec = self.net.decoder
            dec.conv1, dec.conv2, dec.conv3 = (WinogradConv2d.from_conv(c) for c in (dec.conv1, dec.conv2, dec.conv3))
        self.encoder = encoder
        self.sparse_hid = sparse_hid and self.is_refine and not self.static and model.refiner.mode != "full"
        conv4 = self.net.decoder.conv4
        n_low = conv4.in_channels - self.net.backbone.channels[-1]
        self.register_buffer("_out_polyphase", up2_polyphase(conv4.weight[:5, :n_low].detach()), persistent=False)
        if self.sparse_hid:
            self.register_buffer("_hid_polyphase", up2_polyphase(conv4.weight[5:, :n_low].detach()),
                                 persistent=False)
        if self.is_refine and self.net.refiner.kernel_size == 3:
            c3 = self.net.refiner.conv3
            n_x = c3.in_channels - 6  # stage 1's channels; the last 6 are [src, bgr]
            self.register_buffer("_stage2_polyphase", nearest2_polyphase(c3.weight[:, :n_x].detach()),
                                 persistent=False)

    @property
    def refiner(self):
        return self.net.refiner if self.is_refine else None

    def coarse(self, src: torch.Tensor, bgr: torch.Tensor):
        """The base network: ``(pha, fgr_residual, err, hid)`` at the size of ``src``.

        With :attr:`sparse_hid` on, the last conv makes only its 5 output channels (alpha, foreground, error),
        and ``hid`` is replaced by ``low``, the decoder's third conv output (48 channels at about half the size of
        ``src``): the last conv's input is ``low`` upsampled plus ``[src, bgr]``, from which :meth:`hidden` makes
        the 32 hidden channels, or :meth:`_coarse_where_read` only where the refiner reads them.
        """
        if self.encoder is not None:
            enc = (*self.encoder(src, bgr), torch.cat([src, bgr], dim=1))
        else:
            if self.channels_last:
                src = src.contiguous(memory_format=torch.channels_last)
                bgr = bgr.contiguous(memory_format=torch.channels_last)
            enc = self.net._encode(src, bgr)
        dec = self.net.decoder
        low, x0 = dec.low_features(*enc[:-1]), enc[-1]
        if not self.sparse_hid:
            return self.net._heads(dec.conv4(dec._up_cat(low, x0)))
        return (*self.net._outputs(self._last_conv(low, x0, slice(0, 5), self._out_polyphase)), low)

    def _last_conv(self, low: torch.Tensor, x0: torch.Tensor, channels: slice,
                   polyphase: torch.Tensor) -> torch.Tensor:
        """The decoder's last conv, output ``channels`` only, of ``[upsample(low), x0]`` at the size of ``x0``."""
        conv = self.net.decoder.conv4
        weight, bias = conv.weight[channels], conv.bias[channels]
        if tuple(x0.shape[2:]) == (2 * low.shape[2], 2 * low.shape[3]) and min(low.shape[2:]) >= 2:
            # the upsampled part of the conv's input at low resolution (up2_conv3x3), the x0 part directly
            n_low = low.shape[1]
            return up2_conv3x3(low, weight[:, :n_low], polyphase) + F.conv2d(
                x0, weight[:, n_low:].to(x0.dtype), bias.to(x0.dtype), padding=1)
        return F.conv2d(self.net.decoder._up_cat(low, x0), weight, bias, padding=conv.padding)

    def hidden(self, low: torch.Tensor, src: torch.Tensor, bgr: torch.Tensor) -> torch.Tensor:
        """With :attr:`sparse_hid`: the hidden channels ``(B, 32, h, w)`` ≥ 0 on the whole coarse grid, from the
        ``low`` features that :meth:`coarse` returned and the base network's input ``src``, ``bgr``."""
        return self._last_conv(low, torch.cat([src, bgr], dim=1), slice(5, None), self._hid_polyphase).relu_()

    def forward(self, src: torch.Tensor, bgr: torch.Tensor):
        if not self.is_refine:
            _check_pair(src, bgr)
            pha, fgr_res, err, hid = self.coarse(src, bgr)
            return pha, (fgr_res + src).clamp_(0.0, 1.0), err, hid
        _check_pair(src, bgr, multiple=4)
        src_sm, bgr_sm = self.net.shrink(src, bgr)
        pha_sm, fgr_sm, err_sm, hid_sm = self.coarse(src_sm, bgr_sm)
        pha, fgr, ref = self._refine(src, bgr, pha_sm, fgr_sm, err_sm, hid_sm, (src_sm, bgr_sm))
        fgr_sm = (fgr_sm + src_sm).clamp_(0.0, 1.0)
        return pha, fgr, pha_sm, fgr_sm, err_sm, ref

    # ------------------------------------------------------------------------------------------ refiner

    def select(self, err: torch.Tensor):
        """The patches to refine, from the coarse error upsampled to the 1/4 grid, ``err`` ``(B, 1, H/4, W/4)``:
        ``(ib, rows, cols)`` ``(N,)`` each, a validity mask ``(N,)`` (static mode, else ``None``) and ``ref``."""
        r = self.net.refiner
        b, _, h4, w4 = err.shape
        if r.mode == "sampling":
            flat = err.reshape(b, h4 * w4)
            k = min(r.sample_pixels // 16, h4 * w4)
            values, top = flat.topk(k, dim=1, sorted=False)
            ib = torch.arange(b, device=err.device).repeat_interleave(k)
            top = top.reshape(-1)
            valid = (values > 0).reshape(-1) if r.prevent_oversampling else None
            if not self.static and valid is not None:
                ib, top, valid = ib[valid], top[valid], None
            ref = torch.zeros_like(flat).reshape(-1)
            ref[ib * (h4 * w4) + top] = 1.0 if valid is None else valid.to(ref.dtype)
            return ib, top // w4, top % w4, valid, ref.reshape(b, 1, h4, w4)
        ref = (err > r.threshold).to(err.dtype)
        ib, rows, cols = torch.nonzero(ref[:, 0], as_tuple=True)
        return ib, rows, cols, None, ref

    def _refine(self, src, bgr, pha, fgr, err, hid, small):
        r = self.net.refiner
        H, W = src.shape[2:]
        if r.mode == "full":  # dense: nothing to skip
            pha, fgr, ref = r(src, bgr, pha, fgr, err, hid)
            return pha.clamp_(0.0, 1.0), (fgr + src).clamp_(0.0, 1.0), ref
        err4 = F.interpolate(err, size=(H // 4, W // 4), mode="bilinear", align_corners=False)
        ib, rows, cols, valid, ref = self.select(err4)
        patches = self.refine_patches(src, bgr, hid, pha, fgr, ib, rows, cols, small) if ib.shape[0] else None
        # static mode: patches with zero error (not valid) keep the coarse values
        pha_out, fgr_out = compose(torch.cat([pha, fgr], dim=1), src, patches, ib, rows, cols, valid)
        return pha_out, fgr_out, ref

    def choose_path(self, batch: int, size: tuple[int, int], coarse_size: tuple[int, int], n_patches: int,
                    n_tiles: int | None = None) -> str:
        """The cheapest way (:data:`REFINE_PATHS`) to refine ``n_patches`` patches of a batch of ``batch`` images
        of ``size`` ``(H, W)`` whose coarse maps have ``coarse_size`` ``(h, w)``, by :attr:`costs`; the patches
        lie on ``n_tiles`` tiles (``None``: not counted, tiles not considered). Uses the counts only (no data).

        Each way's cost is its work in pixels times its cost per pixel: ``n_tiles × (2 TILE + 6)²`` (tiles),
        ``n_patches × 8²`` (patches), ``(H/2 + 6)(W/2 + 6)`` plus stage 2 per patch (dense) or on
        ``(H + 4)(W + 4)`` (full); plus, with :attr:`sparse_hid`, the hidden channels: the whole coarse grid for
        the dense ways, for the others the cheaper of that and the blocks their crops read, counted as if no
        two units shared a block (the actual blocks are counted later, :meth:`hid_on_blocks`).
        """
        c, (H, W), (h, w) = self.costs, size, coarse_size
        if c is None:  # not calibrated on this device
            return "patches" if n_tiles is None else "tiles"
        k3 = self.net.refiner.kernel_size == 3
        bh, b2 = (3, 2) if k3 else (0, 0)  # borders of the stage-1 crops (1/2 resolution) and stage-2 windows
        hid_dense = c.hid * batch * h * w if self.sparse_hid else 0.0  # else made with the coarse maps anyway

        def hid_blocks(units: int, crop: int) -> float:  # an upper bound: units whose blocks do not overlap
            if not self.sparse_hid:
                return 0.0
            read = crop if h == H // 2 else _window_len(crop, h, H // 2)  # coarse pixels a crop reads, per axis
            blocks = read // HID_BLOCK + 1
            return min(hid_dense, c.blocks * units * (blocks * (HID_BLOCK + 2)) ** 2)

        s1, s2 = 2 + 2 * bh, 4 + 2 * b2  # one patch's crops
        dense1 = c.dense1 * batch * (H // 2 + 2 * bh) * (W // 2 + 2 * bh) + hid_dense
        costs = {"patches": c.patches * n_patches * s1 ** 2 + hid_blocks(n_patches, s1),
                 "dense": dense1 + c.patch2 * n_patches * s2 ** 2,
                 "full": dense1 + c.full2 * batch * (H + 2 * b2) * (W + 2 * b2)}
        if n_tiles is not None:
            t1 = 2 * TILE + 2 * bh
            costs["tiles"] = c.tiles * n_tiles * t1 ** 2 + hid_blocks(n_tiles, t1)
        return min(costs, key=costs.get)

    def refine_patches(self, src, bgr, hid, pha, fgr, ib, rows, cols, small) -> torch.Tensor:
        """Stages 1 and 2 of the refiner on the patches ``(ib, rows, cols)`` (:meth:`select`) → ``(N, 4, 4, 4)``
        (``pha`` and the foreground residual). ``hid``, ``pha``, ``fgr`` are what :meth:`coarse` returned for the
        base network's input ``small`` = ``(src_sm, bgr_sm)``. The way is :attr:`refine_path`, or the cheapest.

        * ``"tiles"``: both stages run densely on tiles of ``TILE × TILE`` patches that hold at least one
          selected patch (the patches' crops overlap, and selected patches cluster along edges), and each patch
          takes its part of its tile's result.
        * ``"patches"``: one crop per patch, as the reference does.
        * ``"dense"``, ``"full"``: stage 1 on the whole image (the refiner's full mode: valid convs on the same
          zero-padded image give each patch the values its crop would), then stage 2 per patch or on the whole
          image too. For patches spread over the whole image.
        """
        B, _, H, W = src.shape
        path = self.refine_path
        tiles = None
        if path == "tiles" or (path == "auto" and not self.static):
            tiles = tiles_of((H // 4, W // 4), ib, rows, cols)
        if path == "auto":
            path = self.choose_path(B, (H, W), tuple(small[0].shape[2:]), ib.shape[0],
                                    None if tiles is None else tiles[0].shape[0])
        if path == "tiles":
            return self._refine_units(src, bgr, hid, pha, fgr, small, TILE, *tiles[:3], tiles[3], rows, cols)
        if path == "patches":
            return self._refine_units(src, bgr, hid, pha, fgr, small, 1, ib, rows, cols)
        return self._refine_dense(src, bgr, hid, pha, fgr, small, ib, rows, cols, full=path == "full")

    def _refine_units(self, src, bgr, hid, pha, fgr, small, tile, t_ib, t_rows, t_cols, inv=None, rows=None,
                      cols=None) -> torch.Tensor:
        """Both stages on units of ``tile × tile`` patches at ``(t_ib, t_rows, t_cols)`` (1/4 grid), each from its
        own crops; with ``inv`` (tiles), patch ``n`` at ``(rows[n], cols[n])`` is on unit ``inv[n]``."""
        r = self.net.refiner
        H, W = src.shape[2:]
        bh = 3 if r.kernel_size == 3 else 0  # border of the 1/2-resolution crops
        # stage 1 on the units' 1/2-resolution crops: coarse maps resampled, src/bgr as 2x2 means of full res
        s1 = 2 * tile + 2 * bh
        c_rows, c_cols, half = 2 * t_rows - bh, 2 * t_cols - bh, (H // 2, W // 2)
        store = None
        if self.sparse_hid:  # hid holds the decoder's low features: make the hidden channels the crops read
            blocks = blocks_read(tuple(small[0].shape), t_ib, c_rows, c_cols, half, s1)
            if self.hid_on_blocks(blocks[0].shape[0], tuple(small[0].shape)):
                store = self._coarse_where_read(hid, *small, pha, fgr, *blocks)
            else:
                hid = self.hidden(hid, *small)
        if store is not None:
            crops = _fetched_crops(store.fetch, (store.h, store.w), t_ib, c_rows, c_cols, half, s1)
        else:
            crops = _sample_crops(torch.cat([hid, pha, fgr.to(hid.dtype)], dim=1), t_ib, c_rows, c_cols, half, s1)
        margin = 2 * bh + 4 * (tile - 1)  # how far the windows reach out of the image
        win = _windows(src, bgr, t_ib, 4 * t_rows - 2 * bh, 4 * t_cols - 2 * bh, 2 * s1, margin)
        x = self._stage1(crops, win)
        # x: (Nu, 16, so, so), half-resolution pixels from 2 * t_rows - bh + (2 if k3 else 0). Stage 2 on the
        # units too: each patch's stage-2 input is its part of the unit's, so the unit's result holds the patch's
        so, o = x.shape[-1], (4 if bh else 0)  # full-resolution pixels from 4 * t_rows - 2 * bh + o
        out = self._stage2(x, win[:, :, o:o + 2 * so, o:o + 2 * so])  # (Nu, 4, 4 * tile, 4 * tile)
        if inv is None:
            return out
        dr, dc = rows - t_rows[inv], cols - t_cols[inv]
        return out.view(out.shape[0], out.shape[1], tile, 4, tile, 4)[inv, :, dr, :, dc, :]

    def _stage1(self, coarse: torch.Tensor, src_bgr: torch.Tensor) -> torch.Tensor:
        """Stage 1 of the refiner on ``[coarse, avg_pool2d(src_bgr, 2)]``: ``coarse`` ``(N, 36, s, s)`` at 1/2
        resolution, ``src_bgr`` ``(N, 6, 2s, 2s)`` at full resolution → ``(N, 16, s - 4, s - 4)`` (kernel 3).
        The first conv is split by input channels: its two inputs are never concatenated."""
        r = self.net.refiner
        c1, dt, n = r.conv1, coarse.dtype, coarse.shape[1]
        x = F.conv2d(coarse, c1.weight[:, :n].to(dt), None if c1.bias is None else c1.bias.to(dt))
        x = r.relu(r.bn1(x + F.conv2d(F.avg_pool2d(src_bgr.to(dt), 2), c1.weight[:, n:].to(dt))))
        return r.relu(r.bn2(r.conv2(x)))

    def _stage2(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Stage 2 of the refiner: stage 1's output ``x`` ``(N, 16, s, s)`` (upsampled ×2, nearest) with the
        full-resolution ``[src, bgr]`` ``y`` ``(N, 6, 2s, 2s)`` → ``(N, 4, 2s - 4, 2s - 4)`` (kernel 3) or
        ``(N, 4, 2s, 2s)`` (kernel 1). Also works on rectangles (the whole image)."""
        r = self.net.refiner
        y = y.to(x.dtype)
        if r.kernel_size == 3:  # conv3 of the upsampled x: one 2x2 conv per output phase, at half resolution
            c3 = r.conv3
            z = F.pixel_shuffle(F.conv2d(x, self._stage2_polyphase.to(x.dtype)), 2)
            z = z + F.conv2d(y, c3.weight[:, x.shape[1]:].to(x.dtype), c3.bias.to(x.dtype))
            return r.conv4(r.relu(z))  # bn3 is folded
        return r._stage2(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), y], dim=1))

    def _refine_dense(self, src, bgr, hid, pha, fgr, small, ib, rows, cols, full: bool) -> torch.Tensor:
        """Stage 1 on the whole image, then stage 2 on the patches ``(ib, rows, cols)`` or (``full``) on the
        whole image too; returns the patches ``(N, 4, 4, 4)``."""
        r = self.net.refiner
        H, W = src.shape[2:]
        k3 = r.kernel_size == 3
        if self.sparse_hid:
            hid = self.hidden(hid, *small)
        coarse = torch.cat([hid, pha, fgr.to(hid.dtype)], dim=1)
        if tuple(coarse.shape[2:]) != (H // 2, W // 2):
            coarse = F.interpolate(coarse, size=(H // 2, W // 2), mode="bilinear", align_corners=False)
        src_bgr = torch.cat([src, bgr], dim=1)
        if k3:  # 3 px of zeros at 1/2 resolution: the crops' zero padding; two valid convs leave 1 px around
            coarse, padded = F.pad(coarse, (3, 3, 3, 3)), F.pad(src_bgr, (6, 6, 6, 6))
        x = self._stage1(coarse, padded if k3 else src_bgr)
        # x: (B, 16, H/2 + 2, W/2 + 2), half-resolution pixel (i - 1, j - 1) at (i, j) (kernel 3)
        if full:
            out = self._stage2(x, F.pad(src_bgr, (2, 2, 2, 2)) if k3 else src_bgr)  # (B, 4, H, W)
            return out.reshape(out.shape[0], 4, H // 4, 4, W // 4, 4)[ib, :, rows, :, cols, :]
        so = 4 if k3 else 2  # a patch's stage-1 output starts at half-resolution pixel 2 * row - 1 (kernel 3)
        off = torch.arange(so, device=src.device)
        ry, rx = (2 * rows)[:, None, None] + off[:, None], (2 * cols)[:, None, None] + off
        xs = x.permute(0, 2, 3, 1)[ib[:, None, None], ry, rx].permute(0, 3, 1, 2)  # (N, 16, so, so)
        b2 = 2 if k3 else 0
        return self._stage2(xs, _windows(src, bgr, ib, 4 * rows - b2, 4 * cols - b2, 2 * so, b2))

    def hid_on_blocks(self, n_blocks: int, coarse_shape: tuple[int, ...]) -> bool:
        """Whether to make the hidden channels on ``n_blocks`` blocks rather than on the whole coarse grid."""
        if self.hid_path != "auto" or self.costs is None:
            return self.hid_path != "dense"
        B, _, h, w = coarse_shape
        return self.costs.blocks * n_blocks * (HID_BLOCK + 2) ** 2 < self.costs.hid * B * h * w

    def _coarse_where_read(self, low, src, bgr, pha, fgr, b_ib, b_y, b_x) -> _BlockStore:
        """``[hid, pha, fgr]`` (36 channels at the size of ``src``) on the :data:`HID_BLOCK` blocks ``(b_ib, b_y,
        b_x)`` (:func:`blocks_read`), with the hidden channels ``relu(conv4(feat))[:, 5:]`` computed there only.

        ``feat``, the last conv's input, is ``[upsample(low), src, bgr]`` (see :meth:`coarse`), never made whole.
        Where ``src`` is ``low`` upsampled by exactly 2, each block's part from ``low`` is one conv of a 4 × 4
        window of ``low`` per output phase (as :func:`up2_conv3x3`, with its border corrections on the blocks on
        the image's border); elsewhere it is the conv of each block's window of ``upsample(low)``, resampled
        from ``low`` (:func:`_sample_crops`).
        """
        conv = self.net.decoder.conv4
        B, _, h, w = src.shape
        bs, n_low = HID_BLOCK, low.shape[1]
        nby, nbx = -(-h // bs), -(-w // bs)
        nb = b_ib.shape[0]
        table = torch.zeros(B, nby, nbx, dtype=torch.long, device=src.device)
        table[b_ib, b_y, b_x] = torch.arange(1, nb + 1, device=src.device)
        weight, bias = conv.weight[5:].to(low.dtype), conv.bias[5:].to(low.dtype)
        top, left = b_y * bs - 1, b_x * bs - 1  # the conv's 3x3 windows: one pixel of (zero) padding around
        pre = F.conv2d(_windows(src, bgr, b_ib, top, left, bs + 2, bs).to(low.dtype), weight[:, n_low:], bias)
        if (h, w) == (2 * low.shape[2], 2 * low.shape[3]) and min(low.shape[2:]) >= 2:
            off = torch.arange(bs, device=src.device) - 1  # low rows 2 b_y - 1 to 2 b_y + 2, edge-replicated
            ry = (2 * b_y[:, None] + off).clamp(0, low.shape[2] - 1)
            rx = (2 * b_x[:, None] + off).clamp(0, low.shape[3] - 1)
            win = low.permute(0, 2, 3, 1)[b_ib[:, None, None], ry[:, :, None], rx[:, None, :]].permute(0, 3, 1, 2)
            pre = pre + F.pixel_shuffle(F.conv2d(win, self._hid_polyphase.to(win.dtype)), 2)
            pre = torch.cat([pre.new_zeros(1, *pre.shape[1:]), pre])  # block 0: zeros
            rows, cols = up2_border_corrections(low, weight[:, :n_low])
            pad_w, pad_h = nbx * bs - w, nby * bs - h
            rows = -F.pad(rows, (0, pad_w)).view(B, -1, 2, nbx, bs)
            cols = -F.pad(cols, (0, 0, 1, 1 + pad_h)).view(B, -1, nby, bs, 2)  # rows 0 and h-1 get none
            _add_on_block_edge(pre, table[:, 0], rows[:, :, 0], row=0)
            _add_on_block_edge(pre, table[:, (h - 1) // bs], rows[:, :, 1], row=(h - 1) % bs)
            _add_on_block_edge(pre, table[:, :, 0], cols[..., 0], col=0)
            _add_on_block_edge(pre, table[:, :, (w - 1) // bs], cols[..., 1], col=(w - 1) % bs)
        else:
            feat = _sample_crops(low, b_ib, top, left, (h, w), bs + 2)
            pre = pre + F.conv2d(feat, weight[:, :n_low])  # two convs: no concatenated copy of their inputs
            pre = torch.cat([pre.new_zeros(1, *pre.shape[1:]), pre])
        pf = F.pad(torch.cat([pha, fgr.to(pha.dtype)], dim=1), (0, nbx * bs - w, 0, nby * bs - h))
        pf = pf.view(B, -1, nby, bs, nbx, bs)[b_ib, :, b_y, :, b_x, :]  # (nb, 4, bs, bs)
        store = pre.new_zeros(nb + 1, bs, bs, pre.shape[1] + pf.shape[1])
        store[..., :pre.shape[1]] = pre.relu_().permute(0, 2, 3, 1)
        store[1:, :, :, pre.shape[1]:] = pf.permute(0, 2, 3, 1)
        return _BlockStore(store, table, (h, w))


def tiles_of(grid: tuple[int, int], ib: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor):
    """The ``TILE × TILE`` tiles of the 1/4 grid ``(H/4, W/4)`` that hold the patches ``(ib, rows, cols)``:
    ``(t_ib, t_rows, t_cols, inv)``, the tiles' items and first patch rows and columns, and each patch's tile."""
    n_r, n_c = -(-grid[0] // TILE), -(-grid[1] // TILE)
    key = (ib * n_r + rows // TILE) * n_c + cols // TILE
    tiles, inv = torch.unique(key, return_inverse=True)
    return tiles // (n_r * n_c), (tiles // n_c) % n_r * TILE, tiles % n_c * TILE, inv


def blocks_read(coarse_shape: tuple[int, ...], ib: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                 out_size: tuple[int, int], size: int):
    """The :data:`HID_BLOCK` blocks ``(b_ib, b_y, b_x)`` of a coarse image of ``coarse_shape`` ``(B, C, h, w)``
    that the crops of :func:`_sample_crops` (same ``ib, rows, cols, out_size, size``) read."""
    B, _, h, w = coarse_shape
    bs = HID_BLOCK
    mark = torch.zeros(B, -(-h // bs), -(-w // bs), dtype=torch.bool, device=ib.device)
    resized = (h, w) != tuple(out_size)  # the pixels _fetched_crops reads for these crops
    ry, rx = _crop_window(rows, size, h, out_size[0], resized), _crop_window(cols, size, w, out_size[1], resized)
    mark[ib[:, None, None], (ry // bs)[:, :, None], (rx // bs)[:, None, :]] = True
    return torch.nonzero(mark, as_tuple=True)
