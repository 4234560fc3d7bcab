"""Crops for the refiner made straight from the inputs, without resized full-size intermediates: windows of
``[src, bgr]``, bilinear resampling of crops from a small window of a coarse map (two small matrix products), a
compact store of the blocks of an image that are known, and the tiles and blocks that selected patches touch."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

TILE = 4  # patches per side of the tiles both stages of the refiner run on
HID_BLOCK = 4  # side of the blocks of the coarse grid on which the hidden channels are computed


def window_len(size: int, n_in: int, n_out: int) -> int:
    """Input pixels that a crop of ``size`` output pixels can touch, on an axis resized from ``n_in`` to ``n_out``."""
    return int(math.ceil(size * n_in / n_out)) + 2


def _source_pos(pos: torch.Tensor, n_in: int, n_out: int) -> torch.Tensor:
    """Where output pixels ``pos`` sample the input (float64), as ``F.interpolate`` computes it."""
    return ((pos.to(torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)


def _interp_matrix(start: torch.Tensor, size: int, n_in: int, n_out: int, window: torch.Tensor) -> torch.Tensor:
    """1-D bilinear resampling as a matrix, per crop.

    For crops of ``size`` pixels starting at ``start`` ``(N,)`` on an axis resized from ``n_in`` to ``n_out``
    (``F.interpolate``, ``align_corners=False``) that read the input pixels ``window`` ``(N, k)``
    (:func:`crop_window`), returns ``M`` ``(N, size, k)`` such that crop pixel ``a`` =
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


def crop_window(start: torch.Tensor, size: int, n_in: int, n_out: int, resized: bool) -> torch.Tensor:
    """The input pixels ``(N, k)`` (clamped into ``[0, n_in)``) that :func:`fetched_crops` reads for crops of
    ``size`` pixels starting at ``start``, on an axis of ``n_in`` pixels resized to ``n_out``: the crop itself
    when the image is not ``resized``, else the window that :func:`_interp_matrix` resamples."""
    if not resized:
        return (start[:, None] + torch.arange(size, device=start.device)).clamp(0, n_in - 1)
    k = window_len(size, n_in, n_out)
    first = _source_pos(start, n_in, n_out).floor().long().clamp(max=n_in - 1)
    return (first[:, None] + torch.arange(k, device=start.device)).clamp(max=n_in - 1)


Fetch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sample_crops(x: torch.Tensor, ib: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                  out_size: tuple[int, int], size: int) -> torch.Tensor:
    """Crops of ``x`` ``(B, C, h, w)`` as if it were first resized to ``out_size`` (bilinear, ``align_corners=False``).

    Returns ``(N, C, size, size)`` (a channels-last view): the pixels ``rows[n] + a``, ``cols[n] + b``
    (``0 <= a, b < size``) of the resized image of batch item ``ib[n]``; pixels outside it are 0 (the refiner's
    zero padding). Only the crops are computed: a small window of ``x`` per crop, resampled by two matrix products.
    """
    return fetched_crops(tensor_fetch(x), tuple(x.shape[2:]), ib, rows, cols, out_size, size)


def tensor_fetch(x: torch.Tensor) -> Fetch:
    """A ``fetch`` for :func:`fetched_crops` that reads the image ``x`` ``(B, C, h, w)``."""
    def fetch(ib: torch.Tensor, ry: torch.Tensor, rx: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)[ib[:, None, None], ry[:, :, None], rx[:, None, :]]

    return fetch


def fetched_crops(fetch: Fetch, in_size: tuple[int, int], ib: torch.Tensor, rows: torch.Tensor,
                   cols: torch.Tensor, out_size: tuple[int, int], size: int) -> torch.Tensor:
    """:func:`sample_crops` of an image of ``in_size`` ``(h, w)`` that is read through ``fetch(ib, ry, rx)``:
    ``ry`` ``(N, k_y)`` and ``rx`` ``(N, k_x)`` are pixel rows and columns (inside the image) of item ``ib`` ``(N,)``;
    it returns their ``(N, k_y, k_x, C)`` values. An axis that is not resized is cropped without resampling."""
    h, w = in_size
    resized = (h, w) != tuple(out_size)
    ry, rx = crop_window(rows, size, h, out_size[0], resized), crop_window(cols, size, w, out_size[1], resized)
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


