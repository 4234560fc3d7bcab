"""FastMatting and the backends: the same outputs as the reference modules, by a different route."""

import itertools
import sys

import pytest
import torch
import torch.nn.functional as F

from bgmatting import BgMattingError, MattingBase, MattingRefine
from bgmatting.backends import make_runner, onnxruntime_available, resolve_backend
from bgmatting.models import BACKBONES
from bgmatting.models.optimised import FastMatting, WinogradConv2d, fast_matting, fold_batchnorm, nnpack_available
from bgmatting.models.optimised.crops import (
    blocks_read,
    fetched_crops,
    pair_windows,
    pair_windows_by_pixel,
    pool2,
    sample_crops,
    tensor_fetch,
    tiles_of,
)
from bgmatting.models.optimised.polyphase import nearest2_polyphase, up2_conv3x3
from bgmatting.models.patches import crop_patches

from helpers import randomize_

TOL = 1e-4
CPU = torch.device("cpu")


def _max_diff(a, b):
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))


def _pair(rng, b=2, h=120, w=100):
    return torch.rand(b, 3, h, w, generator=rng), torch.rand(b, 3, h, w, generator=rng)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_fold_batchnorm_keeps_the_function(backbone, rng):
    model = randomize_(MattingBase(backbone))
    folded = fold_batchnorm(randomize_(MattingBase(backbone)))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    src, bgr = _pair(rng, 1, 64, 48)
    with torch.no_grad():
        assert _max_diff(model(src, bgr), folded(src, bgr)) <= TOL


def test_fold_batchnorm_pairs_by_order_not_by_name(rng):
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.project = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.norm = torch.nn.BatchNorm2d(4)  # follows the conv: folded, whatever the names
            self.act = torch.nn.ReLU()
            self.head = torch.nn.Conv2d(4, 5, 1)
            self.other = torch.nn.BatchNorm2d(6)  # over other channels than the conv before it: left alone

        def forward(self, x):
            return self.head(self.act(self.norm(self.project(x))))

    block = Block().eval()
    with torch.no_grad():
        for bn in (block.norm, block.other):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    x = torch.rand(2, 3, 8, 8, generator=rng)
    with torch.no_grad():
        want = block(x)
        folded = fold_batchnorm(block)
        assert isinstance(folded.norm, torch.nn.Identity) and isinstance(folded.other, torch.nn.BatchNorm2d)
        assert float((folded(x) - want).abs().max()) <= 1e-5


@pytest.mark.parametrize("mode,kernel_size,static,scale", [
    *itertools.product(("sampling", "thresholding"), (3, 1), (False, True), (1 / 4, 1 / 2, 0.3)),
    ("full", 3, False, 1 / 4), ("full", 1, False, 1 / 2)])
def test_fast_refine_matches_reference(mode, kernel_size, static, scale, rng):
    model = randomize_(MattingRefine("mobilenetv2", backbone_scale=scale, refine_mode=mode,
                                     refine_sample_pixels=16 * 200, refine_kernel_size=kernel_size))
    fast = FastMatting(model, static=static)
    src, bgr = _pair(rng)
    with torch.no_grad():
        if mode == "thresholding":  # split the patches so that selection matters, far from any error value
            err = F.interpolate(model(src, bgr)[4], size=(30, 25), mode="bilinear")
            v = err[err > 0].unique()
            mid = v[len(v) // 4: 3 * len(v) // 4]
            i = int((mid[1:] - mid[:-1]).argmax())
            model.refiner.threshold = fast.refiner.threshold = float(mid[i] + mid[i + 1]) / 2
        expected, got = model(src, bgr), fast(src, bgr)
    refined = int(expected[5].sum())
    if mode != "full":
        assert 0 < refined < expected[5].numel()
    assert torch.equal(expected[5], got[5])
    assert _max_diff(expected, got) <= TOL


@pytest.mark.parametrize("static", (False, True))
def test_prevent_oversampling_drops_zero_error_patches(static, rng):
    # k = every patch, but the error map of these weights is 0 on about 2/3 of them
    model = randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=16 * 30 * 25))
    fast = FastMatting(model, static=static)
    src, bgr = _pair(rng)
    with torch.no_grad():
        expected, got = model(src, bgr), fast(src, bgr)
    assert 0 < int(expected[5].sum()) < expected[5].numel()
    assert torch.equal(expected[5], got[5])
    assert _max_diff(expected, got) <= TOL


