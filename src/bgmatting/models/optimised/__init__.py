"""Faster ways to run the trained networks for inference, with the same outputs (within float rounding).

Each optimisation is a small module; :class:`FastMatting` puts them together:

* :mod:`.batchnorm`: BatchNorm folded into the convolution before it;
* :mod:`.polyphase`: convolutions of ×2-upsampled images computed at their own resolution;
* :mod:`.winograd`: Winograd 3×3 convolutions (NNPACK) on the CPU;
* :mod:`.crops`: the refiner's crops made from the inputs directly, on tiles or blocks where the patches are;
* :mod:`.compose`: upsample, paste, clamp and add ``src`` in one pass (a Triton kernel on CUDA);
* :mod:`.fast_matting`: :class:`FastMatting`, and the cost model that picks the refiner's way per call.
"""

from .batchnorm import fold_batchnorm
from .fast_matting import HID_PATHS, PATH_COSTS, REFINE_PATHS, FastMatting, PathCosts
from .winograd import WinogradConv2d, nnpack_available

__all__ = ["HID_PATHS", "PATH_COSTS", "REFINE_PATHS", "FastMatting", "PathCosts", "WinogradConv2d",
           "fold_batchnorm", "nnpack_available"]
