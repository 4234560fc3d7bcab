"""BGMv2 perturbations: shapes and ranges, reproducibility, p = 0 / p = 1, and what each one does."""

import pytest
import torch

from bgmatting.data.perturb import (
    _affine_grid,
    _warp,
    add_noise,
    camouflage,
    cast_shadow,
    composite,
    compress,
    jitter_background_colour,
    make_pair,
    misalign_background,
    motion_blur,
    shift_white_balance,
)

N, H, W = 3, 40, 56


def _inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(123)
    fgr = torch.rand(N, 3, H, W, generator=g, dtype=dtype)
    bgr = torch.rand(N, 3, H, W, generator=g, dtype=dtype) * 0.8 + 0.1
    pha = torch.zeros(N, 1, H, W, dtype=dtype)
    pha[:, :, 8:32, 16:40] = 1.0
    return fgr, pha, bgr


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


PERTURBATIONS = {
    "shadow": lambda fgr, pha, bgr, g, p: cast_shadow(bgr, pha, g, p=p),
    "noise": lambda fgr, pha, bgr, g, p: add_noise(bgr, g, p=p),
    "colour": lambda fgr, pha, bgr, g, p: jitter_background_colour(bgr, g, p=p),
    "misalign": lambda fgr, pha, bgr, g, p: misalign_background(bgr, g, p=p),
    "perspective": lambda fgr, pha, bgr, g, p: misalign_background(bgr, g, p=p, perspective=0.02),
    "compress": lambda fgr, pha, bgr, g, p: compress(bgr, g, p=p),
    "white_balance": lambda fgr, pha, bgr, g, p: shift_white_balance(bgr, g, p=p),
    "camouflage": lambda fgr, pha, bgr, g, p: camouflage(bgr, fgr, pha, g, p=p),
    "motion_blur": lambda fgr, pha, bgr, g, p: motion_blur(bgr, pha, g, p=p)[0],
}


