"""Alpha-matting error metrics: SAD, MSE, Grad, Conn and foreground MSE.

The definitions follow the matting literature (Rhemann et al., CVPR 2009, alphamatting.com) as computed by
the Deep Image Matting benchmark code (Xu et al. 2017) that the Background Matting V2 paper uses. All
functions take mattes as ``float`` arrays of shape ``(H, W)`` with values in ``[0, 1]`` (divide 8-bit
images by 255 first) and an optional ``mask``: a ``bool`` array ``(H, W)`` of the pixels to evaluate
(``None``: the whole image; a trimap's unknown region for the classic "trimap" protocol, see
:mod:`bgmatting.evaluation.trimap`).

Units and scaling, as papers report them:

=========  =====================================================================  ============
metric     value                                                                  reported
=========  =====================================================================  ============
SAD        ``Σ |α − α*|`` over the region                                         ``÷ 1000``
MSE        ``mean (α − α*)²`` over the region                                     ``× 1000``
Grad       ``Σ (‖∇α‖ − ‖∇α*‖)²``, Gaussian-derivative gradients, σ = 1.4           ``÷ 1000``
Conn       ``Σ |φ(α) − φ(α*)|`` over the region (connectivity, step 0.1)          ``÷ 1000``
fgr MSE    ``mean (F − F*)²`` over region pixels with ``α* > 0``, channel mean    ``× 1000``
=========  =====================================================================  ============

The MATLAB benchmark of BGMv2 (``eval/benchmark.m``) prints MSE and fgr MSE unscaled and Grad and Conn
unscaled; multiply or divide by 1000 to compare with it. Two more small differences from that script:
its Grad rescales each matte to its own min–max range (``mat2gray``) first, while we take the mattes as
they are (like the common Python ports), and its fgr MSE divides by the size of the whole region rather
than by the number of region pixels with ``α* > 0``.

Everything is vectorised with NumPy / SciPy; Conn loops over its 10 thresholds only. A 4K frame takes
well under a few seconds for all metrics together.
"""

from __future__ import annotations

import math

import numpy as np

from ..shapes import check_same_shape, check_shape

try:
    from scipy import ndimage as _ndi
except ImportError:  # pragma: no cover - scipy is a dependency of the evaluation extra
    _ndi = None

__all__ = ["sad", "mse", "grad", "conn", "fgr_mse", "all_metrics", "gauss_gradient", "gauss_kernel_halfsize"]


def require_scipy():
    """``scipy.ndimage``, or :class:`~bgmatting.BgMattingError` that says how to install SciPy."""
    if _ndi is None:  # pragma: no cover
        from ..errors import BgMattingError

        raise BgMattingError("the Grad and Conn metrics need SciPy: run `pip install scipy`")
    return _ndi


def check_matte(x, name: str) -> np.ndarray:
    """``x`` as a float64 ``(H, W)`` array in ``[0, 1]``; ``ValueError`` for anything else."""
    a = np.asarray(x)
    check_shape(a, f"{name} (a matte)", "H W")
    if a.dtype == bool:
        a = a.astype(np.float64)
    elif not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must be float in [0, 1], got dtype {a.dtype} (divide 8-bit mattes by 255)")
    a = a.astype(np.float64, copy=False)
    if a.size:
        lo, hi = float(a.min()), float(a.max())
        if not (lo >= -1e-6 and hi <= 1 + 1e-6):  # also catches NaN
            raise ValueError(f"{name} must have values in [0, 1], got values in [{lo}, {hi}]")
    return a


def _check_pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    p = check_matte(pred, "pred")
    t = check_matte(target, "target")
    check_same_shape(p, "pred", t, "target")
    return p, t


