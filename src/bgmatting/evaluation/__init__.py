"""Evaluation: matting metrics (SAD, MSE, Grad, Conn, fgr MSE), trimaps, and dataset evaluation."""

from .evaluate import METRICS, EvalReport, build_benchmark, evaluate
from .metrics import all_metrics, conn, fgr_mse, gauss_gradient, grad, mse, sad
from .trimap import trimap_from_alpha, unknown_region

__all__ = [
    "METRICS",
    "EvalReport",
    "all_metrics",
    "build_benchmark",
    "conn",
    "evaluate",
    "fgr_mse",
    "gauss_gradient",
    "grad",
    "mse",
    "sad",
    "trimap_from_alpha",
    "unknown_region",
]
