"""The shipped default model: it loads by name, runs with no arguments, and mattes the real example pair sensibly."""

import sys
from pathlib import Path

import pytest

from bgmatting import Matter, list_models, load_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from accuracy import example_checks, example_people, small_subjects  # noqa: E402  (shared with benchmarks/accuracy.py)

default = list_models()[0]
pytestmark = pytest.mark.skipif(not default.available, reason="default weights not installed")


def test_default_model_is_the_shipped_mobilenetv2():
    model = load_model()
    assert type(model).__name__ == "MattingRefine" and model.backbone_name == "mobilenetv2"
    assert model.backbone_scale == 0.5 and model.refiner.mode == "sampling"
    assert default.path.stat().st_size < 15 * 2**20  # fp16, under the 15 MB budget


def test_default_model_mattes_the_example_pair():
    # the empty scene is background, the two men are foreground, the grass far from anyone stays background
    checks = example_checks(Matter(device="cpu"))
    assert len(checks) == 4
    failed = [f"{name}: {value:.3f} (bound {bound})" for name, value, bound, passed in checks if not passed]
    assert not failed, failed


def test_default_model_finds_a_lone_person_over_the_plate():
    # the example's smallest person, zoomed to 154 px, pasted alone over the plate at nine places: found (the
    # smaller sizes are not yet: 77 px gives 0.13, see benchmarks/example_pair.py --small)
    ((zoom, height, found),) = small_subjects(Matter(device="cpu"), zooms=(2.0,))
    assert height == 154 and found > 0.5, found


def test_default_model_at_backbone_scale_1_finds_every_person_of_the_example():
    # the frame is 768x576 and its people 77-150 px tall: at 1/2 the base network misses the smallest (the person
    # in red gets alpha 0.001); at 1 (the frame supersampled 2x) it finds all six
    people = example_people(Matter(device="cpu", backbone_scale=1))
    missed = [f"{name}: {value:.3f}" for name, value in people if value <= 0.6]
    assert not missed, missed
