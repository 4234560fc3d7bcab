"""Tests for bgmatting.data.augment: pair alignment, sizes, ranges, determinism, independence of bgr."""

import doctest

import pytest
import torch

from bgmatting.data import augment
from bgmatting.data.augment import BackgroundAugment, PairAugment, RandomBoxBlur, box_blur, random_crop_batch
from bgmatting.errors import BgMattingError

NO_COLOUR = dict(brightness=0, contrast=0, saturation=0, hue=0)
# Only the horizontal flip stays random.
FLIP_ONLY = dict(
    crop_scale=(1.0, 1.0), degrees=0, translate=(0, 0), scale=(1, 1), shear=0, p_blur=0, p_sharpen=0, **NO_COLOUR
)


def _pattern(h=40, w=56, seed=0):
    """An asymmetric alpha pattern (blocks and a ramp) and a foreground that encodes the same pattern."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.rand(1, 1, h // 8, w // 8, generator=g)
    pha = torch.nn.functional.interpolate(blocks, size=(h, w), mode="nearest")[0]
    pha = pha * torch.linspace(0.2, 1.0, w)  # breaks the left-right symmetry
    pha[:, : h // 5, : w // 4] = 0.0  # a transparent corner
    return pha.repeat(3, 1, 1), pha


def _corr(a, b):
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a @ b) / (a.norm() * b.norm() + 1e-12))


def test_doctests():
    result = doctest.testmod(augment, extraglobs={"torch": torch})
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("seed", range(6))
def test_pair_stays_aligned_exactly_without_colour_jitter(seed):
    fgr, pha = _pattern()
    aug = PairAugment((32, 24), p_blur=0.5, p_sharpen=0.5, **NO_COLOUR)
    f, p = aug(fgr, pha, generator=torch.Generator().manual_seed(seed))
    for c in range(3):
        torch.testing.assert_close(f[c : c + 1], p, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", range(6))
def test_pair_stays_aligned_with_defaults(seed):
    fgr, pha = _pattern()
    f, p = PairAugment((32, 24))(fgr, pha, generator=torch.Generator().manual_seed(seed))
    # Colour jitter of a gray image is a monotone per-pixel map: fgr still tracks pha pixel for pixel.
    assert _corr(f.mean(0), p[0]) > 0.98
    assert _corr(f.mean(0), p[0].flip(-1)) < 0.9  # the check can see a misalignment


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(3, 50, 70), (2, 3, 30, 20)])
def test_pair_sizes_and_ranges(train, shape):
    g = torch.Generator().manual_seed(1)
    fgr = torch.rand(shape, generator=g)
    pha = torch.rand((*shape[:-3], 1, *shape[-2:]), generator=g)
    aug = PairAugment((24, 32), train=train, p_blur=1.0, p_sharpen=1.0)
    for _ in range(5):
        f, p = aug(fgr, pha, generator=g)
        assert f.shape == (*shape[:-3], 3, 24, 32) and p.shape == (*shape[:-3], 1, 24, 32)
        assert type(f) is torch.Tensor and type(p) is torch.Tensor
        assert f.min() >= 0 and f.max() <= 1 and p.min() >= 0 and p.max() <= 1


def test_pair_affine_leaves_transparent_border():
    fgr, pha = torch.ones(3, 32, 32), torch.ones(1, 32, 32)
    aug = PairAugment(32, crop_scale=(1, 1), scale=(0.4, 0.4), degrees=0, translate=(0, 0), shear=0, **NO_COLOUR)
    f, p = aug(fgr, pha, generator=torch.Generator().manual_seed(0))
    assert p[0, 0, 0] == 0 and f[:, 0, 0].abs().sum() == 0  # uncovered: transparent, black foreground
    assert p[0, 16, 16] == 1


def test_pair_determinism():
    fgr, pha = _pattern()
    aug = PairAugment(24)
    a = aug(fgr, pha, generator=torch.Generator().manual_seed(5))
    b = aug(fgr, pha, generator=torch.Generator().manual_seed(5))
    c = aug(fgr, pha, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a[1], c[1])
    # With torch.manual_seed too.
    torch.manual_seed(3)
    d = aug(fgr, pha)
    torch.manual_seed(3)
    torch.testing.assert_close(aug(fgr, pha), d)


def test_generator_leaves_global_rng_alone():
    fgr, pha = _pattern()
    state = torch.get_rng_state()
    PairAugment(24)(fgr, pha, generator=torch.Generator().manual_seed(0))
    BackgroundAugment(24)(fgr, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())


def test_validation_is_resize_and_center_crop():
    x = torch.arange(80.0).expand(3, 40, 80) / 80  # ramp along x
    f, p = PairAugment(20, train=False)(x, x[:1])
    expected = torch.nn.functional.interpolate(x[None], size=(20, 40), mode="bilinear", antialias=True)[0][..., 10:30]
    torch.testing.assert_close(f, expected)
    torch.testing.assert_close(p, expected[:1])
    torch.testing.assert_close(BackgroundAugment(20, train=False)(x), expected)


def test_pair_shape_errors():
    aug = PairAugment(8)
    with pytest.raises(ValueError, match="fgr"):
        aug(torch.rand(1, 8, 8), torch.rand(1, 8, 8))
    with pytest.raises(ValueError, match="pha"):
        aug(torch.rand(3, 8, 8), torch.rand(1, 8, 9))
    with pytest.raises(ValueError, match="size"):
        PairAugment((8, 0))


@pytest.mark.parametrize("train", [True, False])
def test_background_sizes_ranges_and_no_black_border(train):
    g = torch.Generator().manual_seed(0)
    aug = BackgroundAugment((24, 32), train=train, **NO_COLOUR)
    bgr = torch.full((3, 45, 70), 0.7)
    for _ in range(20):
        out = aug(bgr, generator=g)
        assert out.shape == (3, 24, 32)
        torch.testing.assert_close(out, torch.full_like(out, 0.7))  # reflect padding: no black corners
    out = BackgroundAugment(16)(torch.rand(2, 3, 20, 20), generator=g)
    assert out.shape == (2, 3, 16, 16) and out.min() >= 0 and out.max() <= 1


def test_background_determinism():
    bgr = _pattern()[0]
    aug = BackgroundAugment(24)
    torch.testing.assert_close(
        aug(bgr, generator=torch.Generator().manual_seed(1)), aug(bgr, generator=torch.Generator().manual_seed(1))
    )


def test_background_augmentation_independent_of_pair():
    """Drawn one after the other from one RNG (as in MattingSampleDataset), the flips disagree sometimes."""
    fgr, pha = _pattern(24, 24)
    pair_aug, bgr_aug = PairAugment(24, **FLIP_ONLY), BackgroundAugment(24, **FLIP_ONLY)
    g = torch.Generator().manual_seed(0)
    same = 0
    for _ in range(40):
        f, p = pair_aug(fgr, pha, generator=g)
        torch.testing.assert_close(f[:1], p, atol=1e-5, rtol=0)
        b = bgr_aug(fgr, generator=g)
        f_flipped = not torch.allclose(f, fgr, atol=1e-5)
        b_flipped = not torch.allclose(b, fgr, atol=1e-5)
        assert torch.allclose(b, fgr.flip(-1) if b_flipped else fgr, atol=1e-5)
        same += f_flipped == b_flipped
    assert 5 < same < 35


def test_box_blur():
    x = torch.zeros(1, 1, 5, 5)
    x[..., 2, 2] = 9.0
    y = box_blur(x, 3)
    torch.testing.assert_close(y[..., 1:4, 1:4], torch.ones(1, 1, 3, 3))
    assert y.sum() == 9.0
    torch.testing.assert_close(box_blur(torch.full((2, 3, 4, 4), 0.5), 5), torch.full((2, 3, 4, 4), 0.5))
    with pytest.raises(ValueError):
        box_blur(x, 4)
    assert torch.equal(RandomBoxBlur(p=0.0)(x), x)
    torch.testing.assert_close(RandomBoxBlur(p=1.0, max_kernel_size=3)(x), y)


def test_random_crop_batch_same_window():
    h, w = 12, 16
    grid = (torch.arange(h)[:, None] * 100 + torch.arange(w)[None, :]).float()  # value encodes (y, x)
    fgr = grid.expand(2, 3, h, w)
    pha = grid.expand(2, 1, h, w)
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(30):
        f, p = random_crop_batch([fgr, pha], [(4, 6), 8], generator=g)
        seen.add(tuple(f.shape[-2:]))
        assert f.shape[:2] == (2, 3) and p.shape[:2] == (2, 1) and f.shape[-2:] == p.shape[-2:]
        torch.testing.assert_close(f[:, :1], p)
        top, left = divmod(int(p[0, 0, 0, 0]), 100)
        torch.testing.assert_close(p[0, 0], grid[top : top + p.shape[-2], left : left + p.shape[-1]])
    assert seen == {(4, 6), (8, 8)}


def test_random_crop_batch_determinism_and_errors():
    x = torch.rand(1, 3, 10, 10)
    a = random_crop_batch([x], 4, generator=torch.Generator().manual_seed(2))[0]
    b = random_crop_batch([x], 4, generator=torch.Generator().manual_seed(2))[0]
    assert torch.equal(a, b) and a.shape == (1, 3, 4, 4)
    with pytest.raises(BgMattingError, match="larger than"):
        random_crop_batch([x], [(12, 4)])
    with pytest.raises(ValueError, match="last two dims"):
        random_crop_batch([x, torch.rand(1, 1, 10, 9)], 4)
