"""Matting metrics and trimaps: hand-computed cases, an independent Grad reference, properties."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bgmatting.evaluation.metrics import (
    all_metrics,
    conn,
    fgr_mse,
    gauss_gradient,
    gauss_kernel_halfsize,
    grad,
    mse,
    sad,
)
from bgmatting.evaluation.trimap import trimap_from_alpha, unknown_region

# ---------------------------------------------------------------------------------------------- SAD, MSE

PRED = np.array(
    [[0.0, 0.5, 1.0, 1.0], [0.0, 0.5, 1.0, 1.0], [0.0, 0.0, 0.25, 1.0], [0.0, 0.0, 0.0, 0.75]]
)
TRUE = np.array(
    [[0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]]
)
# |err| = 0.5, 0.5, 0.25, 0.25 on four pixels; err² = 0.25, 0.25, 0.0625, 0.0625


def test_sad_mse_by_hand():
    assert sad(PRED, TRUE) == pytest.approx(1.5 / 1000)
    assert mse(PRED, TRUE) == pytest.approx(0.625 / 16 * 1000)


def test_sad_mse_over_a_region():
    mask = np.zeros((4, 4), bool)
    mask[:2] = True  # the two 0.5 errors, 8 pixels
    assert sad(PRED, TRUE, mask) == pytest.approx(1.0 / 1000)
    assert mse(PRED, TRUE, mask) == pytest.approx(0.5 / 8 * 1000)


def test_empty_region():
    empty = np.zeros((4, 4), bool)
    assert sad(PRED, TRUE, empty) == 0.0
    assert grad(PRED, TRUE, empty) == 0.0
    assert conn(PRED, TRUE, empty) == 0.0
    assert math.isnan(mse(PRED, TRUE, empty))


def test_accepts_float32_and_bool():
    assert sad(PRED.astype(np.float32), TRUE.astype(bool)) == pytest.approx(1.5 / 1000)


@pytest.mark.parametrize(
    "pred, target, mask, match",
    [
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4)), None, "divide 8-bit"),
        (np.zeros((4, 4, 1)), np.zeros((4, 4, 1)), None, r"\(H, W\)"),
        (np.zeros((4, 4)), np.zeros((4, 5)), None, "same shape"),
        (np.full((4, 4), 1.5), np.zeros((4, 4)), None, r"\[0, 1\]"),
        (np.full((4, 4), np.nan), np.zeros((4, 4)), None, r"\[0, 1\]"),
        (np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 4), np.uint8), "bool"),
        (np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((3, 4), bool), "shape"),
    ],
)
@pytest.mark.parametrize("metric", [sad, mse, grad, conn])
def test_programmer_errors(metric, pred, target, mask, match):
    with pytest.raises(ValueError, match=match):
        metric(pred, target, mask)


# ---------------------------------------------------------------------------------------------- Grad


def _reference_gradient(image, sigma):
    """Straight from the DIM benchmark's definition: 2-D kernel by loops, replicate padding, true convolution."""
    eps = 1e-2
    h = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * eps)))
    size = 2 * h + 1

    def gauss(x):
        return math.exp(-(x**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))

    def dgauss(x):
        return -x * gauss(x) / sigma**2

    hx = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            hx[i, j] = gauss(i - h) * dgauss(j - h)
    hx /= math.sqrt((np.abs(hx) ** 2).sum())
    hy = hx.T
    padded = np.pad(image, h, mode="edge")
    rows, cols = image.shape
    out = []
    for k in (hx, hy):
        acc = np.zeros_like(image, dtype=np.float64)
        for i in range(size):
            for j in range(size):
                # convolution: out[y, x] = Σ k[i, j] · in[y − (i − h), x − (j − h)]
                acc += k[i, j] * padded[2 * h - i : 2 * h - i + rows, 2 * h - j : 2 * h - j + cols]
        out.append(acc)
    return out


def test_kernel_halfsize():
    assert gauss_kernel_halfsize(1.4) == 4  # a 9 × 9 kernel


@pytest.mark.parametrize("sigma", [1.4, 0.8])
def test_gauss_gradient_matches_reference(sigma):
    rng = np.random.default_rng(0)
    image = rng.random((13, 17))
    gx, gy = gauss_gradient(image, sigma)
    rx, ry = _reference_gradient(image, sigma)
    np.testing.assert_allclose(gx, rx, atol=1e-12)
    np.testing.assert_allclose(gy, ry, atol=1e-12)


