"""Procedural foregrounds and backgrounds: shapes, ranges, determinism, soft alpha."""

import numpy as np
import pytest

from bgmatting.data.synthetic import make_background, make_foreground, random_texture

SIZES = [(64, 64), (96, 64), (48, 80)]


@pytest.mark.parametrize("size", SIZES)
def test_foreground_shapes_and_ranges(size):
    fgr, pha = make_foreground(size, np.random.default_rng(0))
    assert fgr.shape == (*size, 3) and pha.shape == size
    assert fgr.dtype == np.float32 and pha.dtype == np.float32
    for a in (fgr, pha):
        assert np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0


def test_foreground_is_deterministic_for_a_seed():
    tex = [np.random.default_rng(1).random((40, 50, 3), dtype=np.float32)]
    a = make_foreground((64, 48), np.random.default_rng(7), tex)
    b = make_foreground((64, 48), np.random.default_rng(7), tex)
    c = make_foreground((64, 48), np.random.default_rng(8), tex)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_foregrounds_have_partial_alpha_background_and_solid_core():
    partial = []
    for seed in range(12):
        _, pha = make_foreground((96, 80), np.random.default_rng(seed))
        assert (pha == 0).any(), "some background must show"
        assert pha.max() > 0.2, "there must be a subject"
        partial.append(((pha > 0) & (pha < 1)).mean())
    assert min(partial) > 0, "every sample has anti-aliased (partial) edges"
    assert np.median(partial) > 0.01
    # most samples are opaque somewhere (a person), hair/veils/blur give a wide spread of partial alpha
    solid = sum(make_foreground((96, 80), np.random.default_rng(s))[1].max() >= 0.999 for s in range(12))
    assert solid >= 6


def test_hair_strands_give_thin_low_alpha():
    low = [(((p := make_foreground((128, 128), np.random.default_rng(s))[1]) > 0.02) & (p < 0.5)).sum()
           for s in range(8)]
    assert max(low) > 50


def test_textures_colour_the_foreground():
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 0] = 255  # uint8 textures are accepted
    fgr_r, pha_r = make_foreground((64, 64), np.random.default_rng(3), [red])
    fgr_n, _ = make_foreground((64, 64), np.random.default_rng(3), None)
    assert not np.array_equal(fgr_r, fgr_n)
    assert fgr_r.min() >= 0 and fgr_r.max() <= 1


def test_random_texture_crop_and_fallback():
    tex = np.random.default_rng(0).random((30, 90, 3)).astype(np.float32)
    t = random_texture((20, 10), np.random.default_rng(0), [tex])
    assert t.shape == (20, 10, 3) and t.dtype == np.float32 and 0 <= t.min() and t.max() <= 1
    n = random_texture((20, 10), np.random.default_rng(0), None)
    assert n.shape == (20, 10, 3)


def test_background_shape_range_determinism():
    a = make_background((48, 64), np.random.default_rng(5))
    b = make_background((48, 64), np.random.default_rng(5))
    assert a.shape == (48, 64, 3) and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert a.std() > 0.01  # not a flat colour


@pytest.mark.parametrize("bad", [(4, 64), (64,), (64, 2)])
def test_bad_size_is_rejected(bad):
    with pytest.raises(ValueError):
        make_foreground(bad, np.random.default_rng(0))
