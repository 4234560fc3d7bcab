"""What tracing a network (``torch.jit.trace``, ``torch.onnx.export``) needs from torch, in one place."""

from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager

import torch

# torch's TorchScript-based ONNX exporter (the dynamo one needs the onnxscript package, which is not a dependency);
# older torch versions have no `dynamo` argument and only this exporter
LEGACY_EXPORTER = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


@contextmanager
def quiet_trace():
    """Silence the tracer's and the legacy ONNX exporter's warnings: they are about the shape arithmetic and the
    size checks that the trace records as constants, which the callers handle (and check)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*(legacy TorchScript-based ONNX|Constant folding|torch.tensor "
                                                  "results|feature will be removed).*")
        yield