@pytest.mark.parametrize("name", PERTURBATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_range(name, dtype):
    fgr, pha, bgr = _inputs(dtype)
    out = PERTURBATIONS[name](fgr, pha, bgr, _gen(), 1.0)
    assert out.shape == bgr.shape and out.dtype == dtype
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_seeded_generator_is_reproducible(name):
    fgr, pha, bgr = _inputs()
    a = PERTURBATIONS[name](fgr, pha, bgr, _gen(7), 1.0)
    b = PERTURBATIONS[name](fgr, pha, bgr, _gen(7), 1.0)
    c = PERTURBATIONS[name](fgr, pha, bgr, _gen(8), 1.0)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_p0_is_identity_and_p1_changes_every_sample(name):
    fgr, pha, bgr = _inputs()
    before = bgr.clone()
    same = PERTURBATIONS[name](fgr, pha, bgr, _gen(), 0.0)
    assert torch.equal(same, bgr) and same is not bgr
    changed = PERTURBATIONS[name](fgr, pha, bgr, _gen(), 1.0)
    assert all((changed[i] - bgr[i]).abs().max() > 1e-3 for i in range(N))
    assert torch.equal(bgr, before)  # inputs are never modified


@pytest.mark.parametrize("name", PERTURBATIONS)
def test_parameters_differ_per_sample(name):
    fgr, pha, bgr = _inputs()
    bgr = bgr[:1].expand(N, -1, -1, -1).contiguous()
    pha = pha[:1].expand(N, -1, -1, -1).contiguous()
    out = PERTURBATIONS[name](fgr, pha, bgr, _gen(), 1.0)
    assert not torch.equal(out[0], out[1])


def test_p_selects_some_samples():
    bgr = torch.rand(64, 3, 4, 4, generator=_gen())
    out = add_noise(bgr, _gen(), p=0.5)
    changed = (out != bgr).flatten(1).any(1)
    assert 10 < changed.sum() < 54


def test_shadow_only_darkens_and_follows_the_subject():
    fgr, pha, bgr = _inputs()
    out = cast_shadow(bgr, pha, _gen(), p=1.0)
    assert (out <= bgr).all()
    assert (out < bgr - 1e-3).any()
    # no subject, no shadow
    assert torch.equal(cast_shadow(bgr, torch.zeros_like(pha), _gen(), p=1.0), bgr)


def test_shadow_strength_sets_how_dark_the_densest_shadow_is():
    bgr = torch.full((1, 3, 96, 96), 0.8)
    pha = torch.zeros(1, 1, 96, 96)
    pha[..., 16:80, 24:72] = 1
    darkest = {k: float((1 - cast_shadow(bgr, pha, _gen(), p=1.0, strength=(k, k)) / bgr).max())
               for k in (0.0, 0.3, 0.6)}
    assert darkest[0.0] < 1e-6  # no light blocked: no shadow
    assert 0.2 < darkest[0.3] <= 0.3 + 1e-5 and 0.4 < darkest[0.6] <= 0.6 + 1e-5
    assert darkest[0.6] > 1.8 * darkest[0.3]  # same shape, twice as dense
    with pytest.raises(ValueError, match="strength"):
        cast_shadow(bgr, pha, _gen(), strength=(0.5, 0.2))


def test_shadow_on_a_large_image_is_built_small_and_upsampled():
    bgr = torch.full((1, 3, 700, 900), 0.5)
    pha = torch.zeros(1, 1, 700, 900)
    pha[..., 200:500, 300:600] = 1
    out = cast_shadow(bgr, pha, _gen(), p=1.0)
    assert out.shape == bgr.shape and (out <= bgr).all() and (out < 0.49).any()


def test_noise_level():
    x = torch.full((2, 3, 64, 64), 0.5)
    out = add_noise(x, _gen(), std_max=0.03)
    assert 0 < (out - x).std() < 0.03 * 1.2
    assert torch.equal(add_noise(x, _gen(), std_max=0.0), x)


def test_colour_jitter_keeps_greys_grey():
    grey = torch.linspace(0.1, 0.9, 16).view(1, 1, 4, 4).expand(2, 3, 4, 4).contiguous()
    out = jitter_background_colour(grey, _gen())
    assert (out.max(1).values - out.min(1).values).max() < 1e-5  # channels stay equal
    assert (out - grey).abs().max() > 1e-3


def _centroid(img):
    w = img[0, 0]
    ys, xs = torch.meshgrid(
        torch.arange(w.shape[0], dtype=w.dtype), torch.arange(w.shape[1], dtype=w.dtype), indexing="ij"
    )
    return float((w * ys).sum() / w.sum()), float((w * xs).sum() / w.sum())


def test_affine_grid_moves_content_as_documented():
    x = torch.zeros(1, 1, 40, 60)
    x[0, 0, 10, 20] = 1
    shifted = _warp(x, _affine_grid(torch.eye(2)[None], torch.tensor([[3.0, 5.0]]), 40, 60, x.dtype), "zeros")
    assert torch.nonzero(shifted > 0.99).tolist() == [[0, 0, 15, 23]]
    quarter = torch.tensor([[[0.0, -1.0], [1.0, 0.0]]])  # 90° about the centre (29.5, 19.5) in pixel indices
    turned = _warp(x, _affine_grid(quarter, torch.zeros(1, 2), 40, 60, x.dtype), "zeros")
    assert torch.nonzero(turned > 0.99).tolist() == [[0, 0, 10, 39]]


def test_misalignment_moves_content_a_little_without_black_borders():
    x = torch.full((4, 1, 64, 96), 0.2)
    x[:, :, 20:30, 40:52] = 1.0  # a bright patch
    out = misalign_background(x, _gen(3))
    for i in range(4):
        cy, cx = _centroid(x[i : i + 1] - 0.2)
        oy, ox = _centroid(out[i : i + 1] - 0.2)
        shift = ((oy - cy) ** 2 + (ox - cx) ** 2) ** 0.5
        assert 0.05 < shift < 0.04 * 96  # moved, by a few pixels at most
    assert out.min() > 0.19  # borders reflected, not black


def test_misalignment_strength_scales_the_movement():
    # the same random draws (same seed), each range multiplied: the patch moves about twice as far at strength 2,
    # not at all at 0
    x = torch.full((8, 1, 64, 96), 0.2)
    x[:, :, 24:40, 40:56] = 1.0

    def shifts(strength):
        out = misalign_background(x, _gen(5), strength=strength)
        moved = []
        for i in range(8):
            (cy, cx), (oy, ox) = _centroid(x[i : i + 1] - 0.2), _centroid(out[i : i + 1] - 0.2)
            moved.append(((oy - cy) ** 2 + (ox - cx) ** 2) ** 0.5)
        return torch.tensor(moved), out

    one, _ = shifts(1.0)
    two, _ = shifts(2.0)
    zero, still = shifts(0.0)
    assert one.mean() > 0.3 and 1.8 < two.mean() / one.mean() < 2.2
    torch.testing.assert_close(still, x, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="strength"):
        misalign_background(x, _gen(5), strength=-1.0)


def test_composite():
    fgr, pha, bgr = _inputs()
    src = composite(fgr, pha, bgr)
    assert torch.equal(src[:, :, 8:32, 16:40], fgr[:, :, 8:32, 16:40])
    assert torch.equal(src[:, :, :8], bgr[:, :, :8])
    half = composite(fgr, torch.full_like(pha, 0.5), bgr)
    torch.testing.assert_close(half, (fgr + bgr) / 2)


def test_make_pair():
    fgr, pha, bgr = _inputs()
    src, shot = make_pair(fgr, pha, bgr, _gen(), shadow_p=0, noise_p=0, colour_p=0, misalign_p=0)
    assert torch.equal(src, composite(fgr, pha, bgr)) and torch.equal(shot, bgr)
    src, shot = make_pair(fgr, pha, bgr, _gen(), shadow_p=1, noise_p=1, colour_p=1, misalign_p=1)
    assert src.shape == shot.shape == bgr.shape
    assert not torch.equal(src, composite(fgr, pha, bgr)) and not torch.equal(shot, bgr)
    assert src.min() >= 0 and src.max() <= 1 and shot.min() >= 0 and shot.max() <= 1
    a = make_pair(fgr, pha, bgr, _gen(5))
    b = make_pair(fgr, pha, bgr, _gen(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # the subject itself is untouched by the shadow (only the background darkens)
    src, _ = make_pair(fgr, pha, bgr, _gen(), shadow_p=1, noise_p=0, colour_p=1, misalign_p=1)
    assert torch.equal(src[:, :, 8:32, 16:40], fgr[:, :, 8:32, 16:40])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda f, a, b: add_noise(b[0]), r"\(N, C, H, W\)"),
        (lambda f, a, b: jitter_background_colour(a), r"\(N, 3, H, W\)"),
        (lambda f, a, b: cast_shadow(b, a[:1]), "must match"),
        (lambda f, a, b: add_noise(b, p=1.5), "probability"),
        (lambda f, a, b: composite(f, a, (b * 255).to(torch.uint8)), "float"),
        (lambda f, a, b: make_pair(f, a, b, misalign_p=-1), "misalign_p"),
        (lambda f, a, b: misalign_background(b.numpy()), "torch.Tensor"),
    ],
)
def test_programmer_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(*_inputs())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_stays_finite(dtype):
    g = _gen()
    fgr, pha, bgr = (torch.rand(2, c, 530, 520, generator=g).to(dtype) for c in (3, 1, 3))
    src, shot = make_pair(fgr, pha, bgr, g, shadow_p=1, noise_p=1, colour_p=1, misalign_p=1)
    assert src.dtype == shot.dtype == dtype
    assert torch.isfinite(src).all() and torch.isfinite(shot).all()
    assert src.min() >= 0 and src.max() <= 1 and shot.min() >= 0 and shot.max() <= 1


