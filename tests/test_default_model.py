"""The shipped default model: it loads by name, runs with no arguments, and mattes the real example pair sensibly."""

from pathlib import Path

import pytest

from bgmatting import Matter, list_models, load_model
from bgmatting.io import read_image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
default = list_models()[0]
pytestmark = pytest.mark.skipif(not default.available, reason="default weights not installed")


def test_default_model_is_the_shipped_mobilenetv2():
    model = load_model()
    assert type(model).__name__ == "MattingRefine" and model.backbone_name == "mobilenetv2"
    assert model.backbone_scale == 0.5 and model.refiner.mode == "sampling"
    assert default.path.stat().st_size < 15 * 2**20  # fp16, under the 15 MB budget


def test_default_model_mattes_the_example_pair():
    src, bgr = read_image(EXAMPLES / "src.jpg"), read_image(EXAMPLES / "bgr.jpg")
    result = Matter(device="cpu")(src, bgr)
    pha = result.pha
    # the empty parts of the scene are background: most of the frame is (near) zero alpha
    assert (pha < 0.1).mean() > 0.85
    # people are foreground: the man in the dark jacket walking at the bottom, the one on the path at the top
    assert pha[490:540, 545:590].mean() > 0.6
    assert pha[220:290, 505:530].mean() > 0.5
    # the grass far from anyone stays background
    assert pha[380:460, 100:300].mean() < 0.05
