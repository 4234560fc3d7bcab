"""Tests for bgmatting.train.losses: hand-checked values, gradient flow, shape errors."""

import doctest

import pytest
import torch

from bgmatting.train import losses
from bgmatting.train.losses import (
    AlphaLoss,
    BaseLoss,
    ErrorLoss,
    ForegroundLoss,
    RefineLoss,
    alpha_loss,
    base_loss,
    error_loss,
    foreground_loss,
    refine_loss,
    spatial_gradient,
)


def test_doctests():
    result = doctest.testmod(losses, extraglobs={"torch": torch})
    assert result.failed == 0 and result.attempted > 0


def test_sobel_on_ramps():
    ramp_x = torch.arange(4.0).expand(1, 1, 4, 4)  # value = column index
    g = spatial_gradient(ramp_x)
    assert g.shape == (1, 1, 2, 4, 4)
    # Inside: (f(c+1) - f(c-1)) * (1 + 2 + 1) / 8 = 2 * 4 / 8 = 1; first/last column: replicated border, 1*4/8.
    expected_x = torch.tensor([0.5, 1.0, 1.0, 0.5]).expand(4, 4)
    torch.testing.assert_close(g[0, 0, 0], expected_x)
    torch.testing.assert_close(g[0, 0, 1], torch.zeros(4, 4))
    # The same ramp along y gives the transposed result.
    g_y = spatial_gradient(ramp_x.transpose(-1, -2))
    torch.testing.assert_close(g_y[0, 0, 1], expected_x.t())
    torch.testing.assert_close(g_y[0, 0, 0], torch.zeros(4, 4))


def test_sobel_keeps_channels_apart():
    x = torch.stack([torch.arange(4.0).expand(4, 4), torch.zeros(4, 4)]).unsqueeze(0)  # (1, 2, 4, 4)
    g = spatial_gradient(x)
    assert g[0, 1].abs().sum() == 0
    assert g[0, 0, 0].sum() == 4 * 3.0


def test_alpha_loss_by_hand():
    pha = torch.zeros(1, 1, 4, 4)
    true = torch.arange(4.0).expand(1, 1, 4, 4) / 4  # ramp 0, .25, .5, .75
    # L1: mean of the ramp = (0 + .25 + .5 + .75) / 4 = 0.375.
    # Gradient: x gradient of the true ramp is .25 * [.5, 1, 1, .5] per row -> mean .1875 over the x image,
    # y gradient is 0; the mean over both gradient images (2 * 16 values) is .1875 / 2 = .09375.
    expected = 0.375 + 0.09375
    torch.testing.assert_close(alpha_loss(pha, true), torch.tensor(expected))
    torch.testing.assert_close(AlphaLoss()(pha, true), torch.tensor(expected))
    assert alpha_loss(true, true) == 0


def test_alpha_gradient_term_sees_edges_not_offsets():
    true = torch.full((1, 1, 4, 4), 0.5)
    shifted = true + 0.25  # same gradients: only the L1 term counts
    torch.testing.assert_close(alpha_loss(shifted, true), torch.tensor(0.25))


def test_foreground_loss_masks_transparent_pixels():
    true_pha = torch.zeros(1, 1, 4, 4)
    true_pha[..., :2, :] = 0.5  # top half has (partial) foreground
    true_fgr = torch.zeros(1, 3, 4, 4)
    fgr = torch.zeros(1, 3, 4, 4)
    fgr[..., 2:, :] = 1.0  # wrong only where alpha* = 0
    assert foreground_loss(fgr, true_fgr, true_pha) == 0
    fgr[..., 0, 0] = 0.6  # wrong in a counted pixel, all 3 channels: 3 * .6 / 48
    torch.testing.assert_close(foreground_loss(fgr, true_fgr, true_pha), torch.tensor(3 * 0.6 / 48))
    torch.testing.assert_close(ForegroundLoss()(fgr, true_fgr, true_pha), torch.tensor(3 * 0.6 / 48))


def test_foreground_loss_no_gradient_at_transparent_pixels():
    true_pha = torch.zeros(1, 1, 2, 2)
    true_pha[..., 0, 0] = 1.0
    fgr = torch.rand(1, 3, 2, 2, requires_grad=True)
    foreground_loss(fgr, torch.zeros(1, 3, 2, 2), true_pha).backward()
    assert (fgr.grad[..., 0, 0] != 0).all()
    assert (fgr.grad[..., 1, :] == 0).all() and (fgr.grad[..., 0, 1] == 0).all()


def test_error_loss_by_hand():
    pha = torch.tensor([[[[0.2, 0.8], [0.5, 0.5]]]])
    true = torch.tensor([[[[0.0, 1.0], [0.5, 0.0]]]])
    err = torch.tensor([[[[0.2, 0.0], [0.0, 0.0]]]])
    # E* = [.2, .2, 0, .5]; (E - E*)^2 = [0, .04, 0, .25] -> mean .0725
    torch.testing.assert_close(error_loss(err, pha, true), torch.tensor(0.0725))
    torch.testing.assert_close(ErrorLoss()(err, pha, true), torch.tensor(0.0725))


