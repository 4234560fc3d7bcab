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
* **The refiner on tiles**: selected patches cluster along the subject's outline and their crops overlap, so
  both stages run densely on 4×4-patch tiles that hold any selected patch (stage 1: about half the work of one
  crop per patch at HD), and each patch takes its part of its tile's result. Stage 2's first conv reads stage 1's
  output upsampled ×2 (nearest): it is computed as one 2×2 conv per output phase at half resolution
  (:func:`nearest2_polyphase`), with no upsampled copy.
* **Hidden channels only where they are read**: the decoder's last convolution (a third of MobileNetV2's base
  network at HD) makes 5 output channels that are needed everywhere (alpha, foreground, error) and 32 hidden ones
  that only the refiner reads, around the selected patches. The 5 are computed densely; the 32 only on the 4×4
  blocks of the coarse grid that the refiner's crops touch, each from its window of the conv's input (resampled
  from the decoder's low-resolution features), and kept compactly (:class:`_BlockStore`: no coarse-sized map).
* **Winograd convolutions** (NNPACK) for the decoder's first three 3×3 convs on the CPU: half the time of oneDNN's
  or ONNX Runtime's, at a rounding error of about 1e-5 (:class:`WinogradConv2d`).
* **The last conv's 5 output channels without the upsampled image**: where the decoder's last upsampling is by
  exactly 2, the conv of the upsampled features is computed at their own resolution, one conv per output phase
  (:func:`up2_conv3x3`: a third of the time of upsample, concatenate and convolve).
* **Static shapes** (``static=True``, sampling mode): always ``sample_pixels // 16`` patches per image, found with
  top-k and no ``nonzero`` (no host synchronisation), so the whole pass can be captured in a CUDA graph. With
  ``prevent_oversampling`` the patches whose error is 0 are still computed but not pasted, which gives the same
  result as dropping them.

``encoder`` swaps the backbone and ASPP for another engine that computes the same function (ONNX Runtime in
:mod:`bgmatting.backends`, faster than PyTorch there): a callable ``(src_sm, bgr_sm) -> (aspp(x4), x3, x2, x1)``.
"""

from __future__ import annotations

import copy
import math
import warnings
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
    H, W = 2 * h, 2 * w
    wt = weight.to(x.dtype)
    # The conv read an upsampled image extended by edge replication: frame[m, n] = up[clamp(m), clamp(n)].
    # It should have read zeros there; subtract what the frame contributed to the border outputs.
    for rows, out_row, frame_row in ((slice(0, 2), 0, 0), (slice(h - 2, h), H - 1, 2)):
        up = F.interpolate(x[:, :, rows], size=(4, W), mode="bilinear", align_corners=False)
        up = up[:, :, :2] if out_row == 0 else up[:, :, 2:]  # upsampled rows 0, 1 or H-2, H-1
        strip = x.new_zeros(B, C, 3, W + 2)
        strip[:, :, frame_row, 1:-1] = up[:, :, 0 if out_row == 0 else 1]
        inner = slice(1, 3) if out_row == 0 else slice(0, 2)
        strip[:, :, inner, 0], strip[:, :, inner, -1] = up[..., 0], up[..., -1]
        strip[:, :, frame_row, 0], strip[:, :, frame_row, -1] = strip[:, :, frame_row, 1], strip[:, :, frame_row, -2]
        out[:, :, out_row:out_row + 1] -= F.conv2d(strip, wt)
    for cols, out_col, frame_col in ((slice(0, 2), 0, 0), (slice(w - 2, w), W - 1, 2)):
        up = F.interpolate(x[:, :, :, cols], size=(H, 4), mode="bilinear", align_corners=False)
        strip = x.new_zeros(B, C, H, 3)
        strip[:, :, :, frame_col] = up[..., 0 if out_col == 0 else 3]
        out[:, :, 1:H - 1, out_col:out_col + 1] -= F.conv2d(strip, wt)  # rows 0 and H-1 were done above
    return out


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
    """An image ``(B, C, h, w)`` of which only some ``bs × bs`` blocks are known, stored compactly.

    ``blocks`` ``(nb, bs, bs, C)`` are the blocks ``(b_ib, b_y, b_x)`` (block rows and columns); reading any
    other block gives zeros. ``fetch`` reads pixels as :func:`_fetched_crops` asks.
    """

    def __init__(self, blocks: torch.Tensor, b_ib: torch.Tensor, b_y: torch.Tensor, b_x: torch.Tensor,
                 image_size: tuple[int, int, int]):
        B, self.h, self.w = image_size
        self.bs = blocks.shape[1]
        nby, nbx = -(-self.h // self.bs), -(-self.w // self.bs)
        self.store = torch.cat([blocks.new_zeros(1, *blocks.shape[1:]), blocks])  # block 0: zeros
        self.table = torch.zeros(B, nby, nbx, dtype=torch.long, device=blocks.device)
        self.table[b_ib, b_y, b_x] = torch.arange(1, blocks.shape[0] + 1, device=blocks.device)

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


def _windows(src: torch.Tensor, bgr: torch.Tensor, ib: torch.Tensor, top: torch.Tensor,
             left: torch.Tensor, size: int) -> torch.Tensor:
    """``size × size`` windows of ``[src, bgr]`` at ``(top[n], left[n])`` of batch item ``ib[n]`` → ``(N, 6, size, size)``.

    Pixels outside the image are 0 (the refiner's zero padding); nothing of full size is copied.
    """
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


class FastMatting(nn.Module):
    """Inference twin of a ``MattingBase``/``MattingRefine``: same ``forward(src, bgr)`` and outputs.

    Args:
        model: the trained network (copied; BatchNorm folded in the copy).
        static: sampling mode with a fixed number of patches and no host synchronisation (for CUDA graphs).
        channels_last: run the base network in channels_last layout (faster on CPU and on tensor cores).
        encoder: optional replacement for the backbone and ASPP, ``(src_sm, bgr_sm) -> (aspp(x4), x3, x2, x1)``
            (what ``MattingBase._encode`` computes, less ``x0``), e.g. an ONNX Runtime session.
        sparse_hid: compute the hidden channels only where the refiner reads them. Used when the patches are
            chosen per frame (sampling or thresholding mode, not ``static``); :attr:`sparse_hid` says whether.
        winograd: compute the decoder's first three convolutions with :class:`WinogradConv2d` (NNPACK) when
            the model is on the CPU and NNPACK is available; ``False`` keeps oneDNN's.
    """

    def __init__(self, model: MattingBase, static: bool = False, channels_last: bool = True,
                 encoder: EncoderFn | None = None, sparse_hid: bool = True, winograd: bool = True):
        super().__init__()
        if not isinstance(model, MattingBase):
            raise TypeError(f"FastMatting needs a MattingBase or MattingRefine, not {type(model).__name__}")
        self.net = fold_batchnorm(copy.deepcopy(model).eval())
        self.is_refine = isinstance(model, MattingRefine)
        self.static = static and self.is_refine and model.refiner.mode == "sampling"
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        on_cpu = next(model.parameters()).device.type == "cpu"
        self.winograd = winograd and on_cpu and nnpack_available()  # on CUDA the convs stay cuDNN's
        if self.winograd:
            dec = self.net.decoder
            dec.conv1, dec.conv2, dec.conv3 = (WinogradConv2d.from_conv(c) for c in (dec.conv1, dec.conv2, dec.conv3))
        self.encoder = encoder
        self.sparse_hid = sparse_hid and self.is_refine and not self.static and model.refiner.mode != "full"
        conv4 = self.net.decoder.conv4
        n_low = conv4.in_channels - self.net.backbone.channels[-1]
        self.register_buffer("_out_polyphase", up2_polyphase(conv4.weight[:5, :n_low].detach()), persistent=False)
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
        ``src``): the last conv's input is ``low`` upsampled plus ``[src, bgr]``, from which
        :meth:`_coarse_where_read` makes the 32 hidden channels where the refiner reads them.
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
        conv = dec.conv4
        if tuple(x0.shape[2:]) == (2 * low.shape[2], 2 * low.shape[3]) and min(low.shape[2:]) >= 2:
            # the upsampled part of the conv's input at low resolution (up2_conv3x3), the [src, bgr] part directly
            n_low = low.shape[1]
            x = up2_conv3x3(low, conv.weight[:5, :n_low], self._out_polyphase) + F.conv2d(
                x0, conv.weight[:5, n_low:].to(x0.dtype), conv.bias[:5].to(x0.dtype), padding=1)
        else:
            x = F.conv2d(dec._up_cat(low, x0), conv.weight[:5], conv.bias[:5], padding=conv.padding)
        return (*self.net._outputs(x), low)

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

    def _select(self, err: torch.Tensor):
        """Patch indices ``(ib, rows, cols)`` on the 1/4 grid, a validity mask (static mode) and ``ref``."""
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
        ib, rows, cols, valid, ref = self._select(err4)
        patches = self._refine_patches(src, bgr, hid, pha, fgr, ib, rows, cols, small) if ib.shape[0] else None
        # static mode: patches with zero error (not valid) keep the coarse values
        pha_out, fgr_out = compose(torch.cat([pha, fgr], dim=1), src, patches, ib, rows, cols, valid)
        return pha_out, fgr_out, ref

    def _refine_patches(self, src, bgr, hid, pha, fgr, ib, rows, cols, small) -> torch.Tensor:
        """Stages 1 and 2 of the refiner on the patches ``(ib, rows, cols)`` → ``(N, 4, 4, 4)``; ``small`` is
        the base network's input ``(src_sm, bgr_sm)``.

        Both stages run densely on tiles of ``TILE × TILE`` patches that hold at least one selected patch (the
        patches' crops overlap, and selected patches cluster along edges, so this does about half the work of
        one crop per patch in stage 1), and each selected patch takes its part of its tile's result. With
        ``static`` every patch is its own tile (no ``unique``, hence no host synchronisation).
        """
        r = self.net.refiner
        H, W = src.shape[2:]
        k3 = r.kernel_size == 3
        bh = 3 if k3 else 0  # border of the 1/2-resolution crops
        tile = 1 if self.static else TILE
        if tile == 1:
            t_ib, t_rows, t_cols, inv = ib, rows, cols, None
        else:
            n_r, n_c = -(-(H // 4) // tile), -(-(W // 4) // tile)
            key = (ib * n_r + rows // tile) * n_c + cols // tile
            tiles, inv = torch.unique(key, return_inverse=True)
            t_ib, t_rows, t_cols = tiles // (n_r * n_c), (tiles // n_c) % n_r * tile, tiles % n_c * tile
        # stage 1 on the tiles' 1/2-resolution crops: coarse maps resampled, src/bgr as 2x2 means of full res
        s1 = 2 * tile + 2 * bh
        c_rows, c_cols, half = 2 * t_rows - bh, 2 * t_cols - bh, (H // 2, W // 2)
        if self.sparse_hid:  # hid holds the decoder's low features: compute the hidden channels the crops read
            store = self._coarse_where_read(hid, *small, pha, fgr, t_ib, c_rows, c_cols, half, s1)
            crops = _fetched_crops(store.fetch, (store.h, store.w), t_ib, c_rows, c_cols, half, s1)
        else:
            crops = _sample_crops(torch.cat([hid, pha, fgr], dim=1), t_ib, c_rows, c_cols, half, s1)
        win = _windows(src, bgr, t_ib, 4 * t_rows - 2 * bh, 4 * t_cols - 2 * bh, 2 * s1)
        x = torch.cat([crops, F.avg_pool2d(win, 2).to(crops.dtype)], dim=1)
        x = r._stage1(x)  # (Nt, 16, so, so): half-resolution pixels from 2 * t_rows - bh + (2 if k3 else 0)
        # stage 2 on the tiles too: each patch's stage-2 input is its part of the tile's (every patch's crop
        # holds the same stage-1 values as the tile there), so the tile's result holds every patch's result
        so, o = x.shape[-1], (4 if k3 else 0)  # full-resolution pixels from 4 * t_rows - 2 * bh + o
        y = win[:, :, o:o + 2 * so, o:o + 2 * so].to(x.dtype)
        if k3:  # conv3 of the nearest-upsampled stage-1 output: one 2x2 conv per output phase, at half resolution
            c3 = r.conv3
            z = F.pixel_shuffle(F.conv2d(x, self._stage2_polyphase.to(x.dtype)), 2)
            z = z + F.conv2d(y, c3.weight[:, x.shape[1]:].to(x.dtype), c3.bias.to(x.dtype))
            out = r.conv4(r.relu(z))  # (Nt, 4, 4 * tile, 4 * tile): the tile's patches (bn3 is folded)
        else:
            out = r._stage2(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), y], dim=1))
        if inv is None:
            return out
        dr, dc = rows - t_rows[inv], cols - t_cols[inv]
        return out.view(out.shape[0], out.shape[1], tile, 4, tile, 4)[inv, :, dr, :, dc, :]

    def _coarse_where_read(self, low, src, bgr, pha, fgr, ib, rows, cols, out_size, size) -> _BlockStore:
        """``[hid, pha, fgr]`` (36 channels at the size of ``src``) on the :data:`HID_BLOCK` blocks that the crops
        of :func:`_sample_crops` (same ``ib, rows, cols, out_size, size``) read, with the hidden channels
        ``relu(conv4(feat))[:, 5:]`` computed there only.

        ``feat``, the last conv's input, is ``[upsample(low), src, bgr]`` (see :meth:`coarse`); each block's
        window of it is made by :func:`_sample_crops` and :func:`_windows`, so ``feat`` is never made whole.
        """
        conv = self.net.decoder.conv4
        B, _, h, w = src.shape
        bs = HID_BLOCK
        nby, nbx = -(-h // bs), -(-w // bs)
        mark = torch.zeros(B, nby, nbx, dtype=torch.bool, device=src.device)
        resized = (h, w) != tuple(out_size)  # the pixels _fetched_crops reads for these crops
        ry, rx = _crop_window(rows, size, h, out_size[0], resized), _crop_window(cols, size, w, out_size[1], resized)
        mark[ib[:, None, None], (ry // bs)[:, :, None], (rx // bs)[:, None, :]] = True
        b_ib, b_y, b_x = torch.nonzero(mark, as_tuple=True)
        top, left = b_y * bs - 1, b_x * bs - 1  # the conv's 3x3 windows: one pixel of (zero) padding around
        win = torch.cat([_sample_crops(low, b_ib, top, left, (h, w), bs + 2),
                         _windows(src, bgr, b_ib, top, left, bs + 2).to(low.dtype)], dim=1)
        hid = F.conv2d(win, conv.weight[5:].to(win.dtype), conv.bias[5:].to(win.dtype)).relu_()
        pf = F.pad(torch.cat([pha, fgr.to(pha.dtype)], dim=1), (0, nbx * bs - w, 0, nby * bs - h))
        pf = pf.view(B, -1, nby, bs, nbx, bs)[b_ib, :, b_y, :, b_x, :]  # (nb, 4, bs, bs)
        blocks = torch.cat([hid.to(pf.dtype), pf], dim=1).permute(0, 2, 3, 1)  # (nb, bs, bs, 36)
        return _BlockStore(blocks, b_ib, b_y, b_x, (B, h, w))