def test_nothing_to_refine_gives_the_upsampled_coarse_result(rng):
    model = randomize_(MattingRefine("mobilenetv2", refine_mode="thresholding", refine_threshold=2.0))
    src, bgr = _pair(rng)
    with torch.no_grad():
        expected, got = model(src, bgr), FastMatting(model)(src, bgr)
    assert int(expected[5].sum()) == 0 and torch.equal(expected[5], got[5])
    assert _max_diff(expected, got) <= TOL


@pytest.mark.parametrize("sparse_hid", (False, True))
def test_encoder_replaces_the_backbone_and_aspp(sparse_hid, rng):
    model = randomize_(MattingRefine("mobilenetv2"))
    calls = []

    def encoder(s, b):  # what the backbone and ASPP compute
        calls.append(s.shape)
        return model.encode(s, b)[:4]

    src, bgr = _pair(rng, 1)
    with torch.no_grad():
        fast = FastMatting(model, encoder=encoder, sparse_hid=sparse_hid)
        got = fast(src, bgr)
        expected = model(src, bgr)
    assert fast.sparse_hid == sparse_hid and calls == [(1, 3, 30, 25)]
    assert _max_diff(expected, got) <= TOL


@pytest.mark.parametrize("mode,static", [("sampling", False), ("thresholding", False), ("sampling", True),
                                         ("full", False)])
def test_sparse_hid_is_used_when_patches_are_chosen_per_frame(mode, static):
    model = MattingRefine("mobilenetv2", refine_mode=mode)
    assert FastMatting(model, static=static).sparse_hid == (mode != "full" and not static)
    assert not FastMatting(MattingBase("mobilenetv2")).sparse_hid


@pytest.mark.parametrize("coarse_size", [(37, 29), (38, 30), (40, 32)])
@pytest.mark.parametrize("resized", (True, False))
def test_coarse_where_read_equals_the_dense_coarse_maps_on_what_is_read(coarse_size, resized, rng):
    """Blocks the crops read hold exactly the dense hidden channels (made from the low-resolution features, as
    the base network does), with pha and fgr; a gap in the selection stays 0. Crops resampled by 2 (backbone
    scale 1/4) and not resampled (1/2); coarse maps that are the low features upsampled by exactly 2 (one conv
    per phase, border corrections on the blocks along all four edges) or not."""
    model = randomize_(MattingRefine("mobilenetv2"))
    fast = FastMatting(model)
    low = torch.rand(2, 48, (coarse_size[0] + 1) // 2, (coarse_size[1] + 1) // 2, generator=rng)
    src, bgr, pha, fgr = (torch.rand(2, c, *coarse_size, generator=rng) for c in (3, 3, 1, 3))
    conv = fast.net.decoder.conv4
    feat = fast.net.decoder.up_cat(low, torch.cat([src, bgr], 1))
    dense = torch.cat([F.conv2d(feat, conv.weight, conv.bias, padding=1)[:, 5:].relu(), pha, fgr], 1)
    scale = 2 if resized else 1
    out_size = (scale * coarse_size[0], scale * coarse_size[1])
    ib, rows, cols = torch.tensor([0, 1, 1]), torch.tensor([0, 20, 30]) * scale, torch.tensor([0, 5, 22]) * scale
    size = 14
    with torch.no_grad():
        blocks = blocks_read(tuple(src.shape), ib, rows, cols, out_size, size)
        store = fast._coarse_where_read(low, src, bgr, pha, fgr, *blocks)
        crops = fetched_crops(store.fetch, (store.h, store.w), ib, rows, cols, out_size, size)
        sparse = store.dense()
    assert sparse.shape == dense.shape
    assert torch.allclose(crops, sample_crops(dense, ib, rows, cols, out_size, size), atol=1e-5)
    known = (sparse != 0).any(1, keepdim=True)
    assert torch.allclose(sparse, dense * known, atol=1e-5)  # what is known is right
    assert not bool(known[0, :, 20:, :].any())  # item 0: only its top-left corner is read
    assert 0 < int(known.sum()) < known.numel() // 2


@pytest.mark.parametrize("shape", [(2, 5, 2, 3), (1, 7, 9, 12), (1, 3, 7, 2), (1, 48, 17, 30)])
def test_up2_conv3x3_equals_upsample_then_conv(shape, rng):
    x = torch.rand(*shape, generator=rng)
    weight = torch.randn(5, shape[1], 3, 3, generator=rng) * 0.2
    up = F.interpolate(x.double(), size=(2 * shape[2], 2 * shape[3]), mode="bilinear", align_corners=False)
    expected = F.conv2d(up, weight.double(), padding=1)
    with torch.no_grad():
        got = up2_conv3x3(x, weight)
    assert got.shape == expected.shape
    assert float((got.double() - expected).abs().max()) <= 1e-5 * float(expected.abs().max())


@pytest.mark.parametrize("size", (4, 10))
def test_nearest2_polyphase_equals_nearest_upsample_then_valid_conv(size, rng):
    x = torch.rand(3, 16, size, size, generator=rng)
    weight = torch.randn(12, 16, 3, 3, generator=rng)
    expected = F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight)
    got = F.pixel_shuffle(F.conv2d(x, nearest2_polyphase(weight)), 2)
    assert got.shape == expected.shape == (3, 12, 2 * size - 2, 2 * size - 2)
    assert torch.allclose(got, expected, atol=1e-5)