# ------------------------------------------------------------------------------------------------ beyond BGMv2


def test_compress_quantises_and_quality_orders_the_error():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 64, 64, generator=g).repeat(2, 1, 1, 1)
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # some structure for the codec
    low = compress(x, _gen(), quality=(10, 10))
    high = compress(x, _gen(), quality=(95, 95))
    assert torch.equal((low * 255).round(), low * 255)  # 8-bit levels
    assert (low - x).abs().mean() > 2 * (high - x).abs().mean() > 0


def test_white_balance_changes_the_cast_not_the_grey_luma():
    grey = torch.full((4, 3, 8, 8), 0.5)
    out = shift_white_balance(grey, _gen(), amount=0.08)
    luma = torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]
    assert torch.allclose((out * luma).sum(1), torch.full((4, 8, 8), 0.5), atol=1e-5)
    assert (out.amax(1) - out.amin(1)).min() > 0.005  # a colour cast on every sample
    assert (out - 0.5).abs().max() <= 0.5 * 0.08 / (1 - 0.08) + 1e-5


def test_camouflage_gives_the_background_the_subjects_colour():
    fgr, pha, bgr = _inputs()
    colour = torch.tensor([0.3, 0.6, 0.2])
    fgr = colour[None, :, None, None].expand_as(fgr)  # a green subject
    out = camouflage(bgr, fgr, pha, _gen(), strength=(1.0, 1.0))
    assert torch.allclose(out.mean((2, 3)), colour.expand(N, 3), atol=0.03)
    assert (bgr.mean((2, 3)) - colour).abs().max() > 0.15  # it was not that colour before
    # texture kept: pixels keep their order within each channel
    i = bgr[0, 1].flatten().argsort()
    assert torch.equal(out[0, 1].flatten()[i], out[0, 1].flatten()[i].sort().values)