def test_grad_step_edge_against_reference():
    target = np.zeros((12, 20))
    target[:, 10:] = 1.0
    pred = np.zeros((12, 20))
    pred[:, 12:] = 1.0  # the edge two pixels off
    rx, ry = _reference_gradient(pred, 1.4)
    tx, ty = _reference_gradient(target, 1.4)
    expected = ((np.hypot(rx, ry) - np.hypot(tx, ty)) ** 2).sum() / 1000
    assert expected > 0
    assert grad(pred, target) == pytest.approx(expected, rel=1e-10)
    mask = np.zeros((12, 20), bool)
    mask[:, :11] = True
    expected_left = ((np.hypot(rx, ry) - np.hypot(tx, ty)) ** 2)[mask].sum() / 1000
    assert grad(pred, target, mask) == pytest.approx(expected_left, rel=1e-10)


def test_grad_constant_shift_is_zero():
    # gradients ignore a constant offset; the error of a flat matte against another flat one is zero
    assert grad(np.full((8, 8), 0.2), np.full((8, 8), 0.7)) == pytest.approx(0.0, abs=1e-20)


# ---------------------------------------------------------------------------------------------- Conn


def test_conn_largest_component_by_hand():
    target = np.array([[1.0, 1.0, 0.0, 1.0]])
    pred = np.array([[1.0, 1.0, 1.0, 1.0]])
    # ω = {0, 1} at every threshold; pixels 2 and 3 leave at t1 → ℓ = 0, pixels 0, 1 keep ℓ = 1.
    # d_pred = [0, 0, 1, 1], d_true = [0, 0, 0, 1] → φ_pred = [1, 1, 0, 0], φ_true = [1, 1, 1, 0]
    assert conn(pred, target) == pytest.approx(1.0 / 1000)
    assert conn(pred, target, np.array([[True, True, False, True]])) == 0.0


def test_conn_levels_by_hand():
    target = np.array([[0.5, 0.5]])
    pred = np.array([[0.5, 0.25]])
    # pixel 1 leaves ω at t = 0.3 → ℓ = 0.2: d_pred = 0.05 (< 0.15, φ = 1), d_true = 0.3 (φ = 0.7)
    # pixel 0 leaves at t = 0.6 → ℓ = 0.5: d = 0 for both
    assert conn(pred, target) == pytest.approx(0.3 / 1000)


def test_conn_empty_intersection():
    # nothing above any threshold in both: ℓ = 0 everywhere, φ = 1 − α where α ≥ 0.15
    pred = np.array([[0.1, 0.0], [0.0, 0.0]])
    target = np.array([[0.0, 0.0], [0.0, 0.0]])
    assert conn(pred, target) == 0.0  # 0.1 is below the 0.15 dead zone
    pred[1, 1] = 0.05
    target[0, 1] = 0.5
    assert conn(pred, target) == pytest.approx(0.5 / 1000)


def _reference_conn(pred, target, step=0.1):
    """Rhemann et al.'s connectivity error by plain loops: flood fill, first-found largest component."""
    rows, cols = len(pred), len(pred[0])
    steps = [i * step for i in range(round(1 / step) + 1)]
    level = [[-1.0] * cols for _ in range(rows)]
    for i in range(1, len(steps)):
        inside = [[pred[y][x] >= steps[i] and target[y][x] >= steps[i] for x in range(cols)] for y in range(rows)]
        seen, best = set(), set()
        for y in range(rows):
            for x in range(cols):
                if inside[y][x] and (y, x) not in seen:
                    comp, todo = set(), [(y, x)]
                    seen.add((y, x))
                    while todo:
                        cy, cx = todo.pop()
                        comp.add((cy, cx))
                        for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                            if 0 <= ny < rows and 0 <= nx < cols and inside[ny][nx] and (ny, nx) not in seen:
                                seen.add((ny, nx))
                                todo.append((ny, nx))
                    if len(comp) > len(best):
                        best = comp
        for y in range(rows):
            for x in range(cols):
                if level[y][x] == -1.0 and (y, x) not in best:
                    level[y][x] = steps[i - 1]
    total = 0.0
    for y in range(rows):
        for x in range(cols):
            lv = 1.0 if level[y][x] == -1.0 else level[y][x]
            dp, dt = pred[y][x] - lv, target[y][x] - lv
            total += abs((1 - dp * (dp >= 0.15)) - (1 - dt * (dt >= 0.15)))
    return total / 1000


@settings(max_examples=30, deadline=None)
@given(
    arrays(np.int64, (6, 7), elements=st.integers(0, 20)),
    arrays(np.int64, (6, 7), elements=st.integers(0, 20)),
)
def test_conn_matches_a_loop_reference(p, t):
    pred, target = p / 20.0, t / 20.0  # levels that hit the thresholds exactly, and many ties
    assert conn(pred, target) == pytest.approx(_reference_conn(pred.tolist(), target.tolist()), abs=1e-12)


def test_conn_bad_step():
    with pytest.raises(ValueError, match="step"):
        conn(np.zeros((2, 2)), np.zeros((2, 2)), step=0.3)


# ---------------------------------------------------------------------------------------------- fgr MSE