def test_fast_matting_computes_the_last_conv_at_low_resolution_where_it_can(rng, monkeypatch):
    """At backbone scale 1/2 the decoder's last upsampling is by exactly 2 here (up2_conv3x3 used); at 1/4 it is
    not (30 rows from 15, 25 columns from 13: the direct conv). Both match the reference."""
    from bgmatting.models.optimised import fast_matting as fast_module

    calls = []
    real = fast_module.up2_conv3x3
    monkeypatch.setattr(fast_module, "up2_conv3x3", lambda *a: calls.append(a[0].shape) or real(*a))
    src, bgr = _pair(rng, 1)
    for scale, used in ((1 / 2, True), (1 / 4, False)):
        calls.clear()
        model = randomize_(MattingRefine("mobilenetv2", backbone_scale=scale, refine_sample_pixels=16 * 200))
        with torch.no_grad():
            expected, got = model(src, bgr), FastMatting(model)(src, bgr)
        assert bool(calls) == used
        assert _max_diff(expected, got) <= TOL


@pytest.mark.skipif(not nnpack_available(), reason="this PyTorch has no NNPACK")
def test_winograd_conv_equals_conv_and_serves_the_decoder(rng):
    conv = torch.nn.Conv2d(24, 16, 3, padding=1)
    wino = WinogradConv2d.from_conv(conv)
    x = torch.rand(2, 24, 19, 33, generator=rng)
    with torch.no_grad():
        assert float((wino(x) - conv(x)).abs().max()) <= 1e-4
    fast = FastMatting(MattingRefine("mobilenetv2"))
    assert fast.winograd and all(isinstance(getattr(fast.net.decoder, f"conv{i}"), WinogradConv2d) for i in (1, 2, 3))
    assert not FastMatting(MattingRefine("mobilenetv2"), winograd=False).winograd
    with pytest.raises(ValueError, match="3x3"):
        WinogradConv2d.from_conv(torch.nn.Conv2d(4, 4, 1))


@pytest.mark.skipif(not nnpack_available(), reason="this PyTorch has no NNPACK")
def test_winograd_conv_gives_nnpack_one_image_per_call(rng, monkeypatch):
    from bgmatting.models.optimised import winograd as fast_module

    batches, real = [], torch._nnpack_spatial_convolution

    def spy(x, *args):
        batches.append(x.shape[0])
        return real(x, *args)

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", spy)
    x, w = torch.rand(3, 8, 9, 11, generator=rng), torch.rand(4, 8, 3, 3, generator=rng)
    b = torch.rand(4, generator=rng)
    with torch.no_grad():
        got = fast_module.winograd_conv(x, w, b, (1, 1))
    assert batches == [1, 1, 1]
    assert float((got - F.conv2d(x, w, b, padding=1)).abs().max()) <= 1e-4


def test_winograd_conv_falls_back_to_onednn_if_nnpack_fails(rng, monkeypatch):
    from bgmatting.models.optimised import winograd as fast_module

    def broken(*args):
        raise RuntimeError("NNPACK SpatialConvolution_updateOutput failed")

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", broken)
    monkeypatch.setattr(fast_module, "nnpack_available", lambda: True)
    monkeypatch.setattr(fast_module, "_nnpack_failed", False)
    x, w, b = torch.rand(1, 8, 9, 9, generator=rng), torch.rand(4, 8, 3, 3, generator=rng), torch.rand(4, generator=rng)
    with torch.no_grad(), pytest.warns(UserWarning, match="NNPACK failed"):
        got = fast_module.winograd_conv(x, w, b, (1, 1))
    assert torch.allclose(got, F.conv2d(x, w, b, padding=1)) and fast_module._nnpack_failed
    with torch.no_grad():  # no second try, no second warning
        assert torch.allclose(fast_module.winograd_conv(x, w, b, (1, 1)), F.conv2d(x, w, b, padding=1))


