"""The numpy arrays of the constants a spec writes: literal numbers, ``constant(...)``, ``swin_mask(...)``.

The IR holds a constant's value as a numpy array (passes fold them, backends write them). Making
them is the only step of elaboration that needs numpy, so it lives here and the elaborator imports
this module when a spec has a constant: type-checking a spec without constants (``netdsl check``)
never pays numpy's start-up.
"""

from __future__ import annotations

import numpy as np

from netdsl.initializers import NP_DTYPES


def scalar(value: float, dtype: str) -> np.ndarray:
    """The rank-0 array of ``value`` as IR dtype ``dtype``."""
    return np.asarray(value, dtype=NP_DTYPES[dtype])


def filled(shape: tuple[int, ...], value: float, dtype: str) -> np.ndarray:
    """An array of ``shape`` holding ``value`` everywhere, as IR dtype ``dtype``."""
    return np.full(shape, value, dtype=NP_DTYPES[dtype])


def swin_mask(height: int, width: int, window: int, shift: int, batch: int) -> np.ndarray:
    """The shifted-window attention mask, f32[batch*nW, 1, N, N]: 0 between positions of one region of the
    shifted map, -100 across regions (the window size divides the map, ``0 <= shift < window``)."""
    region = np.zeros((height, width))
    cuts = [slice(0, -window), slice(-window, -shift if shift else None), slice(-shift, None) if shift else slice(0, 0)]
    label = 0
    for rows in cuts:
        for cols in cuts:
            region[rows, cols] = label
            label += 1
    windows = region.reshape(height // window, window, width // window, window).transpose(0, 2, 1, 3)
    windows = windows.reshape(-1, window * window)
    mask = np.where(windows[:, None, :] != windows[:, :, None], -100.0, 0.0).astype(np.float32)
    return np.tile(mask[:, None], (batch, 1, 1, 1))
