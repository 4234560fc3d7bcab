"""The networks: official-compatible names and shapes, and output parity with the original implementation."""

import itertools

import pytest
import torch

from bgmatting import BgMattingError, MattingBase, MattingRefine
from bgmatting.models import BACKBONES, REFINE_MODES
from bgmatting.models.patches import crop_patches, paste_patches

from helpers import needs, optional, randomize_

ORACLE = "BackgroundMattingV2.model"  # the parity oracle: the original implementation, PyPI backgroundmattingv2==1.0
oracle = optional(ORACLE)
needs_oracle = needs(ORACLE, reason="parity oracle backgroundmattingv2==1.0 missing")

TOL = 1e-4


def _max_diff(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@pytest.mark.parametrize("backbone", BACKBONES)
@needs_oracle
def test_base_state_dict_and_parity(backbone, rng):
    theirs = randomize_(oracle.MattingBase(backbone))
    ours = MattingBase(backbone).eval()
    ref_sd, our_sd = theirs.state_dict(), ours.state_dict()
    assert set(our_sd) == set(ref_sd)
    assert {k: v.shape for k, v in our_sd.items()} == {k: v.shape for k, v in ref_sd.items()}
    ours.load_state_dict(ref_sd, strict=True)
    src, bgr = torch.rand(2, 3, 72, 56, generator=rng), torch.rand(2, 3, 72, 56, generator=rng)
    with torch.no_grad():
        expected, got = theirs(src, bgr), ours(src, bgr)
    assert len(got) == 4
    assert [t.shape for t in got] == [t.shape for t in expected]
    assert _max_diff(expected, got) <= TOL


@pytest.mark.parametrize("backbone,mode,kernel_size", list(itertools.product(BACKBONES, REFINE_MODES, (1, 3))))
@needs_oracle
def test_refine_parity(backbone, mode, kernel_size, rng):
    options = dict(backbone_scale=1 / 4, refine_mode=mode, refine_sample_pixels=16 * 48, refine_threshold=0.1,
                   refine_kernel_size=kernel_size)
    theirs = randomize_(oracle.MattingRefine(backbone, **options))
    ours = MattingRefine(backbone, **options).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    src, bgr = torch.rand(2, 3, 128, 96, generator=rng), torch.rand(2, 3, 128, 96, generator=rng)
    with torch.no_grad():
        if mode == "thresholding":  # a threshold that splits the patches, so selection is really exercised
            err = torch.nn.functional.interpolate(theirs(src, bgr)[4], size=(32, 24), mode="bilinear")
            threshold = float(err[err > 0].median())
            theirs.refiner.threshold = ours.refiner.threshold = threshold
        expected, got = theirs(src, bgr), ours(src, bgr)
    assert len(got) == 6
    assert [t.shape for t in got] == [t.shape for t in expected]
    ref = got[5]
    assert ref.shape == (2, 1, 32, 24)
    refined = int(ref.sum())
    if mode == "full":
        assert refined == ref.numel()
    else:  # a real subset of the 768 patches per image
        assert 0 < refined < ref.numel()
        if mode == "sampling":
            assert (ref.flatten(1).sum(1) <= 48).all()
    assert torch.equal(got[5], expected[5])
    assert _max_diff(expected, got) <= TOL


def test_refine_changes_selected_patches_only(rng):
    """Pixels outside refined patches equal the upsampled coarse result; inside they differ."""
    model = randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=16 * 20))
    src, bgr = torch.rand(1, 3, 64, 64, generator=rng), torch.rand(1, 3, 64, 64, generator=rng)
    with torch.no_grad():
        pha, _fgr, pha_sm, _fgr_sm, _err, ref = model(src, bgr)
    coarse = torch.nn.functional.interpolate(pha_sm, size=(64, 64), mode="bilinear", align_corners=False)
    mask = torch.nn.functional.interpolate(ref, size=(64, 64), mode="nearest").bool()
    assert mask.any() and not mask.all()
    assert torch.allclose(pha[~mask], coarse[~mask], atol=1e-6)
    assert not torch.allclose(pha[mask], coarse[mask], atol=1e-3)