@pytest.mark.parametrize("preset", (None, "ACTIVE"))
def test_import_asks_openmp_not_to_spin_unless_told_otherwise(preset):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    code = "import bgmatting, os; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == (preset or "PASSIVE")


@pytest.mark.parametrize("size,out_size,crop", [((30, 25), (60, 50), 8), ((15, 13), (60, 50), 14),
                                               ((60, 50), (60, 50), 8), ((17, 23), (60, 50), 6)])
def test_sample_crops_equals_resize_then_crop(size, out_size, crop, rng):
    x = torch.rand(2, 5, *size, generator=rng)
    resized = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
    border = 3
    n = 40
    ib = torch.randint(0, 2, (n,), generator=rng)
    rows = torch.randint(-border, out_size[0] - crop + border, (n,), generator=rng)
    cols = torch.randint(-border, out_size[1] - crop + border, (n,), generator=rng)
    got = sample_crops(x, ib, rows, cols, out_size, crop)
    padded = F.pad(resized, (border, border + crop, border, border + crop))
    expected = torch.stack([padded[b, :, r + border:r + border + crop, c + border:c + border + crop]
                            for b, r, c in zip(ib.tolist(), rows.tolist(), cols.tolist())])
    assert got.shape == (n, 5, crop, crop)
    assert float((got - expected).abs().max()) <= 1e-5


@pytest.mark.parametrize("size", (8, 14))
def test_stage1_of_crops_of_a_map_upsampled_by_2_is_one_conv_per_phase(size, rng):
    """Stage 1's first conv of crops of a coarse map upsampled x2, computed on the map itself (one 3x3 conv per
    output phase), equals the conv of the upsampled crops, for crops inside the image and reaching out of it."""
    model = randomize_(MattingRefine("mobilenetv2", backbone_scale=1 / 4))
    fast = FastMatting(model)
    h, w = 15, 13
    x = torch.rand(2, 36, h, w, generator=rng)
    n = 60
    ib = torch.randint(0, 2, (n,), generator=rng)
    rows = torch.randint(-2, 2 * h - size + 3, (n,), generator=rng) // 2 * 2 + 1  # odd, as the refiner's crops
    cols = torch.randint(-2, 2 * w - size + 3, (n,), generator=rng) // 2 * 2 + 1
    inside = (rows >= 0) & (rows + size <= 2 * h) & (cols >= 0) & (cols + size <= 2 * w)
    assert 0 < int(inside.sum()) < n
    with torch.no_grad():
        want = fast.stage1_coarse(sample_crops(x, ib, rows, cols, (2 * h, 2 * w), size))
        got = fast._stage1_coarse_up2(tensor_fetch(x), (h, w), ib, rows, cols, size)
        assert float((got - want).abs().max()) <= 1e-5
        inner = torch.nonzero(inside).flatten()  # all inside: the polyphase conv alone
        got = fast._stage1_coarse_up2(tensor_fetch(x), (h, w), ib[inner], rows[inner], cols[inner], size)
        assert float((got - want[inner]).abs().max()) <= 1e-5


def test_the_refiner_at_backbone_scale_1_4_convolves_the_coarse_map_not_its_upsampled_crops(rng, monkeypatch):
    model = randomize_(MattingRefine("mobilenetv2", backbone_scale=1 / 4, refine_sample_pixels=16 * 400))
    seen = []
    real = FastMatting._stage1_coarse_up2

    def spy(self, *args):
        seen.append(args[2].shape[0])
        return real(self, *args)

    monkeypatch.setattr(FastMatting, "_stage1_coarse_up2", spy)
    src, bgr = _pair(rng)
    for path in ("tiles", "patches"):
        seen.clear()
        with torch.no_grad():
            expected, got = model(src, bgr), FastMatting(model, refine_path=path)(src, bgr)
        assert seen and seen[0] > 0
        assert torch.equal(expected[5], got[5]) and _max_diff(expected, got) <= TOL


@pytest.mark.parametrize("shape,channels_last", [((2, 6, 16, 16), False), ((1, 3, 40, 60), False),
                                                  ((3, 6, 8, 8), True), ((1, 3, 7, 10), False)])
def test_pool2_is_avg_pool2d_bit_for_bit(shape, channels_last, rng):
    x = torch.rand(*shape, generator=rng)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(pool2(x), F.avg_pool2d(x, 2))


