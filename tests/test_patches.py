"""The refiner's patches, one definition with options: the selections (top-k, fixed top-k, TopK-free bisection)
and crops (unfold, gather) agree, and the export copy of a model is bit-identical to it."""

import pytest
import torch

from bgmatting import MattingRefine
from bgmatting.export import example_pair, exportable
from bgmatting.models.patches import CROPS, SELECTIONS, crop_patches, paste_patches, select_patches
from bgmatting.models.refiner import Refiner

from helpers import randomize_


@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("mode", ["sampling", "thresholding", "full"])
def test_exportable_copy_is_bit_identical_and_leaves_the_model_alone(mode, kernel):
    model = randomize_(MattingRefine("mobilenetv2", backbone_scale=0.5, refine_mode=mode,
                                     refine_sample_pixels=16 * 40, refine_kernel_size=kernel))
    copy = exportable(model)
    assert (model.refiner.selection, model.refiner.crop) == ("topk", "unfold")
    assert (copy.refiner.selection, copy.refiner.crop) == ("fixed-k", "gather")
    assert exportable(model, topk_free=True).refiner.selection == "bisection"
    for batch_h_w in ((1, 64, 96), (2, 32, 32)):
        src, bgr = example_pair(batch_h_w[1:], batch_h_w[0])
        with torch.no_grad():
            for a, b in zip(model(src, bgr), copy(src, bgr)):
                assert torch.equal(a, b)


@pytest.mark.parametrize("prevent", [True, False])
def test_the_selections_agree_without_ties(prevent):
    g = torch.Generator().manual_seed(0)
    for k_patches, shape in ((5, (2, 1, 6, 8)), (40, (1, 1, 16, 24)), (100, (1, 1, 8, 8))):  # the last: k > patches
        err = torch.rand(shape, generator=g)
        err[err < 0.3] = 0  # exact zeros, as the clamp gives them
        want = select_patches(err, "sampling", 16 * k_patches, 0.1, prevent, "topk")
        most = min(k_patches, shape[2] * shape[3]) * shape[0]
        assert want.shape == err.shape and (want.sum() <= most if prevent else want.sum() == most)
        if prevent:
            assert not (want.bool() & (err == 0)).any()  # no patch without error
        assert torch.equal(select_patches(err, "sampling", 16 * k_patches, 0.1, prevent, "fixed-k"), want)
        if prevent or (err > 0).flatten(1).sum(1).min() >= k_patches:  # otherwise zeros tie at the threshold
            assert torch.equal(select_patches(err, "sampling", 16 * k_patches, 0.1, prevent, "bisection"), want)
        top = want.flatten(1).bool()
        for row, picked in zip(err.flatten(1), top):  # the selected errors are the largest ones
            if picked.any() and (~picked).any():
                assert row[picked].min() >= row[~picked].max()
    # ties at the k-th value: top-k takes some of them, the TopK-free selection takes them all
    err = torch.tensor([0.9, 0.5, 0.5, 0.5, 0.1]).view(1, 1, 1, 5)
    assert select_patches(err, "sampling", 16 * 2, 0.1, True, "bisection").flatten().tolist() == [1, 1, 1, 1, 0]
    assert select_patches(err, "thresholding", 0, 0.4, True).flatten().tolist() == [1, 1, 1, 1, 0]


def test_the_refiner_refuses_unknown_ways_and_says_its_options():
    with pytest.raises(ValueError, match="selection must be one of"):
        Refiner(selection="sorted")
    with pytest.raises(ValueError, match="crop one of"):
        Refiner(crop="slices")
    assert "selection='bisection', crop='gather'" in repr(Refiner(selection="bisection", crop="gather"))
    assert "selection" not in repr(Refiner())
    assert set(SELECTIONS) == {"topk", "fixed-k", "bisection"} and set(CROPS) == {"unfold", "gather"}


@pytest.mark.parametrize("border", [0, 2, 3])
def test_crops_by_unfold_and_by_gather_are_equal_and_paste_back(border):
    x = torch.randn(2, 5, 16, 24, generator=torch.Generator().manual_seed(1))
    idx = torch.tensor([[0, 0, 0], [1, 3, 5], [0, 2, 1], [1, 0, 5]])
    a, b = crop_patches(x, idx, 4, border, "unfold"), crop_patches(x, idx, 4, border, "gather")
    assert a.shape == (4, 5, 4 + 2 * border, 4 + 2 * border) and torch.equal(a, b)
    assert torch.equal(a[1, :, border:border + 4, border:border + 4], x[1, :, 12:16, 20:24])
    if border:
        assert torch.equal(a[0, :, :border], torch.zeros_like(a[0, :, :border]))  # zeros outside the image
    pasted = paste_patches(x, -a[:, :, border:border + 4, border:border + 4], idx)
    assert torch.equal(pasted[1, :, 12:16, 20:24], -x[1, :, 12:16, 20:24])
    assert torch.equal(pasted[0, :, 4:8, 4:8], x[0, :, 4:8, 4:8])  # elsewhere unchanged