def test_fgr_mse_by_hand():
    pha = np.array([[0.0, 0.5], [1.0, 0.0]])
    true = np.zeros((2, 2, 3))
    pred = np.zeros((2, 2, 3))
    pred[0, 1] = [0.3, 0.0, 0.0]  # mean over channels 0.03
    pred[1, 0] = [0.1, 0.1, 0.1]  # 0.01
    pred[1, 1] = [1.0, 1.0, 1.0]  # α* = 0: ignored
    assert fgr_mse(pred, true, pha) == pytest.approx((0.03 + 0.01) / 2 * 1000)
    mask = np.array([[True, True], [False, True]])
    assert fgr_mse(pred, true, pha, mask) == pytest.approx(0.03 * 1000)
    assert math.isnan(fgr_mse(pred, true, np.zeros((2, 2))))
    with pytest.raises(ValueError, match="H, W, C"):
        fgr_mse(pred[..., 0], true[..., 0], pha)


def test_all_metrics():
    out = all_metrics(PRED, TRUE)
    assert set(out) == {"sad", "mse", "grad", "conn"}
    assert out["sad"] == sad(PRED, TRUE)
    fgr = np.zeros((4, 4, 3))
    out = all_metrics(PRED, TRUE, pred_fgr=fgr + 0.1, true_fgr=fgr)
    assert out["fgr_mse"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="both"):
        all_metrics(PRED, TRUE, pred_fgr=fgr)


# ---------------------------------------------------------------------------------------------- properties

mattes = arrays(np.float64, (9, 11), elements=st.floats(0, 1, allow_nan=False, width=32))


@settings(max_examples=25, deadline=None)
@given(mattes, mattes)
def test_zero_and_symmetry(a, b):
    for metric in (sad, mse, grad, conn):
        assert metric(a, a) == 0.0
        assert metric(a, b) >= 0.0
        assert metric(a, b) == pytest.approx(metric(b, a), rel=1e-9, abs=1e-15)


@settings(max_examples=25, deadline=None)
@given(arrays(np.float64, (9, 11), elements=st.floats(0.0625, 1, width=32)))
def test_errors_grow_with_the_error(pattern):
    target = np.zeros_like(pattern)
    for metric in (sad, mse, grad):
        if metric is grad and np.ptp(pattern) < 0.01:
            continue  # a flat pattern has no gradient to grow
        values = [metric(c * pattern, target) for c in (0.25, 0.5, 1.0)]
        assert values[0] < values[1] < values[2]


# ---------------------------------------------------------------------------------------------- trimap


def test_trimap_by_hand():
    alpha = np.zeros((9, 9))
    alpha[4, 4] = 0.5  # one soft pixel in a background
    tri = trimap_from_alpha(alpha, iterations=2)
    # unknown = the soft pixel dilated twice by a cross: a diamond of city-block radius 2
    yy, xx = np.mgrid[:9, :9]
    diamond = np.abs(yy - 4) + np.abs(xx - 4) <= 2
    np.testing.assert_array_equal(tri == 128, diamond)
    np.testing.assert_array_equal(tri == 0, ~diamond)
    assert not (tri == 255).any()


def test_trimap_hard_edge_and_border():
    alpha = np.zeros((6, 30))
    alpha[:, 15:] = 1.0  # a hard vertical edge touching the top and bottom borders
    tri = trimap_from_alpha(alpha, iterations=10)
    np.testing.assert_array_equal(tri[:, 5:25], 128)  # a band of 10 on each side, full height
    assert (tri[:, :5] == 0).all() and (tri[:, 25:] == 255).all()


def test_trimap_thresholds_and_no_iterations():
    alpha = np.array([[0.0, 0.06, 0.07, 0.5, 0.95, 0.96, 1.0]])
    tri = trimap_from_alpha(alpha, iterations=0)
    np.testing.assert_array_equal(tri, [[0, 0, 128, 128, 128, 255, 255]])


def test_trimap_contains_the_soft_region():
    rng = np.random.default_rng(1)
    alpha = np.clip(rng.random((40, 40)) * 3 - 1, 0, 1)
    unknown = unknown_region(trimap_from_alpha(alpha))
    soft = (alpha > 0.06) & (alpha < 0.96)
    assert unknown[soft].all()


def test_unknown_region_formats():
    np.testing.assert_array_equal(unknown_region(np.array([[0, 128, 255]], np.uint8)), [[False, True, False]])
    np.testing.assert_array_equal(unknown_region(np.array([[0, 128, 255]])), [[False, True, False]])
    np.testing.assert_array_equal(unknown_region(np.array([[0, 32768, 65535]], np.uint16)), [[False, True, False]])
    np.testing.assert_array_equal(unknown_region(np.array([[0.0, 0.5, 1.0]], np.float32)), [[False, True, False]])
    with pytest.raises(ValueError):
        unknown_region(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError):
        trimap_from_alpha(np.zeros((2, 2)), low=0.9, high=0.1)
