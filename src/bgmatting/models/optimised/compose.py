"""The refiner's last step: the full-resolution result from the coarse maps and the refined patches.

Every output pixel is the coarse ``[pha, fgr_residual]`` upsampled (bilinear, ``align_corners=False``) or, inside
a refined 4×4 patch, the patch's value; then ``pha`` is clamped to [0, 1] and ``fgr = clamp(residual + src, 0, 1)``.

* :func:`compose_torch`: upsample, paste the patches in place, clamp, add: four passes over full-resolution
  images (the reference implementation's order of work, without its concatenations).
* :func:`compose_triton`: one Triton kernel that does all of it in one pass (reads ``src`` and a few coarse
  pixels, writes the outputs once): on a GPU this work is bound by memory traffic, not arithmetic.

:func:`compose` picks the kernel on CUDA when Triton is installed (``BGMATTING_TRITON=0`` turns it off), else
PyTorch. Both give the same result within float rounding (tested on the CPU with Triton's interpreter,
``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

try:  # Triton comes with CUDA builds of PyTorch; without it the PyTorch path is used
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only builds
    triton = None

BLOCK = 1024  # output pixels per Triton program


def compose_torch(coarse: torch.Tensor, src: torch.Tensor, patches: torch.Tensor | None, ib: torch.Tensor,
                  rows: torch.Tensor, cols: torch.Tensor, valid: torch.Tensor | None = None):
    """``(pha, fgr)`` at the size of ``src`` ``(B, 3, H, W)`` from ``coarse`` ``(B, 4, h, w)`` (``pha`` and the
    foreground residual) and the refined ``patches`` ``(N, 4, 4, 4)`` of the 4×4 cells ``(ib, rows, cols)``.
    With ``valid`` ``(N,)`` (static mode) only the valid patches are pasted. ``patches`` may be None (none)."""
    B, _, H, W = src.shape
    out = F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)
    if patches is not None:
        grid = out.view(B, 4, H // 4, 4, W // 4, 4)
        if valid is not None:  # patches with zero error keep the coarse values
            keep = grid[ib, :, rows, :, cols, :]
            patches = torch.where(valid[:, None, None, None], patches.to(keep.dtype), keep)
        grid[ib, :, rows, :, cols, :] = patches.to(grid.dtype)
    return out[:, :1].clamp_(0.0, 1.0), (out[:, 1:] + src).clamp_(0.0, 1.0)


if triton is not None:

    @triton.jit
    def _compose_kernel(coarse, src, patches, idmap, pha_out, fgr_out, h, w, H, W, scale_h, scale_w,
                        BLOCK: tl.constexpr):
        b = tl.program_id(1).to(tl.int64)  # image offsets b·3·H·W pass 2³¹ for batches of about 85 4K frames
        o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = o < H * W
        y = o // W
        x = o % W
        # where the output pixel samples the coarse map, as PyTorch's bilinear upsampling computes it
        sy = tl.maximum(scale_h * (y.to(tl.float32) + 0.5) - 0.5, 0.0)
        sx = tl.maximum(scale_w * (x.to(tl.float32) + 0.5) - 0.5, 0.0)
        y0 = sy.to(tl.int32)
        x0 = sx.to(tl.int32)
        ly = sy - y0.to(tl.float32)
        lx = sx - x0.to(tl.float32)
        y1 = y0 + (y0 < h - 1).to(tl.int32)
        x1 = x0 + (x0 < w - 1).to(tl.int32)
        W4 = W // 4
        pid = tl.load(idmap + (b * (H // 4) + y // 4) * W4 + x // 4, mask=m, other=-1)
        refined = m & (pid >= 0)
        poff = pid * 64 + (y % 4) * 4 + (x % 4)  # patches (N, 4, 4, 4), contiguous
        for c in tl.static_range(4):
            base = coarse + (b * 4 + c) * h * w
            v00 = tl.load(base + y0 * w + x0, mask=m, other=0.0).to(tl.float32)
            v01 = tl.load(base + y0 * w + x1, mask=m, other=0.0).to(tl.float32)
            v10 = tl.load(base + y1 * w + x0, mask=m, other=0.0).to(tl.float32)
            v11 = tl.load(base + y1 * w + x1, mask=m, other=0.0).to(tl.float32)
            v = (1.0 - ly) * ((1.0 - lx) * v00 + lx * v01) + ly * ((1.0 - lx) * v10 + lx * v11)
            v = v.to(pha_out.dtype.element_ty).to(tl.float32)  # the upsampled image's dtype, as in PyTorch
            pv = tl.load(patches + poff + c * 16, mask=refined, other=0.0)
            v = tl.where(refined, pv.to(pha_out.dtype.element_ty).to(tl.float32), v)
            if c == 0:
                tl.store(pha_out + b * H * W + o, tl.minimum(tl.maximum(v, 0.0), 1.0), mask=m)
            else:
                s = tl.load(src + (b * 3 + c - 1) * H * W + o, mask=m, other=0.0).to(tl.float32)
                tl.store(fgr_out + (b * 3 + c - 1) * H * W + o, tl.minimum(tl.maximum(v + s, 0.0), 1.0), mask=m)


def triton_usable(src: torch.Tensor) -> bool:
    """Whether :func:`compose` runs the Triton kernel for ``src``."""
    return triton is not None and src.is_cuda and os.environ.get("BGMATTING_TRITON", "1") != "0"


def compose_triton(coarse: torch.Tensor, src: torch.Tensor, patches: torch.Tensor | None, ib: torch.Tensor,
                   rows: torch.Tensor, cols: torch.Tensor, valid: torch.Tensor | None = None):
    """:func:`compose_torch` in one Triton kernel (CUDA, or the CPU under ``TRITON_INTERPRET=1``)."""
    B, _, H, W = src.shape
    h, w = coarse.shape[2:]
    coarse, src = coarse.contiguous(), src.contiguous()
    idmap = torch.full((B, H // 4, W // 4), -1, dtype=torch.int32, device=src.device)
    if patches is None:
        patches = coarse.new_zeros(1, 4, 4, 4)
    else:
        ids = torch.arange(patches.shape[0], dtype=torch.int32, device=src.device)
        idmap[ib, rows, cols] = ids if valid is None else torch.where(valid, ids, -1)
        patches = patches.contiguous()
    pha = torch.empty(B, 1, H, W, dtype=coarse.dtype, device=src.device)
    fgr = torch.empty(B, 3, H, W, dtype=torch.promote_types(coarse.dtype, src.dtype), device=src.device)
    grid = (triton.cdiv(H * W, BLOCK), B)
    _compose_kernel[grid](coarse, src, patches, idmap, pha, fgr, h, w, H, W, h / H, w / W, BLOCK=BLOCK)
    return pha, fgr


def compose(coarse, src, patches, ib, rows, cols, valid=None):
    """:func:`compose_triton` where :func:`triton_usable`, else :func:`compose_torch`."""
    fn = compose_triton if triton_usable(src) else compose_torch
    return fn(coarse, src, patches, ib, rows, cols, valid)