@pytest.mark.parametrize("cover", (0.0, float("inf")))
@pytest.mark.parametrize("path", ("tiles", "patches"))
def test_stage_1_windows_pooled_whole_or_one_by_one_agree(cover, path, rng, monkeypatch):
    """Stage 1's half-resolution [src, bgr] windows, cut from the images pooled once or pooled one by one."""
    monkeypatch.setattr(fast_matting, "POOL_WINDOWS_COVER", cover)
    model = randomize_(MattingRefine("mobilenetv2", backbone_scale=1 / 4, refine_sample_pixels=16 * 400))
    src, bgr = _pair(rng)
    calls = []
    real = fast_matting.pair_windows
    monkeypatch.setattr(fast_matting, "pair_windows", lambda *a: calls.append(a[0].shape[2]) or real(*a))
    with torch.no_grad():
        expected, got = model(src, bgr), FastMatting(model, refine_path=path)(src, bgr)
    assert torch.equal(expected[5], got[5]) and _max_diff(expected, got) <= TOL
    pooled_images = [h for h in calls if h == src.shape[2] // 2]
    assert bool(pooled_images) == (cover == 0.0)


@pytest.mark.parametrize("size,margin", [(16, 6), (28, 18), (6, 4), (8, 2)])
def test_windows_gathered_whole_or_by_pixel_agree(size, margin, rng):
    """The two ways of cutting [src, bgr] windows (a view of the padded images, or pixel by pixel), on windows
    that reach out of the image by up to ``margin`` on every side, and on images smaller than the windows."""

    for h, w in ((40, 36), (4, 8)):
        src, bgr = _pair(rng, 2, h, w)
        n = 300  # enough windows to cover the images: gathered whole
        ib = torch.randint(0, 2, (n,), generator=rng)
        top = torch.randint(-margin, h + margin - size + 1, (n,), generator=rng)
        left = torch.randint(-margin, w + margin - size + 1, (n,), generator=rng)
        expected = pair_windows_by_pixel(src, bgr, ib, top, left, size)
        assert torch.equal(pair_windows(src, bgr, ib, top, left, size, margin), expected)
        assert torch.equal(pair_windows(src, bgr, ib[:1], top[:1], left[:1], size, margin), expected[:1])  # by pixel


def test_crop_patches_reference_agrees_with_pair_windows(rng):
    # the reference refiner's crops are the windows FastMatting cuts (the tiles' layout is an offset of them)

    src, bgr = _pair(rng, 2, 40, 32)
    idx = torch.tensor([[0, 0, 0], [1, 9, 7], [0, 4, 3]])
    expected = crop_patches(torch.cat([src, bgr], 1), idx, 4, 2)
    got = pair_windows(src, bgr, idx[:, 0], 4 * idx[:, 1] - 2, 4 * idx[:, 2] - 2, 8, 2)
    assert torch.equal(expected, got)


def test_resolve_backend():
    assert resolve_backend("eager", CPU) == "eager"
    assert resolve_backend("auto", CPU) == ("onnxruntime" if onnxruntime_available() else "eager")
    with pytest.raises(BgMattingError, match="CUDA"):
        resolve_backend("graph", CPU)
    with pytest.raises(BgMattingError, match="backend must be one of"):
        resolve_backend("tensorrt", CPU)


def test_a_default_install_runs_the_backbone_with_onnxruntime_on_the_cpu(monkeypatch):
    # issue 16: ResNet-50 on scattered patches reaches 1.5x the original only with ONNX Runtime, so it is a
    # dependency of the package itself (not an extra), and `auto` picks it on the CPU
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    core = [Requirement(r) for r in requires("bgmatting") if "extra ==" not in r]
    assert {"onnxruntime", "onnx"} <= {r.name for r in core}  # onnx: torch's exporter needs it
    assert onnxruntime_available()
    assert resolve_backend("auto", CPU) == "onnxruntime"
    assert resolve_backend("auto", CPU, "bf16") == "eager"  # ONNX Runtime runs fp32 only
    # where either is missing all the same: `auto` falls back, and asking for it says how to install them
    from bgmatting import backends

    monkeypatch.setitem(sys.modules, "onnx", None)
    assert not backends.onnxruntime_available()
    assert resolve_backend("auto", CPU) == "eager"
    with pytest.raises(BgMattingError, match="missing here: pip install onnxruntime onnx$"):
        resolve_backend("onnxruntime", CPU)


@pytest.mark.parametrize("backend", ("reference", "eager", "onnxruntime"))
@pytest.mark.parametrize("arch", ("base", "refine"))
def test_runners_match_reference(backend, arch, rng):
    if backend == "onnxruntime" and not onnxruntime_available():
        pytest.skip("onnxruntime not installed")
    model = randomize_(MattingBase("mobilenetv2") if arch == "base" else MattingRefine("mobilenetv2"))
    name, runner = make_runner(model, backend, CPU)
    assert name == backend
    src, bgr = _pair(rng, 2, 96, 80)  # a size other than the export example
    with torch.no_grad():
        assert _max_diff(model(src, bgr), runner(src, bgr)) <= TOL


def test_onnx_cache_reuses_and_prunes(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from bgmatting import backends

    monkeypatch.setattr(backends, "CACHE_KEEP", 2)
    calls = []
    real = backends._encoder_onnx
    monkeypatch.setattr(backends, "_encoder_onnx", lambda m: calls.append(1) or real(m))
    models = [randomize_(MattingBase("mobilenetv2"), seed=s) for s in range(3)]
    (tmp_path / "base-0123.onnx").write_bytes(b"")  # what earlier versions cached: removed
    first = backends.cached_encoder_onnx(models[0], tmp_path)
    assert backends.cached_encoder_onnx(models[0], tmp_path) == first and len(calls) == 1  # second call: from disk
    backends.cached_encoder_onnx(models[1], tmp_path)
    backends.cached_encoder_onnx(models[2], tmp_path)
    assert len(calls) == 3 and len(list(tmp_path.glob("encoder-*.onnx"))) == 2
    assert not list(tmp_path.glob("base-*.onnx"))
    assert not list(tmp_path.glob(".*"))  # no temporary file left


class _FakeGraph:
    """Stands in for torch.cuda.CUDAGraph on the CPU: replay re-runs what was captured on the static inputs."""

    capturing = None

    def replay(self):
        for out, new in zip(self.outputs, self.fn()):
            out.copy_(new)


class _FakeStream:
    def wait_stream(self, other):
        pass


@pytest.mark.slow
def test_cuda_graph_runner_logic_with_a_fake_graph(monkeypatch, rng):
    """The runner's static buffers, replay and per-shape cache (the real capture needs a GPU)."""
    from contextlib import contextmanager

    from bgmatting import backends

    @contextmanager
    def graph(g):
        _FakeGraph.capturing = g
        yield
        _FakeGraph.capturing = None

    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "Stream", _FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextmanager(lambda: (yield))())
    monkeypatch.setattr(torch.cuda, "current_stream", _FakeStream)

    class Probe(backends.CudaGraphRunner):
        def _run(self, src, bgr):
            out = super()._run(src, bgr)
            g = _FakeGraph.capturing
            if g is not None:  # what the capture recorded: this module on these (static) buffers
                g.fn, g.outputs = (lambda: backends.CudaGraphRunner._run(self, src, bgr)), out
            return out

    model = randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=16 * 100))
    runner = Probe(FastMatting(model, static=True), max_graphs=2)
    frames = [_pair(rng, 1, 64, 48) for _ in range(2)] + [_pair(rng, 1, 48, 64), _pair(rng, 1, 32, 32)]
    with torch.no_grad():
        first = runner(*frames[0])
        second = runner(*frames[1])  # same shape: replayed on the new frame
        assert len(runner.graphs) == 1
        assert _max_diff(model(*frames[1]), second) <= TOL
        assert _max_diff(model(*frames[0]), first) <= TOL  # earlier outputs are copies, not the static buffers
        runner(*frames[2])
        runner(*frames[3])
    assert len(runner.graphs) == 2 and (1, 3, 64, 48) not in {k[0] for k in runner.graphs}  # oldest dropped