def _pred(shape_pha, shape_fgr, seed=0):
    g = torch.Generator().manual_seed(seed)
    pha = torch.rand(shape_pha, generator=g).requires_grad_()
    fgr = torch.rand(shape_fgr, generator=g).requires_grad_()
    err = torch.rand(shape_pha, generator=g).requires_grad_()
    return pha, fgr, err


def _truth(b=2, h=8, w=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    true_pha = (torch.rand(b, 1, h, w, generator=g) - 0.3).clamp(0, 1)  # some exact zeros
    true_fgr = torch.rand(b, 3, h, w, generator=g)
    return true_pha, true_fgr


def test_base_loss_terms_and_total():
    pha, fgr, err = _pred((2, 1, 8, 8), (2, 3, 8, 8))
    true_pha, true_fgr = _truth()
    out = base_loss(pha, fgr, err, true_pha, true_fgr)
    assert set(out) == {"pha", "fgr", "err", "total"}
    assert all(v.ndim == 0 for v in out.values())
    torch.testing.assert_close(out["pha"], alpha_loss(pha, true_pha))
    torch.testing.assert_close(out["fgr"], foreground_loss(fgr, true_fgr, true_pha))
    torch.testing.assert_close(out["err"], error_loss(err, pha, true_pha))
    torch.testing.assert_close(out["total"], out["pha"] + out["fgr"] + out["err"])
    torch.testing.assert_close(BaseLoss()(pha, fgr, err, true_pha, true_fgr)["total"], out["total"])


def test_base_loss_resizes_targets():
    pha, fgr, err = _pred((2, 1, 4, 4), (2, 3, 4, 4))
    true_pha, true_fgr = _truth(h=8, w=8)
    out = base_loss(pha, fgr, err, true_pha, true_fgr)
    small_pha = torch.nn.functional.interpolate(true_pha, size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out["pha"], alpha_loss(pha, small_pha))


def test_error_target_sends_no_gradient_into_pha():
    pha, fgr, err = _pred((2, 1, 8, 8), (2, 3, 8, 8))
    true_pha, true_fgr = _truth()
    base_loss(pha, fgr, err, true_pha, true_fgr)["total"].backward()
    assert err.grad is not None and err.grad.abs().sum() > 0
    assert fgr.grad is not None and fgr.grad.abs().sum() > 0

    pha2 = pha.detach().clone().requires_grad_()
    (alpha_loss(pha2, true_pha) + foreground_loss(fgr.detach(), true_fgr, true_pha)).backward()
    torch.testing.assert_close(pha.grad, pha2.grad)


def test_refine_loss_terms_and_gradients():
    pha, fgr, _ = _pred((2, 1, 8, 8), (2, 3, 8, 8), seed=2)
    pha_sm, fgr_sm, err_sm = _pred((2, 1, 4, 4), (2, 3, 4, 4), seed=3)
    true_pha, true_fgr = _truth()
    out = refine_loss(pha, fgr, pha_sm, fgr_sm, err_sm, true_pha, true_fgr)
    assert set(out) == {"pha", "fgr", "pha_sm", "fgr_sm", "err_sm", "total"}
    coarse = base_loss(pha_sm, fgr_sm, err_sm, true_pha, true_fgr)
    torch.testing.assert_close(out["pha_sm"], coarse["pha"])
    torch.testing.assert_close(out["fgr_sm"], coarse["fgr"])
    torch.testing.assert_close(out["err_sm"], coarse["err"])
    torch.testing.assert_close(out["pha"], alpha_loss(pha, true_pha))
    torch.testing.assert_close(out["fgr"], foreground_loss(fgr, true_fgr, true_pha))
    torch.testing.assert_close(out["total"], sum(v for k, v in out.items() if k != "total"))
    out["total"].backward()
    for t in (pha, fgr, pha_sm, fgr_sm, err_sm):
        assert t.grad is not None and t.grad.abs().sum() > 0
    out2 = RefineLoss()(pha, fgr, pha_sm, fgr_sm, err_sm, true_pha, true_fgr)
    torch.testing.assert_close(out2["total"], out["total"])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: alpha_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5)), "same shape"),
        (lambda: alpha_loss(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)), r"\(B, C, H, W\)"),
        (lambda: foreground_loss(*[torch.zeros(1, 3, 4, 4)] * 3), "1 channel"),
        (lambda: error_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 4, 4)), "same shape"),
        (lambda: base_loss(*_pred((1, 3, 4, 4), (1, 3, 4, 4)), *_truth(b=1)), "1 channel"),
    ],
)
def test_shape_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