def test_motion_blur_spreads_the_subject_along_a_line_and_keeps_its_mass():
    fgr = torch.ones(1, 3, 64, 64)
    pha = torch.zeros(1, 1, 64, 64)
    pha[:, :, 28:36, 28:36] = 1
    f, a = motion_blur(fgr, pha, _gen(3), length=(120, 120))  # 15 px at 64 px
    assert abs(float(a.sum() - pha.sum())) < 1e-3  # same alpha mass, spread
    assert float(a.max()) < 1 and float((a > 0.01).sum()) > 1.3 * float((pha > 0).sum())
    assert torch.allclose(f[(a > 1e-3).expand_as(f)], torch.ones(1))  # a white subject stays white
    f0, a0 = motion_blur(fgr, pha, _gen(3), p=0)
    assert torch.equal(f0, fgr) and torch.equal(a0, pha)


def test_perspective_changes_the_warp():
    x = torch.linspace(0, 1, 64).expand(1, 3, 64, 64).contiguous()
    flat = misalign_background(x, _gen(1), perspective=0.0)
    tilted = misalign_background(x, _gen(1), perspective=0.05)
    assert not torch.equal(flat, tilted)
    with pytest.raises(ValueError, match="perspective"):
        make_pair(*_inputs(), perspective=-1)


def test_make_pair_extras_are_off_by_default_and_change_the_pair_when_on():
    fgr, pha, bgr = _inputs()
    plain = make_pair(fgr, pha, bgr, _gen(9))
    explicit = make_pair(fgr, pha, bgr, _gen(9), camouflage_p=0, white_balance_p=0, compress_p=0, perspective=0)
    assert torch.equal(plain[0], explicit[0]) and torch.equal(plain[1], explicit[1])
    for extra in ({"camouflage_p": 1}, {"white_balance_p": 1}, {"compress_p": 1}):
        src, shot = make_pair(fgr, pha, bgr, _gen(9), shadow_p=0, noise_p=0, colour_p=0, misalign_p=0, **extra)
        assert not (torch.equal(src, composite(fgr, pha, bgr)) and torch.equal(shot, bgr)), extra


def test_misalignment_takes_one_probability_per_sample():
    bgr = torch.rand(4, 3, 24, 24)
    shot = misalign_background(bgr, _gen(), p=torch.tensor([1.0, 0.0, 1.0, 0.0]))
    moved = (shot - bgr).abs().flatten(1).amax(1) > 0
    assert moved.tolist() == [True, False, True, False]
    # a tensor of equal probabilities draws what the float draws
    same = misalign_background(bgr, _gen(), p=torch.full((4,), 0.5))
    assert torch.equal(same, misalign_background(bgr, _gen(), p=0.5))
    with pytest.raises(ValueError, match="one probability"):
        misalign_background(bgr, _gen(), p=torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="misalign_p"):
        make_pair(bgr, bgr[:, :1], bgr, misalign_p=torch.tensor([0.5, 2.0, 0.0, 0.0]))