def test_sampling_with_more_pixels_than_the_image_has():
    model = randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=80_000))
    with torch.no_grad():
        out = model(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    assert out[0].shape == (1, 1, 32, 32)


def test_crop_and_paste_patches_roundtrip():
    x = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).reshape(2, 3, 8, 12)
    idx = torch.tensor([[0, 0, 0], [1, 1, 2]])
    patches = crop_patches(x, idx, 4, 0)
    assert patches.shape == (2, 3, 4, 4)
    assert torch.equal(patches[1], x[1, :, 4:8, 8:12])
    bordered = crop_patches(x, idx, 4, 2)
    assert bordered.shape == (2, 3, 8, 8)
    assert torch.equal(bordered[0, :, :2], torch.zeros(3, 2, 8))  # zero border outside the image
    assert torch.equal(bordered[1, :, 2:6, 2:6], x[1, :, 4:8, 8:12])
    pasted = paste_patches(x, -patches, idx)
    assert torch.equal(pasted[1, :, 4:8, 8:12], -x[1, :, 4:8, 8:12])
    untouched = torch.ones_like(x, dtype=torch.bool)
    untouched[0, :, 0:4, 0:4] = untouched[1, :, 4:8, 8:12] = False
    assert torch.equal(pasted[untouched], x[untouched])


@pytest.mark.parametrize("size", [(4, 4), (8, 12), (20, 36)])
def test_tiny_inputs(size):
    model = randomize_(MattingRefine("resnet50", refine_sample_pixels=64))
    with torch.no_grad():
        out = model(torch.rand(1, 3, *size), torch.rand(1, 3, *size))
    assert out[0].shape == (1, 1, *size) and out[1].shape == (1, 3, *size)


@pytest.mark.parametrize("scale, size, seen", [(1 / 8, (4, 4), "0x0"), (1 / 8, (4, 12), "1x0"),
                                               (1 / 1_000_000, (64, 96), "0x0")])
def test_an_input_that_the_backbone_scale_shrinks_to_nothing_is_refused(scale, size, seen):
    from bgmatting.models.optimised import FastMatting

    model = MattingRefine("mobilenetv2", backbone_scale=scale).eval()
    x = torch.rand(1, 3, *size)
    for net in (model, FastMatting(model)):  # the plain module and the inference twin the backends run
        with torch.no_grad(), pytest.raises(BgMattingError, match=f"too small for backbone scale .* would see {seen} "
                                                                  "pixels; use a larger backbone scale"):
            net(x, x)
    with torch.no_grad():  # one pixel for the base network is enough
        out = MattingRefine("mobilenetv2", backbone_scale=1 / 4).eval()(x[..., :4, :4], x[..., :4, :4])
    assert out[0].shape == (1, 1, 4, 4) and out[2].shape == (1, 1, 1, 1)


def test_model_errors():
    with pytest.raises(BgMattingError, match="backbone_scale"):
        MattingRefine("mobilenetv2", backbone_scale=0.75)
    with pytest.raises(ValueError, match="unknown backbone"):
        MattingBase("vgg16")
    with pytest.raises(ValueError, match="refine mode"):
        MattingRefine("mobilenetv2", refine_mode="magic")
    model = MattingRefine("mobilenetv2").eval()
    with pytest.raises(BgMattingError, match="divisible by 4"):
        model(torch.rand(1, 3, 30, 32), torch.rand(1, 3, 30, 32))
    with pytest.raises(BgMattingError, match="same shape"):
        model(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 28))


def test_outputs_in_range_and_fgr_formula(rng):
    model = randomize_(MattingBase("mobilenetv2"))
    src, bgr = torch.rand(1, 3, 32, 32, generator=rng), torch.rand(1, 3, 32, 32, generator=rng)
    with torch.no_grad():
        pha, fgr, err, hid = model(src, bgr)
        _, residual, _, _ = model.coarse(src, bgr)
    for t in (pha, fgr, err):
        assert t.min() >= 0 and t.max() <= 1
    assert hid.shape == (1, 32, 32, 32) and hid.min() >= 0
    assert torch.allclose(fgr, (residual + src).clamp(0, 1))
