"""Where each output pixel of a ``resize`` reads from: source indices and weights per axis.

One definition of the sampling rule of :mod:`netdsl.opdefs` ``resize`` (PyTorch ``interpolate``,
align_corners=False), shared by the numpy interpreter and by the passes that rewrite resizes into
other layers, so that both compute exactly what the op means.
"""

from __future__ import annotations

import numpy as np


def linear_taps(n_in: int, n_out: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """half_pixel two-tap sampling with the user factor: (i0, i1, lambda) per output index.

    src = (d + 0.5) / scale - 0.5 clamped at 0, in float64. Like PyTorch, it multiplies by the
    reciprocal of the factor (one ulp from a division at most); PyTorch does that arithmetic in
    the tensor's dtype, so float32 tensors differ from this by ~1e-6.
    """
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (1.0 / scale) - 0.5, 0.0)
    # With n_out = trunc(n_in * scale) floor(src) <= n_in - 1 already; the clip only guards sizes
    # that were set by hand.
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def nearest_taps(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """Nearest source index per output index: floor(d / scale) clamped to n_in - 1, in float64.

    PyTorch computes floor(d * float32(1 / scale)) in float32 (and d // 2 when n_out == 2 * n_in),
    which picks the neighbouring pixel for some sizes, e.g. 14 -> 18; factors whose reciprocal is
    exact in float32 (2, 0.5, 4, ...) agree.
    """
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float64) / scale).astype(np.int64), n_in - 1)


def interpolation_matrix(n_in: int, n_out: int, scale: float, mode: str) -> np.ndarray:
    """The float64 matrix ``M[n_out, n_in]`` with ``resize(x) = M @ x`` along one axis.

    Linear rows hold ``1 - lambda`` and ``lambda`` (summed where both taps clamp to the same
    pixel); nearest rows hold a single 1.
    """
    m = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    if mode == "nearest":
        m[rows, nearest_taps(n_in, n_out, scale)] = 1.0
        return m
    i0, i1, lam = linear_taps(n_in, n_out, scale)
    np.add.at(m, (rows, i0), 1.0 - lam)
    np.add.at(m, (rows, i1), lam)
    return m