class BlockStore:
    """An image of ``image_size`` ``(h, w)`` of which only some ``bs × bs`` blocks are known, stored compactly.

    ``store`` ``(1 + nb, bs, bs, C)`` holds zeros (block 0) and the known blocks; ``table`` ``(B, nby, nbx)``
    gives each block of the image its place in ``store`` (0: not known, reads as zeros). ``fetch`` reads pixels
    as :func:`fetched_crops` asks.
    """

    def __init__(self, store: torch.Tensor, table: torch.Tensor, image_size: tuple[int, int]):
        self.store, self.table = store, table
        self.h, self.w = image_size
        self.bs = store.shape[1]

    def fetch(self, ib: torch.Tensor, ry: torch.Tensor, rx: torch.Tensor) -> torch.Tensor:
        bs = self.bs
        ry, rx = ry[:, :, None], rx[:, None, :]
        # one index per pixel into the store's rows of C values: index_select copies whole rows
        idx = (self.table[ib[:, None, None], ry // bs, rx // bs] * bs + ry % bs) * bs + rx % bs
        store = self.store.reshape(-1, self.store.shape[-1])
        return store.index_select(0, idx.reshape(-1)).view(*idx.shape, store.shape[1])

    def dense(self) -> torch.Tensor:
        """The whole image ``(B, C, h, w)``, zeros where no block is known (for tests)."""
        B, nby, nbx = self.table.shape
        img = self.store[self.table]  # (B, nby, nbx, bs, bs, C)
        img = img.permute(0, 5, 1, 3, 2, 4).reshape(B, -1, nby * self.bs, nbx * self.bs)
        return img[:, :, :self.h, :self.w]


def add_on_block_edge(blocks: torch.Tensor, ids: torch.Tensor, values: torch.Tensor, row: int | None = None,
                       col: int | None = None) -> None:
    """Add ``values`` ``(B, C, n, bs)`` to one row (or column) of the blocks ``ids`` ``(B, n)`` of ``blocks``
    ``(1 + nb, C, bs, bs)``, in place; id 0 (block 0, the zeros of a :class:`BlockStore`) stays zero."""
    B, C, n, bs = values.shape
    upd = values.permute(0, 2, 1, 3).reshape(B * n, C, bs) * (ids > 0).reshape(-1, 1, 1).to(values.dtype)
    full = blocks.new_zeros(B * n, C, bs, bs)
    if row is not None:
        full[:, :, row, :] = upd
    else:
        full[:, :, :, col] = upd
    blocks.index_put_((ids.reshape(-1),), full, accumulate=True)


def pool2(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2)``, bit for bit: where ``x`` is contiguous with even sides, as the sum of its four
    strided 2×2 phases (in avg_pool2d's order) times 1/4, 2–3× faster on the CPU than avg_pool2d's kernel for
    this layout (``benchmarks/results/2026-12-07-cpu-worst-case.md``)."""
    if x.is_contiguous() and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0:
        return (x[..., ::2, ::2] + x[..., ::2, 1::2] + x[..., 1::2, ::2] + x[..., 1::2, 1::2]) * 0.25
    return F.avg_pool2d(x, 2)


def pair_windows(src: torch.Tensor, bgr: torch.Tensor, ib: torch.Tensor, top: torch.Tensor,
             left: torch.Tensor, size: int, margin: int) -> torch.Tensor:
    """``size × size`` windows of ``[src, bgr]`` at ``(top[n], left[n])`` of batch item ``ib[n]``
    → ``(N, 6, size, size)``.

    Pixels outside the image are 0 (the refiner's zero padding). Every window must lie within ``margin`` pixels
    around the image. Where the windows cover a fifth of the images or more, they are views of ``[src, bgr]``
    padded by ``margin`` (one copy of the images), gathered whole; else they are gathered pixel by pixel.
    """
    B, _, H, W = src.shape
    if ib.shape[0] * size * size < B * H * W / 5:
        return pair_windows_by_pixel(src, bgr, ib, top, left, size)
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


def pair_windows_by_pixel(src: torch.Tensor, bgr: torch.Tensor, ib: torch.Tensor, top: torch.Tensor,
                      left: torch.Tensor, size: int) -> torch.Tensor:
    """:func:`pair_windows`, gathered pixel by pixel (rows and columns clamped into the image, then masked)."""
    _, _, H, W = src.shape
    off = torch.arange(size, device=src.device)
    ry, rx = top[:, None] + off, left[:, None] + off
    inside = ((ry >= 0) & (ry < H))[:, :, None] & ((rx >= 0) & (rx < W))[:, None, :]
    yy, xx = ry.clamp(0, H - 1)[:, :, None], rx.clamp(0, W - 1)[:, None, :]
    out = torch.cat([src.permute(0, 2, 3, 1)[ib[:, None, None], yy, xx],
                     bgr.permute(0, 2, 3, 1)[ib[:, None, None], yy, xx]], dim=3)  # (N, size, size, 6)
    return (out * inside[..., None].to(out.dtype)).permute(0, 3, 1, 2)


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
    that the crops of :func:`sample_crops` (same ``ib, rows, cols, out_size, size``) read."""
    B, _, h, w = coarse_shape
    bs = HID_BLOCK
    mark = torch.zeros(B, -(-h // bs), -(-w // bs), dtype=torch.bool, device=ib.device)
    resized = (h, w) != tuple(out_size)  # the pixels fetched_crops reads for these crops
    ry, rx = crop_window(rows, size, h, out_size[0], resized), crop_window(cols, size, w, out_size[1], resized)
    mark[ib[:, None, None], (ry // bs)[:, :, None], (rx // bs)[:, None, :]] = True
    return torch.nonzero(mark, as_tuple=True)