def _capture(fast, src, bgr):
    """Trace ``fast`` whole with TorchDynamo (no compiler): it raises at any op whose result depends on the data
    (``nonzero``, ``unique``, ``.item()``, a Python branch on a tensor), which a CUDA graph cannot capture either."""
    torch._dynamo.reset()
    try:
        traced = torch.compile(fast, backend="eager", fullgraph=True, dynamic=False)
        with torch.no_grad():
            return traced(src, bgr)
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("options", [dict(refine_sample_pixels=16 * 100),
                                     dict(refine_sample_pixels=16 * 100, refine_kernel_size=1,
                                          refine_prevent_oversampling=False),
                                     dict(refine_mode="full"), None])
@pytest.mark.slow
def test_graph_backend_module_has_no_host_synchronisation(options, rng):
    """What the CUDA graph backend captures (the static twin, models as ``make_runner`` builds it on CUDA) traces
    as one graph with fixed shapes; the per-frame twin, with its data-dependent patch count, does not."""
    model = randomize_(MattingBase("mobilenetv2") if options is None else MattingRefine("mobilenetv2", **options))
    fast = FastMatting(model, static=True, channels_last=True, winograd=False)  # winograd is CPU-only
    src, bgr = _pair(rng, 2, 64, 48)
    with torch.no_grad():
        assert _max_diff(_capture(fast, src, bgr), model(src, bgr)) <= TOL
    if options is not None and "refine_mode" not in options:
        with pytest.raises(torch._dynamo.exc.Unsupported):
            _capture(FastMatting(model, static=False, winograd=False), src, bgr)


