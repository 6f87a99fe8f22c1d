"""Independent reference implementations of the CSA and ACmix blocks, used as test oracles.

The modules of this package are written from the operator-level descriptions of the two reference
implementations (NVIDIA's CSA and the official ACmix), not from their code:

* :mod:`reference.csa_numpy`, :mod:`reference.acmix_numpy`, :mod:`reference.swin_acmix_numpy`: eval-mode
  forward passes in numpy that take a state dict with the reference's exact key names, plus helpers that
  make random state dicts with the reference's keys, shapes and order.
* :mod:`reference.torch_modules`: PyTorch modules with the reference's module structure, so that their
  ``state_dict()`` equals the reference's key for key; they generate "reference checkpoints".

This file holds the numpy primitives the three numpy modules share (convolution, eval batch-norm,
activations, parameter lookup and random parameter generation). It imports nothing but numpy.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

StateDict = dict[str, np.ndarray]

BATCH_NORM_EPS = 1e-5


def param(sd: Mapping[str, np.ndarray], name: str, dtype: np.dtype) -> np.ndarray:
    """Entry ``name`` of the state dict ``sd`` as an array of ``dtype``.

    Raises KeyError naming the missing key, so a state dict with a wrong layout fails loudly.
    """
    if name not in sd:
        raise KeyError(f"state dict has no entry {name!r}")
    return np.asarray(sd[name], dtype=dtype)


def conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
) -> np.ndarray:
    """2-D cross-correlation of ``x`` (B, Cin, H, W) with ``weight`` (Cout, Cin/groups, kh, kw), zero padding.

    Output size per axis is ``(L + 2·padding − k) // stride + 1``, as in PyTorch's Conv2d.
    """
    batch, c_in, height, width = x.shape
    c_out, c_per_group, kh, kw = weight.shape
    if c_in != c_per_group * groups or c_out % groups:
        raise ValueError(f"conv2d: input has {c_in} channels, weight {weight.shape} with groups={groups}")
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    h_out = (height + 2 * padding - kh) // stride + 1
    w_out = (width + 2 * padding - kw) // stride + 1
    if h_out < 1 or w_out < 1:
        raise ValueError(f"conv2d: kernel {kh}x{kw} does not fit the padded {height}x{width} input")
    # One matmul per kernel offset; the group axis is a matmul batch axis, so BLAS does the work.
    w_grouped = weight.reshape(groups, c_out // groups, c_per_group, kh, kw)
    out = np.zeros((batch, groups, c_out // groups, h_out * w_out), dtype=np.result_type(x, weight))
    for u in range(kh):
        for v in range(kw):
            window = xp[:, :, u : u + stride * (h_out - 1) + 1 : stride, v : v + stride * (w_out - 1) + 1 : stride]
            window = window.reshape(batch, groups, c_per_group, h_out * w_out)
            out += np.matmul(w_grouped[None, :, :, :, u, v], window)
    out = out.reshape(batch, c_out, h_out, w_out)
    if bias is not None:
        out = out + bias.reshape(1, c_out, 1, 1)
    return out


def batch_norm_eval(x: np.ndarray, sd: Mapping[str, np.ndarray], prefix: str) -> np.ndarray:
    """BatchNorm2d in eval mode over axis 1 of ``x``, with the statistics stored under ``prefix``."""
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    mean = param(sd, prefix + "running_mean", x.dtype).reshape(shape)
    var = param(sd, prefix + "running_var", x.dtype).reshape(shape)
    weight = param(sd, prefix + "weight", x.dtype).reshape(shape)
    bias = param(sd, prefix + "bias", x.dtype).reshape(shape)
    return (x - mean) / np.sqrt(var + BATCH_NORM_EPS) * weight + bias


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic sigmoid, written with tanh so that large |x| neither overflows nor warns."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def swish(x: np.ndarray) -> np.ndarray:
    """``x · σ(x)`` (SiLU)."""
    return x * sigmoid(x)


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """Softmax along ``axis``, shifted by the maximum for stability."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def add_random_conv(
    sd: StateDict,
    rng: np.random.Generator,
    name: str,
    shape: tuple[int, int, int, int],
    *,
    bias: bool,
    dtype: type = np.float64,
) -> None:
    """Append ``name.weight`` (and ``name.bias``) of a Conv2d with weight ``shape`` to ``sd``.

    Weights are N(0, 1/fan_in) so that activations stay O(1) through a stack of blocks.
    """
    fan_in = shape[1] * shape[2] * shape[3]
    sd[name + ".weight"] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(dtype)
    if bias:
        sd[name + ".bias"] = (0.1 * rng.standard_normal(shape[0])).astype(dtype)


def add_random_batch_norm(
    sd: StateDict, rng: np.random.Generator, name: str, channels: int, *, dtype: type = np.float64
) -> None:
    """Append the five BatchNorm2d entries of ``name`` to ``sd`` in PyTorch's order; running_var is positive."""
    sd[name + ".weight"] = rng.uniform(0.5, 1.5, channels).astype(dtype)
    sd[name + ".bias"] = (0.1 * rng.standard_normal(channels)).astype(dtype)
    sd[name + ".running_mean"] = (0.1 * rng.standard_normal(channels)).astype(dtype)
    sd[name + ".running_var"] = rng.uniform(0.5, 2.0, channels).astype(dtype)
    sd[name + ".num_batches_tracked"] = np.array(rng.integers(0, 1000), dtype=np.int64)
