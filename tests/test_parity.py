"""One parity harness: every backbone × every way of running the network gives the reference's outputs, on the CPU.

The ways: the reference (``MattingRefine`` itself), the export copy (fixed top-k and gathered crops, and its TopK-free
variant), its TorchScript trace, :class:`FastMatting` (per-call selection, and static shapes), the ``onnxruntime``
backend (backbone and ASPP in ONNX Runtime) and an ONNX export run by ONNX Runtime. Each is compared with the
reference on the same pair, which selects some patches but not all.
"""

import importlib.util
import warnings

import pytest
import torch

from bgmatting import MattingRefine
from bgmatting.backends import make_runner
from bgmatting.export import example_pair, export_onnx, exportable
from bgmatting.models import BACKBONES
from bgmatting.models.optimised import FastMatting
from bgmatting.onnx_runtime import OnnxModel
from bgmatting.tracing import quiet_trace

from helpers import randomize_

SIZE = (2, 64, 96)  # batch, height, width: not the export's example size
TOL = 1e-4
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def _export_copy(model, tmp_path):
    return exportable(model)


def _bisection_copy(model, tmp_path):
    return exportable(model, topk_free=True)


def _torchscript(model, tmp_path):
    src, bgr = example_pair((32, 48))
    with torch.no_grad(), quiet_trace():
        return torch.jit.trace(exportable(model), (src, bgr), check_trace=False)


def _fast(model, tmp_path):
    return FastMatting(model)


def _fast_static(model, tmp_path):
    return FastMatting(model, static=True)


def _onnxruntime_backend(model, tmp_path):
    return make_runner(model, "onnxruntime", torch.device("cpu"))[1]


def _onnx_file(model, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(model, tmp_path / "m.onnx", example_size=(32, 48), validate=False)
    return OnnxModel(tmp_path / "m.onnx", intra_op_threads=1)


WAYS = {"export copy": _export_copy, "export copy, TopK-free": _bisection_copy, "TorchScript": _torchscript,
        "FastMatting": _fast, "FastMatting, static": _fast_static,
        "onnxruntime backend": pytest.param(_onnxruntime_backend, marks=pytest.mark.skipif(
            not HAS_ORT, reason="onnx/onnxruntime not installed")),
        "ONNX file": pytest.param(_onnx_file, marks=pytest.mark.skipif(
            not HAS_ORT, reason="onnx/onnxruntime not installed"))}


@pytest.fixture(scope="module", params=BACKBONES)
def reference(request):
    """A model of each backbone, and its outputs on a pair where the selection matters."""
    model = randomize_(MattingRefine(request.param, backbone_scale=1 / 4, refine_mode="sampling",
                                     refine_sample_pixels=16 * 60))
    src, bgr = example_pair(SIZE[1:], SIZE[0], seed=3)
    with torch.no_grad():
        want = model(src, bgr)
    refined = want[5].sum((1, 2, 3))
    assert 0 < float(refined.min()) and float(refined.max()) < want[5][0].numel()  # some patches, not all
    return model, (src, bgr), want


@pytest.mark.parametrize("make", list(WAYS.values()), ids=list(WAYS))
def test_every_way_of_running_every_backbone_matches_the_reference(reference, make, tmp_path):
    model, pair, want = reference
    run = make(model, tmp_path)
    with torch.no_grad():
        got = run(*pair)
    assert len(got) == len(want)
    assert torch.equal(got[5].float(), want[5])  # the same patches refined
    for name, g, w in zip(("pha", "fgr", "pha_sm", "fgr_sm", "err_sm", "ref_sm"), got, want):
        assert g.shape == w.shape, name
        assert float((g.float() - w).abs().max()) <= TOL, name