@pytest.mark.parametrize("mode,static", [("sampling", True), ("sampling", False), ("full", True)])
def test_twin_under_fp16_autocast_follows_the_model_under_it(mode, static, rng):
    """The dtype plumbing of ``--precision fp16`` (autocast, as on CUDA), checked with the CPU's autocast."""
    model = randomize_(MattingRefine("mobilenetv2", refine_mode=mode, refine_sample_pixels=16 * 100))
    fast = FastMatting(model, static=static, winograd=False)
    src, bgr = _pair(rng, 2, 64, 48)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        expected, got = model(src, bgr), fast(src, bgr)
    assert torch.equal(expected[5], got[5])  # the same patches refined
    assert _max_diff(expected, got) <= 2e-3


# ------------------------------------------------------------------ the refiner's paths and their cost model

PATHS = [("tiles", "blocks"), ("tiles", "dense"), ("patches", "blocks"), ("patches", "dense"), ("dense", "auto"),
         ("full", "auto")]


def _mixed_pair(h=96, w=128):
    """Item 0: the noise worst case (patches scattered); item 1: the example photo (patches along the subject)."""
    from bgmatting.bench import example_pair, noise_pair

    (s0, b0), (s1, b1) = noise_pair((h, w)), example_pair((h, w))
    return torch.cat([s0, s1]), torch.cat([b0, b1])


def _split_threshold(model, src, bgr, grid):
    """A threshold between two error values of the middle of the range, far from both."""
    with torch.no_grad():
        err = F.interpolate(model(src, bgr)[4], size=grid, mode="bilinear")
    v = err[err > 0].unique()
    mid = v[len(v) // 4: 3 * len(v) // 4]
    i = int((mid[1:] - mid[:-1]).argmax())
    return float(mid[i] + mid[i + 1]) / 2


@pytest.mark.parametrize("path,hid_path", PATHS)
@pytest.mark.parametrize("mode", ("sampling", "thresholding"))
@pytest.mark.parametrize("backbone,scale", [("mobilenetv2", 1 / 2), ("resnet50", 1 / 4)])
@pytest.mark.slow
def test_every_refine_path_matches_reference(backbone, scale, mode, path, hid_path):
    """Each way of running the refiner, forced, on a batch whose items select different numbers of patches
    (scattered over a noise background in one, along a subject's outline in the other)."""
    model = randomize_(MattingRefine(backbone, backbone_scale=scale, refine_mode=mode,
                                     refine_sample_pixels=16 * 500))
    src, bgr = _mixed_pair()
    if mode == "thresholding":
        model.refiner.threshold = _split_threshold(model, src, bgr, (24, 32))
    fast = FastMatting(model, refine_path=path, hid_path=hid_path)
    with torch.no_grad():
        expected, got = model(src, bgr), fast(src, bgr)
    counts = expected[5].sum((1, 2, 3))
    assert 0 < float(counts.min()) and float(counts.max()) < 24 * 32 and counts[0] != counts[1]
    assert torch.equal(expected[5], got[5])
    assert _max_diff(expected, got) <= TOL


@pytest.mark.parametrize("path,hid_path", PATHS)
def test_every_refine_path_with_kernel_size_1(path, hid_path, rng):
    model = randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=16 * 200, refine_kernel_size=1))
    src, bgr = _pair(rng)
    with torch.no_grad():
        expected, got = model(src, bgr), FastMatting(model, refine_path=path, hid_path=hid_path)(src, bgr)
    assert 0 < int(expected[5].sum()) and torch.equal(expected[5], got[5])
    assert _max_diff(expected, got) <= TOL


