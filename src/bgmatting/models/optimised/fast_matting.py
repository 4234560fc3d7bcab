"""FastMatting: the same outputs as ``MattingBase``/``MattingRefine`` (within float rounding, ≤ 1e-4 in fp32),
with less work, for inference.

It copies a trained model (never changes it), folds its BatchNorm (:mod:`.batchnorm`), runs the base network in
channels_last on the CPU, computes the decoder's convolutions of ×2-upsampled features at their own resolution
(:mod:`.polyphase`; Winograd by NNPACK on the CPU, :mod:`.winograd`), makes the 32 hidden channels only where
the refiner reads them, and runs the refiner where the selected patches are (:mod:`.crops`), the cheapest of
four ways per call (:meth:`FastMatting.choose_path`, from :data:`PATH_COSTS`):

* ``tiles``: both stages densely on tiles of ``TILE × TILE`` patches that hold a selected patch;
* ``patches``: one crop per patch;
* ``dense`` / ``full``: stage 1 on the whole image, then stage 2 per patch or on the whole image.

``static=True`` (sampling mode) always computes ``sample_pixels // 16`` patches per image, with no host
synchronisation, so that a pass can be captured in a CUDA graph. ``encoder`` swaps the backbone and ASPP for
another engine that computes the same function (ONNX Runtime, :mod:`bgmatting.backends`): a callable
``(src_sm, bgr_sm) -> (aspp(x4), x3, x2, x1)``. How each way works and what it saves: ``docs/architecture.md``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..matting import MattingBase, MattingRefine, check_pair
from ..patches import patch_count, select_patches, top_patches
from .batchnorm import fold_batchnorm
from .compose import compose
from .crops import (
    HID_BLOCK,
    TILE,
    BlockStore,
    Fetch,
    add_on_block_edge,
    blocks_read,
    fetched_crops,
    pair_windows,
    pool2,
    sample_crops,
    tensor_fetch,
    tiles_of,
    window_len,
)
from .polyphase import nearest2_polyphase, up2_border_corrections, up2_conv3x3, up2_polyphase
from .winograd import WinogradConv2d, nnpack_available

#: stage 1's [src, bgr] windows come from the images pooled once when the full-resolution windows would cover
#: this fraction of the images or more (else each window is pooled)
POOL_WINDOWS_COVER = 0.4

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
            c1 = self.net.refiner.conv1  # its coarse channels, for crops of coarse maps upsampled by exactly 2
            self.register_buffer("_stage1_polyphase", up2_polyphase(c1.weight[:, :c1.in_channels - 6].detach()),
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
            enc = self.net.encode(src, bgr)
        dec = self.net.decoder
        low, x0 = dec.low_features(*enc[:-1]), enc[-1]
        if not self.sparse_hid:
            return self.net.heads(dec.conv4(dec.up_cat(low, x0)))
        return (*self.net.outputs(self._last_conv(low, x0, slice(0, 5), self._out_polyphase)), low)

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
        return F.conv2d(self.net.decoder.up_cat(low, x0), weight, bias, padding=conv.padding)

    def hidden(self, low: torch.Tensor, src: torch.Tensor, bgr: torch.Tensor) -> torch.Tensor:
        """With :attr:`sparse_hid`: the hidden channels ``(B, 32, h, w)`` ≥ 0 on the whole coarse grid, from the
        ``low`` features that :meth:`coarse` returned and the base network's input ``src``, ``bgr``."""
        return self._last_conv(low, torch.cat([src, bgr], dim=1), slice(5, None), self._hid_polyphase).relu_()

    def forward(self, src: torch.Tensor, bgr: torch.Tensor):
        if not self.is_refine:
            check_pair(src, bgr)
            pha, fgr_res, err, hid = self.coarse(src, bgr)
            return pha, (fgr_res + src).clamp_(0.0, 1.0), err, hid
        check_pair(src, bgr, multiple=4)
        src_sm, bgr_sm = self.net.shrink(src, bgr)
        pha_sm, fgr_sm, err_sm, hid_sm = self.coarse(src_sm, bgr_sm)
        pha, fgr, ref = self._refine(src, bgr, pha_sm, fgr_sm, err_sm, hid_sm, (src_sm, bgr_sm))
        fgr_sm = (fgr_sm + src_sm).clamp_(0.0, 1.0)
        return pha, fgr, pha_sm, fgr_sm, err_sm, ref

    # ------------------------------------------------------------------------------------------ refiner

    def select(self, err: torch.Tensor):
        """The patches to refine, from the coarse error upsampled to the 1/4 grid, ``err`` ``(B, 1, H/4, W/4)``:
        ``(ib, rows, cols)`` ``(N,)`` each, a validity mask ``(N,)`` (static mode, else ``None``) and ``ref``.
        The same patches as the refiner's own selection (:func:`~bgmatting.models.patches.select_patches`)."""
        r = self.net.refiner
        b, _, h4, w4 = err.shape
        if r.mode == "sampling":  # indices straight from top-k: no nonzero, a fixed count in static mode
            values, top = top_patches(err.reshape(b, h4 * w4), patch_count(r.sample_pixels))
            ib = torch.arange(b, device=err.device).repeat_interleave(top.shape[1])
            top = top.reshape(-1)
            valid = (values > 0).reshape(-1) if r.prevent_oversampling else None
            if not self.static and valid is not None:
                ib, top, valid = ib[valid], top[valid], None
            ref = torch.zeros_like(err).reshape(-1)
            ref[ib * (h4 * w4) + top] = 1.0 if valid is None else valid.to(ref.dtype)
            return ib, top // w4, top % w4, valid, ref.reshape(b, 1, h4, w4)
        ref = select_patches(err, r.mode, r.sample_pixels, r.threshold, r.prevent_oversampling)
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
            read = crop if h == H // 2 else window_len(crop, h, H // 2)  # coarse pixels a crop reads, per axis
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
            fetch, in_size = store.fetch, (store.h, store.w)
        else:
            coarse = torch.cat([hid, pha, fgr.to(hid.dtype)], dim=1)
            fetch, in_size = tensor_fetch(coarse), tuple(coarse.shape[2:])
        margin = 2 * bh + 4 * (tile - 1)  # how far the full-resolution windows reach out of the image
        if bh and not self.static and half == (2 * in_size[0], 2 * in_size[1]):
            part = self._stage1_coarse_up2(fetch, in_size, t_ib, c_rows, c_cols, s1)
        else:
            part = self.stage1_coarse(fetched_crops(fetch, in_size, t_ib, c_rows, c_cols, half, s1))
        # stage 1 reads [src, bgr] at 1/2 resolution, stage 2 the middle of the same windows at full resolution.
        # Where the windows cover much of the images, stage 1's are cut from the images pooled once and stage 2's
        # are cut smaller (the crops start at even pixels: pooling a window or cutting it from the pooled image
        # is the same); else one window serves both and is pooled itself
        # (benchmarks/results/2026-12-07-cpu-worst-case.md).
        full_top, full_left = 4 * t_rows - 2 * bh, 4 * t_cols - 2 * bh
        pooled = t_ib.shape[0] * (2 * s1) ** 2 >= POOL_WINDOWS_COVER * src.shape[0] * H * W
        if pooled:
            half_win = pair_windows(pool2(src), pool2(bgr), t_ib, c_rows, c_cols, s1, margin // 2)
        else:
            win = pair_windows(src, bgr, t_ib, full_top, full_left, 2 * s1, margin)
            half_win = pool2(win)
        x = self.stage1_rest(part, half_win)
        # x: (Nu, 16, so, so), half-resolution pixels from 2 * t_rows - bh + (2 if k3 else 0). Stage 2 on the
        # units too: each patch's stage-2 input is its part of the unit's, so the unit's result holds the patch's
        so, o = x.shape[-1], (4 if bh else 0)  # full-resolution pixels from 4 * t_rows - 2 * bh + o
        if pooled:
            win = pair_windows(src, bgr, t_ib, full_top + o, full_left + o, 2 * so, margin)
        else:
            win = win[:, :, o:o + 2 * so, o:o + 2 * so]
        out = self.stage2(x, win)  # (Nu, 4, 4 * tile, 4 * tile)
        if inv is None:
            return out
        dr, dc = rows - t_rows[inv], cols - t_cols[inv]
        return out.view(out.shape[0], out.shape[1], tile, 4, tile, 4)[inv, :, dr, :, dc, :]

    def stage1(self, coarse: torch.Tensor, src_bgr: torch.Tensor) -> torch.Tensor:
        """Stage 1 of the refiner on ``[coarse, avg_pool2d(src_bgr, 2)]``: ``coarse`` ``(N, 36, s, s)`` at 1/2
        resolution, ``src_bgr`` ``(N, 6, 2s, 2s)`` at full resolution → ``(N, 16, s - 4, s - 4)`` (kernel 3).
        The first conv is split by input channels: its two inputs are never concatenated."""
        return self.stage1_rest(self.stage1_coarse(coarse), pool2(src_bgr.to(coarse.dtype)))

    def stage1_coarse(self, coarse: torch.Tensor) -> torch.Tensor:
        """The part of stage 1's first conv (valid, no bias) that reads the coarse channels ``coarse``."""
        c1 = self.net.refiner.conv1
        return F.conv2d(coarse, c1.weight[:, :coarse.shape[1]].to(coarse.dtype))

    def stage1_rest(self, part: torch.Tensor, half_src_bgr: torch.Tensor) -> torch.Tensor:
        """Stage 1 from :meth:`stage1_coarse`'s ``part`` ``(N, C1, s - 2, s - 2)``: the first conv's part that
        reads ``[src, bgr]`` at 1/2 resolution, ``half_src_bgr`` ``(N, 6, s, s)``, and its bias added, then the
        rest of the stage."""
        r = self.net.refiner
        c1, dt = r.conv1, part.dtype
        n = c1.in_channels - half_src_bgr.shape[1]
        x = part + F.conv2d(half_src_bgr.to(dt), c1.weight[:, n:].to(dt), None if c1.bias is None else c1.bias.to(dt))
        return r.relu(r.bn2(r.conv2(r.relu(r.bn1(x)))))

    def _stage1_coarse_up2(self, fetch: Fetch, in_size: tuple[int, int], ib: torch.Tensor, rows: torch.Tensor,
                           cols: torch.Tensor, size: int) -> torch.Tensor:
        """:meth:`stage1_coarse` of the ``size × size`` crops at ``(rows, cols)`` (odd) of a coarse map of
        ``in_size`` read through ``fetch`` (:func:`fetched_crops`) and upsampled by exactly 2, without making the
        upsampled crops: for a crop inside the image, the first conv of it is one 3×3 conv per output phase of the
        map's own ``(size / 2 + 1)²`` window (:func:`up2_polyphase`). Crops that reach out of the image (its zero
        padding is not an upsampled value) are cropped and convolved as :meth:`stage1_coarse` does."""
        h, w = in_size
        off = torch.arange(size // 2 + 1, device=rows.device)
        # the crop's first upsampled row is 1/4 past map row ry[:, 0] (clamped: the edge crops are redone below)
        ry = (((rows - 1) // 2)[:, None] + off).clamp(0, h - 1)
        rx = (((cols - 1) // 2)[:, None] + off).clamp(0, w - 1)
        win = fetch(ib, ry, rx).permute(0, 3, 1, 2)  # (N, C, size / 2 + 1, same): channels last
        part = F.pixel_shuffle(F.conv2d(win, self._stage1_polyphase.to(win.dtype)), 2)  # (N, C1, size - 2, same)
        inside = (rows >= 0) & (rows + size <= 2 * h) & (cols >= 0) & (cols + size <= 2 * w)
        edge = torch.nonzero(~inside).flatten()
        if edge.shape[0]:
            crops = fetched_crops(fetch, in_size, ib[edge], rows[edge], cols[edge], (2 * h, 2 * w), size)
            part[edge] = self.stage1_coarse(crops)
        return part

    def stage2(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
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
        return r.stage2(torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), y], dim=1))

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
        x = self.stage1(coarse, padded if k3 else src_bgr)
        # x: (B, 16, H/2 + 2, W/2 + 2), half-resolution pixel (i - 1, j - 1) at (i, j) (kernel 3)
        if full:
            out = self.stage2(x, F.pad(src_bgr, (2, 2, 2, 2)) if k3 else src_bgr)  # (B, 4, H, W)
            return out.reshape(out.shape[0], 4, H // 4, 4, W // 4, 4)[ib, :, rows, :, cols, :]
        so = 4 if k3 else 2  # a patch's stage-1 output starts at half-resolution pixel 2 * row - 1 (kernel 3)
        off = torch.arange(so, device=src.device)
        ry, rx = (2 * rows)[:, None, None] + off[:, None], (2 * cols)[:, None, None] + off
        xs = x.permute(0, 2, 3, 1)[ib[:, None, None], ry, rx].permute(0, 3, 1, 2)  # (N, 16, so, so)
        b2 = 2 if k3 else 0
        return self.stage2(xs, pair_windows(src, bgr, ib, 4 * rows - b2, 4 * cols - b2, 2 * so, b2))

    def hid_on_blocks(self, n_blocks: int, coarse_shape: tuple[int, ...]) -> bool:
        """Whether to make the hidden channels on ``n_blocks`` blocks rather than on the whole coarse grid."""
        if self.hid_path != "auto" or self.costs is None:
            return self.hid_path != "dense"
        B, _, h, w = coarse_shape
        return self.costs.blocks * n_blocks * (HID_BLOCK + 2) ** 2 < self.costs.hid * B * h * w

    def _coarse_where_read(self, low, src, bgr, pha, fgr, b_ib, b_y, b_x) -> BlockStore:
        """``[hid, pha, fgr]`` (36 channels at the size of ``src``) on the :data:`HID_BLOCK` blocks ``(b_ib, b_y,
        b_x)`` (:func:`blocks_read`), with the hidden channels ``relu(conv4(feat))[:, 5:]`` computed there only.

        ``feat``, the last conv's input, is ``[upsample(low), src, bgr]`` (see :meth:`coarse`), never made whole.
        Where ``src`` is ``low`` upsampled by exactly 2, each block's part from ``low`` is one conv of a 4 × 4
        window of ``low`` per output phase (as :func:`up2_conv3x3`, with its border corrections on the blocks on
        the image's border); elsewhere it is the conv of each block's window of ``upsample(low)``, resampled
        from ``low`` (:func:`sample_crops`).
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
        pre = F.conv2d(pair_windows(src, bgr, b_ib, top, left, bs + 2, bs).to(low.dtype), weight[:, n_low:], bias)
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
            add_on_block_edge(pre, table[:, 0], rows[:, :, 0], row=0)
            add_on_block_edge(pre, table[:, (h - 1) // bs], rows[:, :, 1], row=(h - 1) % bs)
            add_on_block_edge(pre, table[:, :, 0], cols[..., 0], col=0)
            add_on_block_edge(pre, table[:, :, (w - 1) // bs], cols[..., 1], col=(w - 1) % bs)
        else:
            feat = sample_crops(low, b_ib, top, left, (h, w), bs + 2)
            pre = pre + F.conv2d(feat, weight[:, :n_low])  # two convs: no concatenated copy of their inputs
            pre = torch.cat([pre.new_zeros(1, *pre.shape[1:]), pre])
        pf = F.pad(torch.cat([pha, fgr.to(pha.dtype)], dim=1), (0, nbx * bs - w, 0, nby * bs - h))
        pf = pf.view(B, -1, nby, bs, nbx, bs)[b_ib, :, b_y, :, b_x, :]  # (nb, 4, bs, bs)
        store = pre.new_zeros(nb + 1, bs, bs, pre.shape[1] + pf.shape[1])
        store[..., :pre.shape[1]] = pre.relu_().permute(0, 2, 3, 1)
        store[1:, :, :, pre.shape[1]:] = pf.permute(0, 2, 3, 1)
        return BlockStore(store, table, (h, w))
