"""The GPU paths, run only where CUDA is: the graph backend, fp16, Matter on CUDA and mixed-precision training.

These tests are skipped on machines without a GPU (CI). They run on a lent GPU machine with
``bash tools/gpu_session.sh check`` (see ``tools/README.md``), before any timing is trusted.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from bgmatting import Matter, MattingBase, MattingRefine
from bgmatting.backends import make_runner
from bgmatting.io import read_image

from helpers import randomize_

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 comparisons with TF32 off (convolutions use TF32 by default, which rounds to ~1e-3)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _pair(seed: int, b: int = 1, h: int = 544, w: int = 960):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.rand(b, 3, h, w, generator=g, device=CUDA), torch.rand(b, 3, h, w, generator=g, device=CUDA))


def _max_diff(a, b) -> float:
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))


@pytest.mark.parametrize("backbone", ("mobilenetv2", "resnet50"))
@pytest.mark.parametrize("backend", ("eager", "graph"))
@pytest.mark.parametrize("mode", ("sampling", "full"))
def test_cuda_backends_match_reference_fp32(backbone, backend, mode):
    model = randomize_(MattingRefine(backbone, refine_mode=mode, refine_sample_pixels=16 * 2000)).to(CUDA).eval()
    name, runner = make_runner(model, backend, CUDA)
    assert name == backend
    with torch.no_grad():
        for seed in (0, 1):  # the graph is captured on the first frame and replayed on the second
            src, bgr = _pair(seed)
            expected, got = model(src, bgr), runner(src, bgr)
            refined = int(expected[5].sum())
            assert refined > 0
            assert torch.equal(expected[5], got[5]), "the same patches are refined"
            assert _max_diff(expected, got) <= 1e-4


def test_graph_runner_keeps_one_graph_per_shape_and_copies_outputs():
    model = randomize_(MattingRefine("mobilenetv2", refine_sample_pixels=16 * 500)).to(CUDA).eval()
    _, runner = make_runner(model, "graph", CUDA)
    frames = [_pair(0, 1, 256, 320), _pair(1, 1, 256, 320), _pair(2, 2, 320, 256)]
    with torch.no_grad():
        outs = [runner(*f) for f in frames]
        assert len(runner.graphs) == 2
        for f, out in zip(frames, outs):  # earlier results are not overwritten by later replays
            assert _max_diff(model(*f), out) <= 1e-4


@pytest.mark.parametrize("precision", ("fp16", "bf16"))
def test_half_precision_alpha_close_to_fp32_on_the_shipped_model(precision):
    src = torch.from_numpy(read_image(EXAMPLES / "src.jpg")).permute(2, 0, 1)[None]
    bgr = torch.from_numpy(read_image(EXAMPLES / "bgr.jpg")).permute(2, 0, 1)[None]
    ref = Matter(device="cuda", backend="reference").forward_tensors(src, bgr)["pha"]
    fast = Matter(device="cuda", precision=precision, backend="auto")
    got = fast.forward_tensors(src, bgr)["pha"]
    assert fast.backend == "graph"
    tol = 1e-2 if precision == "fp16" else 3e-2  # bf16 keeps 8 bits of mantissa, fp16 11
    assert float((got - ref).abs().max()) <= tol


def test_matter_on_cuda_picks_the_graph_backend_and_mattes_the_example():
    src, bgr = read_image(EXAMPLES / "src.jpg"), read_image(EXAMPLES / "bgr.jpg")
    matter = Matter(device="cuda")
    result = matter(src, bgr)
    assert matter.backend == "graph"
    cpu = Matter(device="cpu", backend="reference")(src, bgr)
    assert np.abs(result.pha - cpu.pha).max() <= 1e-2  # TF32 off here; cuDNN and the CPU differ in rounding


def test_base_backend_on_cuda():
    model = randomize_(MattingBase("resnet50")).to(CUDA).eval()
    _, runner = make_runner(model, "graph", CUDA)
    with torch.no_grad():
        src, bgr = _pair(3, 1, 256, 256)
        assert _max_diff(model(src, bgr), runner(src, bgr)) <= 1e-4


def test_mixed_precision_training_steps_on_cuda(tmp_path):
    from bgmatting.train.checkpoints import load_checkpoint
    from bgmatting.train.trainer import train

    from helpers import make_corpus, read_metrics, tiny

    root = make_corpus(tmp_path / "corpus", side=64)
    base = train(tiny(root, tmp_path / "base", steps=3, device="cuda", amp=True))
    ckpt = train(tiny(root, tmp_path / "refine", stage="refine", size=64, steps=3, refine_sample_pixels=256,
                      base_checkpoint=str(base), device="cuda", amp=True, validate_every=3))
    rows = read_metrics(tmp_path / "refine")
    assert all(np.isfinite(r["total"]) and r["amp_scale"] > 0 for r in rows.values())
    state = load_checkpoint(ckpt)
    assert state["scaler"] and state["model_config"]["architecture"] == "MattingRefine"
    assert all(t.device.type == "cpu" and torch.isfinite(t).all() for t in state["model"].values())