@pytest.mark.parametrize("kernel_size", (3, 1))
def test_the_dense_refiner_gives_each_patch_what_its_crops_give(kernel_size, rng):
    """What the dense paths rest on: the refiner's full mode (valid convs on the zero-padded whole image) has, at
    every patch, the values that the patch's own crops give (sampling mode), at the image's borders too."""
    model = randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=16 * 30 * 25,
                                     refine_kernel_size=kernel_size, refine_prevent_oversampling=False))
    src, bgr = _pair(rng)
    with torch.no_grad():
        src_sm, bgr_sm = model.shrink(src, bgr)
        coarse = model.coarse(src_sm, bgr_sm)
        sparse = model.refiner(src, bgr, *coarse)
        model.refiner.mode = "full"
        dense = model.refiner(src, bgr, *coarse)
    assert int(sparse[2].sum()) == 2 * 30 * 25  # every patch of both items, from its own crops
    assert _max_diff(sparse[:2], dense[:2]) <= 1e-5


@pytest.mark.parametrize("path", ("patches", "dense", "full", "auto"))
@pytest.mark.slow
def test_static_paths_match_reference_with_no_host_synchronisation(path, rng):
    model = randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=16 * 100))
    fast = FastMatting(model, static=True, winograd=False, refine_path=path)
    src, bgr = _pair(rng, 2, 64, 48)
    with torch.no_grad():
        assert _max_diff(_capture(fast, src, bgr), model(src, bgr)) <= TOL
    with pytest.raises(ValueError, match="tiles"):
        FastMatting(model, static=True, refine_path="tiles")
    with pytest.raises(ValueError, match="refine_path"):
        FastMatting(model, refine_path="sparse")


def _hd_selection(kind, n, rng):
    """``n`` patch indices on the 1/4 grid of an HD frame (270 x 480): ``scattered`` uniformly over the frame, or
    ``clustered`` in a band along the outline of an ellipse (as along a subject's edge)."""
    if kind == "scattered":
        flat = torch.randperm(270 * 480, generator=rng)[:n]
    else:
        y, x = torch.meshgrid(torch.arange(270.0), torch.arange(480.0), indexing="ij")
        r = (((y - 150) / 110) ** 2 + ((x - 240) / 100) ** 2).sqrt()
        flat = (r - 1).abs().flatten().argsort()[:n]
    ib = torch.zeros_like(flat)
    return ib, flat // 480, flat % 480


@pytest.mark.parametrize("backbone,scale", [("mobilenetv2", 1 / 2), ("resnet50", 1 / 4)])
def test_cost_model_goes_dense_when_the_patches_are_scattered(backbone, scale, rng):
    """The CPU's costs, on HD selections of the same size (20000 patches, 15% of the frame): tiles (and hidden
    channels on blocks) for patches along an outline; the whole image for patches spread over the frame.
    Behaviour only, nothing is timed."""
    fast = FastMatting(MattingRefine(backbone, backbone_scale=scale))
    coarse = (int(1080 * scale), int(1920 * scale))
    picked = {}
    for kind in ("clustered", "scattered"):
        ib, rows, cols = _hd_selection(kind, 20_000, rng)
        tiles = tiles_of((270, 480), ib, rows, cols)
        picked[kind] = fast.choose_path(1, (1080, 1920), coarse, ib.shape[0], tiles[0].shape[0])
        if kind == "clustered":
            blocks = blocks_read((1, 3, *coarse), tiles[0], 2 * tiles[1] - 3, 2 * tiles[2] - 3, (540, 960), 14)
            assert fast.hid_on_blocks(blocks[0].shape[0], (1, 3, *coarse))
    assert picked["clustered"] == "tiles"
    assert picked["scattered"] in ("dense", "full")


def test_a_device_without_costs_keeps_tiles_and_blocks():
    fast = FastMatting(MattingRefine("mobilenetv2"))
    fast.costs = None
    assert fast.choose_path(1, (1080, 1920), (540, 960), 20_000, 8000) == "tiles"
    assert fast.choose_path(1, (1080, 1920), (540, 960), 20_000) == "patches"  # static: no tile count
    assert fast.hid_on_blocks(10 ** 6, (1, 3, 540, 960))


def test_auto_path_asks_the_cost_model_with_the_selection_counts(rng, monkeypatch):
    model = randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=16 * 200))
    fast = FastMatting(model)
    calls = []
    real = fast.choose_path
    monkeypatch.setattr(fast, "choose_path", lambda *a: calls.append(a) or real(*a))
    src, bgr = _pair(rng)
    with torch.no_grad():
        ref = fast(src, bgr)[5]
    ib, rows, cols = torch.nonzero(ref[:, 0], as_tuple=True)
    n_tiles = len(set(zip(ib.tolist(), (rows // 4).tolist(), (cols // 4).tolist())))
    assert calls == [(2, (120, 100), (30, 25), int(ref.sum()), n_tiles)]
