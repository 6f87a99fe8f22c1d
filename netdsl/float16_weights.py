"""Weights held in float16 while a float16 model is compiled.

A float16 model is half the size of its float32 weights, so a compile that held the float32
weights through the pass pipeline and the range check would peak at twice the file it writes
before counting anything else. With ``--dtype float16`` the weights are therefore held as the
float16 arrays the file will contain from the moment they exist: each kernel and matrix is
rounded as it is drawn or loaded, and each one a pass computes (a folded batch-norm kernel) is
rounded when it is stored.

What stays float32:

* vectors and scalars (biases, norm scales, batch-norm statistics): a few kB per layer, and a
  running variance of 1e-6 would be a float16 subnormal with a tenth of its digits, which the
  folded kernel computed from it would inherit;
* any array that does not fit float16 (a finite value that would round to Inf), so that the range
  check names the parameter at its declaration with its float32 magnitude, as without holding.

Readers see the declared dtype where they compute: the interpreter casts each weight to its
parameter's dtype when a node reads it, and constant folding does the same. A kernel computed
from held weights (batch-norm folding) is rounded twice, once as it is held and once as it is
stored: within 1 ulp of float16 (2^-10 relative) of the float32 fold rounded once.
"""

from __future__ import annotations

import numpy as np

HELD_MIN_RANK = 2
"""Arrays of this rank or more (kernels, matrices, embeddings: nearly all of a model's bytes) are held in float16."""


def held(array: np.ndarray) -> np.ndarray:
    """``array`` as held for a float16 model: float16 for a floating kernel or matrix that fits, else itself."""
    if (not isinstance(array, np.ndarray) or array.ndim < HELD_MIN_RANK or array.dtype == np.float16
            or not np.issubdtype(array.dtype, np.floating)):
        return array
    with np.errstate(over="ignore"):
        half = array.astype(np.float16)
    if np.isinf(half).any() and (np.isinf(half) & np.isfinite(array)).any():
        return array  # beyond float16: left for the range check to report where it is declared
    return half


class Float16Weights(dict[str, np.ndarray]):
    """A name -> array dict that holds what it stores as :func:`held` makes it (assignment only)."""

    @classmethod
    def taking(cls, source: dict[str, np.ndarray]) -> Float16Weights:
        """The held form of ``source``, emptied entry by entry so that each float32 array can go once converted."""
        weights = cls()
        for name in list(source):
            weights[name] = source.pop(name)
        return weights

    def __setitem__(self, name: str, array: np.ndarray) -> None:
        super().__setitem__(name, held(array))