def _check_mask(mask, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.dtype != bool:
        raise ValueError(f"mask must be a bool array, got dtype {m.dtype} (use unknown_region() for a trimap)")
    check_same_shape(m, "mask", shape, "the matte")
    return m


def _region_sum(err: np.ndarray, mask: np.ndarray | None) -> float:
    return float(err.sum() if mask is None else err[mask].sum())


def _region_mean(err: np.ndarray, mask: np.ndarray | None) -> float:
    values = err if mask is None else err[mask]
    return float(values.mean()) if values.size else float("nan")


def sad(pred, target, mask=None) -> float:
    """Sum of absolute differences over the region, divided by 1000.

    Args:
        pred: predicted alpha ``(H, W)`` in ``[0, 1]``.
        target: ground-truth alpha ``(H, W)`` in ``[0, 1]``.
        mask: ``bool`` ``(H, W)``, the pixels to evaluate; ``None`` for all.

    Returns:
        ``Σ |pred − target| / 1000`` (0 when the region is empty).

    Example:
        >>> import numpy as np
        >>> sad(np.full((10, 100), 0.5), np.zeros((10, 100)))
        0.5
    """
    p, t = _check_pair(pred, target)
    return _region_sum(np.abs(p - t), _check_mask(mask, p.shape)) / 1000.0


def mse(pred, target, mask=None) -> float:
    """Mean squared error over the region's pixels, multiplied by 1000.

    Args:
        pred, target, mask: as in :func:`sad`.

    Returns:
        ``1000 · mean (pred − target)²`` over the region; ``nan`` when the region is empty.

    Example:
        >>> import numpy as np
        >>> mse(np.full((4, 4), 0.1), np.zeros((4, 4)))  # doctest: +ELLIPSIS
        10.000...
    """
    p, t = _check_pair(pred, target)
    return _region_mean((p - t) ** 2, _check_mask(mask, p.shape)) * 1000.0


def gauss_kernel_halfsize(sigma: float, epsilon: float = 1e-2) -> int:
    """Half size of the Gaussian-derivative kernel: ``ceil(σ · sqrt(−2 ln(sqrt(2π) · σ · ε)))``.

    Example:
        >>> gauss_kernel_halfsize(1.4)
        4
    """
    return int(math.ceil(sigma * math.sqrt(-2.0 * math.log(math.sqrt(2.0 * math.pi) * sigma * epsilon))))


def _gauss_kernels_1d(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The two 1-D factors of the DIM-benchmark kernel ``hx[i, j] = G(i) · G'(j) / ‖G ⊗ G'‖₂``."""
    h = gauss_kernel_halfsize(sigma)
    u = np.arange(-h, h + 1, dtype=np.float64)
    g = np.exp(-(u**2) / (2.0 * sigma**2)) / (sigma * math.sqrt(2.0 * math.pi))
    dg = -u * g / sigma**2
    # The 2-D kernel is the outer product g ⊗ dg normalised by its Frobenius norm, which factorises as
    # ‖g‖₂ · ‖dg‖₂, so normalising each factor gives exactly the same kernel.
    return g / np.linalg.norm(g), dg / np.linalg.norm(dg)


def gauss_gradient(image, sigma: float = 1.4) -> tuple[np.ndarray, np.ndarray]:
    """Image gradient with first-order Gaussian-derivative filters (the DIM benchmark's ``gaussgradient``).

    The 2-D kernel along x is ``hx[i, j] = G(i − h) · G'(j − h)`` (``G`` the Gaussian of standard deviation
    ``sigma``, ``G'`` its derivative, ``h`` from :func:`gauss_kernel_halfsize`), scaled to unit L2 norm;
    the kernel along y is its transpose. The image is convolved (true convolution, kernel flipped) with
    replicated borders. The kernel is separable, so it is applied as two 1-D convolutions.

    Args:
        image: ``(H, W)`` float array.
        sigma: standard deviation of the Gaussian, in pixels.

    Returns:
        ``(gx, gy)``, two float64 ``(H, W)`` arrays: derivatives along columns (x) and rows (y).

    Example:
        >>> import numpy as np
        >>> gx, gy = gauss_gradient(np.tile(np.arange(8.0), (8, 1)))  # a ramp along x
        >>> bool(np.allclose(gy, 0) and np.all(gx[:, 3:5] > 0))
        True
    """
    ndi = require_scipy()
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {a.shape}")
    g, dg = _gauss_kernels_1d(sigma)
    gx = ndi.convolve1d(ndi.convolve1d(a, g, axis=0, mode="nearest"), dg, axis=1, mode="nearest")
    gy = ndi.convolve1d(ndi.convolve1d(a, dg, axis=0, mode="nearest"), g, axis=1, mode="nearest")
    return gx, gy


def grad(pred, target, mask=None, sigma: float = 1.4) -> float:
    """Gradient error: ``Σ (‖∇pred‖ − ‖∇target‖)²`` over the region, divided by 1000.

    Gradients are computed on the whole image with :func:`gauss_gradient` (σ = 1.4) and then summed over
    the region.

    Args:
        pred, target, mask: as in :func:`sad`.
        sigma: the Gaussian's standard deviation; 1.4 is the standard value.

    Example:
        >>> import numpy as np
        >>> edge = np.zeros((16, 16)); edge[:, 8:] = 1.0
        >>> grad(edge, edge)
        0.0
    """
    p, t = _check_pair(pred, target)
    m = _check_mask(mask, p.shape)
    pg = np.hypot(*gauss_gradient(p, sigma))
    tg = np.hypot(*gauss_gradient(t, sigma))
    return _region_sum((pg - tg) ** 2, m) / 1000.0


def _largest_component(binary: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of ``binary`` (all False when it has none)."""
    labels, n = require_scipy().label(binary)  # default structure: 4-connectivity (a cross)
    if n == 0:
        return np.zeros(binary.shape, dtype=bool)
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    counts[0] = 0  # the background is not a component
    return labels == int(np.argmax(counts))


def conn(pred, target, mask=None, step: float = 0.1) -> float:
    """Connectivity error (Rhemann et al. 2009), divided by 1000.

    For thresholds ``t_i = i · step`` (``i = 0 … 1/step``), ``ω_i`` is the largest 4-connected component
    of ``(pred ≥ t_i) ∧ (target ≥ t_i)``, computed on the whole image. Each pixel gets the level
    ``ℓ = t_{i−1}`` of the first step ``i ≥ 1`` at which it is outside ``ω_i`` (``ℓ = 1`` if it never is).
    With ``d = α − ℓ``, ``φ(α) = 1 − d · [d ≥ 0.15]``, and the error is ``Σ |φ(pred) − φ(target)|``
    over the region. As in the MATLAB reference, an empty intersection gives an empty ``ω``; ties between
    equally large components go to the first in row-major label order.

    Args:
        pred, target, mask: as in :func:`sad`.
        step: threshold step; 0.1 is the standard value.

    Example:
        >>> import numpy as np
        >>> blob = np.zeros((8, 8)); blob[2:6, 2:6] = 1.0
        >>> conn(blob, blob)
        0.0
    """
    p, t = _check_pair(pred, target)
    m = _check_mask(mask, p.shape)
    n_steps = int(round(1.0 / step))
    if n_steps < 1 or abs(n_steps * step - 1.0) > 1e-9:
        raise ValueError(f"step must divide 1 into whole steps (e.g. 0.1), got {step}")
    thresholds = np.arange(n_steps + 1) * step
    level = np.full(p.shape, -1.0)
    for i in range(1, n_steps + 1):
        omega = _largest_component((p >= thresholds[i]) & (t >= thresholds[i]))
        level[(level == -1.0) & ~omega] = thresholds[i - 1]
    level[level == -1.0] = 1.0
    dp = p - level
    dt = t - level
    phi_p = 1.0 - dp * (dp >= 0.15)
    phi_t = 1.0 - dt * (dt >= 0.15)
    return _region_sum(np.abs(phi_p - phi_t), m) / 1000.0


def fgr_mse(pred_fgr, true_fgr, true_pha, mask=None) -> float:
    """Foreground-colour MSE where the subject is, multiplied by 1000.

    The mean, over region pixels with ``true_pha > 0``, of the per-pixel mean over channels of
    ``(pred_fgr − true_fgr)²``.

    Args:
        pred_fgr: predicted foreground ``(H, W, C)`` in ``[0, 1]``.
        true_fgr: ground-truth foreground ``(H, W, C)`` in ``[0, 1]``.
        true_pha: ground-truth alpha ``(H, W)`` in ``[0, 1]``.
        mask: ``bool`` ``(H, W)`` region; ``None`` for all.

    Returns:
        The error ``× 1000``; ``nan`` when no region pixel has ``true_pha > 0``.

    Example:
        >>> import numpy as np
        >>> pha = np.zeros((4, 4)); pha[:2] = 1.0
        >>> f = np.zeros((4, 4, 3)); g = f.copy(); g[:2] = 0.1; g[2:] = 0.9  # errors outside α* > 0 ignored
        >>> round(fgr_mse(g, f, pha), 6)
        10.0
    """
    pf = np.asarray(pred_fgr, dtype=np.float64)
    tf = np.asarray(true_fgr, dtype=np.float64)
    ta = check_matte(true_pha, "true_pha")
    if pf.ndim != 3 or pf.shape != tf.shape or pf.shape[:2] != ta.shape:
        raise ValueError(
            f"pred_fgr and true_fgr must be (H, W, C) arrays matching true_pha {ta.shape}, "
            f"got {pf.shape} and {tf.shape}"
        )
    region = ta > 0
    m = _check_mask(mask, ta.shape)
    if m is not None:
        region &= m
    err = ((pf - tf) ** 2).mean(axis=2)
    return _region_mean(err, region) * 1000.0


def all_metrics(pred_pha, true_pha, mask=None, *, pred_fgr=None, true_fgr=None) -> dict[str, float]:
    """Every metric at once: ``{"sad", "mse", "grad", "conn"}`` plus ``"fgr_mse"`` when both foregrounds are given.

    Args:
        pred_pha, true_pha: alphas ``(H, W)`` in ``[0, 1]``.
        mask: ``bool`` ``(H, W)`` region; ``None`` for all.
        pred_fgr, true_fgr: optional foregrounds ``(H, W, 3)`` in ``[0, 1]``.

    Example:
        >>> import numpy as np
        >>> a = np.zeros((8, 8))
        >>> all_metrics(a, a)
        {'sad': 0.0, 'mse': 0.0, 'grad': 0.0, 'conn': 0.0}
    """
    p, t = _check_pair(pred_pha, true_pha)
    m = _check_mask(mask, p.shape)
    out = {"sad": sad(p, t, m), "mse": mse(p, t, m), "grad": grad(p, t, m), "conn": conn(p, t, m)}
    if (pred_fgr is None) != (true_fgr is None):
        raise ValueError("pass both pred_fgr and true_fgr, or neither")
    if pred_fgr is not None:
        out["fgr_mse"] = fgr_mse(pred_fgr, true_fgr, t, m)
    return out
