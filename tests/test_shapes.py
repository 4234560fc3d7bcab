"""The one shape checker and its error, used by the networks, the losses and the metrics."""

import numpy as np
import pytest
import torch

from bgmatting import BgMattingError, MattingBase
from bgmatting.evaluation.metrics import sad
from bgmatting.shapes import ShapeError, check_same_shape, check_shape
from bgmatting.train.losses import alpha_loss


def test_check_shape_names_what_is_wanted():
    check_shape(torch.zeros(2, 3, 4, 5), "src", "B C H W", C=3)
    check_shape(np.zeros((4, 5)), "pha", "H W")
    with pytest.raises(ShapeError, match=r"^src must have shape \(B, 3, H, W\), 3 channels, got \(2, 1, 4, 5\)$"):
        check_shape(torch.zeros(2, 1, 4, 5), "src", "B C H W", C=3)
    with pytest.raises(ShapeError, match=r"must have shape \(H, W\), got \(4, 5, 1\)"):
        check_shape(np.zeros((4, 5, 1)), "pha", "H W")
    check_same_shape(np.zeros((2, 3)), "a", (2, 3), "b")
    with pytest.raises(ShapeError, match=r"^a and b must have the same shape, got \(2, 3\) and \(3, 2\)$"):
        check_same_shape(np.zeros((2, 3)), "a", torch.zeros(3, 2), "b")


def test_one_error_type_for_the_networks_losses_and_metrics():
    """A user error on the command line (one line, exit 2) and a ValueError for a Python caller, everywhere."""
    assert issubclass(ShapeError, BgMattingError) and issubclass(ShapeError, ValueError)
    calls = [lambda: MattingBase("mobilenetv2")(torch.zeros(1, 1, 32, 32), torch.zeros(1, 1, 32, 32)),
             lambda: MattingBase("mobilenetv2")(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 16)),
             lambda: alpha_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5)),
             lambda: sad(np.zeros((4, 4)), np.zeros((4, 5))),
             lambda: sad(np.zeros((4, 4, 1)), np.zeros((4, 4, 1)))]
    for call in calls:
        with pytest.raises(ShapeError):
            call()
