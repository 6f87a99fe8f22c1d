"""NumPy reference of NVIDIA's CSA block (``Block_Conv_SelfAttn``) and backbone (``CSA_backbone``), eval mode.

Written from the operator-level description in ``csa-reference.md``. The forward passes take a state dict
with the reference's key names; where the reference itself fails at run time (a resize round trip that
does not return to the input size, a rotation whose map is not ``sr_to × sr_to``) they raise ValueError.
Swish is ``x·σ(x)`` (the reference's Swish is broken as published; this is its evident fix).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from . import (
    StateDict,
    add_random_batch_norm,
    add_random_conv,
    batch_norm_eval,
    conv2d,
    param,
    sigmoid,
    swish,
)

# Arguments with which the registered model ``convselfattn`` builds its backbone; the rest are the defaults.
CONVSELFATTN_ARGS: dict[str, object] = {
    "depths": (3, 4, 6, 3),
    "dims": (96, 192, 384, 768),
    "num_heads": (1, 2, 4, 8),
    "mlp_dim": (3, 3, 3, 3),
    "sr_to": (14, 14, 14, 7),
    "neighbors": 5,
}

AVG_POOL_KERNEL = 6


@dataclasses.dataclass(frozen=True)
class CSABackboneConfig:
    """The constructor arguments of ``CSA_backbone`` with their defaults.

    ``drop_path_rate`` and ``head_init_scale`` only matter for training and initialisation; they are
    accepted so that any argument set valid for the reference constructor is valid here.
    """

    in_chans: int = 3
    num_classes: int = 1000
    depths: Sequence[int] = (3, 3, 9, 3)
    dims: Sequence[int] = (96, 192, 384, 768)
    drop_path_rate: float = 0.0
    layer_scale_init_value: float = 0.0
    head_init_scale: float = 1.0
    ds_patch: Sequence[int] = (7, 3, 3, 3)
    strides: Sequence[int] = (4, 2, 2, 2)
    num_heads: Sequence[int] = (1, 2, 4, 8)
    mlp_dim: Sequence[int] = (2, 2, 2, 2)
    sr_to: Sequence[int] = (14, 14, 14, 7)
    neighbors: int = 5

    def block_args(self, phase: int) -> dict[str, object]:
        """Keyword arguments of :func:`csa_block` for the blocks of ``phase``."""
        return {
            "dim": self.dims[phase],
            "layer_scale_init_value": self.layer_scale_init_value,
            "sr_to": self.sr_to[phase],
            "num_heads": self.num_heads[phase],
            "mlp_ratio": self.mlp_dim[phase],
            "neighbors": self.neighbors,
        }

    def downsample_conv(self, phase: int) -> tuple[int, int, int, int]:
        """(in channels, out channels, kernel, padding) of the down-sampling conv of ``phase``; only the stem pads."""
        c_in = self.in_chans if phase == 0 else self.dims[phase - 1]
        padding = self.ds_patch[0] // 2 if phase == 0 else 0
        return c_in, self.dims[phase], self.ds_patch[phase], padding


# ----------------------------------------------------------------------------------------------------------
# Bilinear resize by scale factor (PyTorch eager semantics, align_corners=False, no antialiasing)


def scaled_length(length: int, scale: float) -> int:
    """Output length of a resize by ``scale``: ``trunc(length · scale)`` computed in double."""
    return int(length * scale)


def _resize_axis(x: np.ndarray, axis: int, scale: float) -> np.ndarray:
    n_in = x.shape[axis]
    n_out = scaled_length(n_in, scale)
    if n_out < 1:
        raise ValueError(f"resize of length {n_in} by {scale} gives an empty output")
    # Sampling positions use the user's factor, not n_out / n_in.
    src = np.maximum((np.arange(n_out) + 0.5) * (1.0 / scale) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    shape = [1] * x.ndim
    shape[axis] = n_out
    lam = (src - i0).astype(x.dtype).reshape(shape)
    return (1 - lam) * np.take(x, i0, axis=axis) + lam * np.take(x, i1, axis=axis)


def resize_bilinear_by_scale(x: np.ndarray, scale_h: float, scale_w: float) -> np.ndarray:
    """``interpolate(x, scale_factor=(scale_h, scale_w), mode='bilinear', align_corners=False)`` on NCHW ``x``."""
    return _resize_axis(_resize_axis(x, 2, scale_h), 3, scale_w)


# ----------------------------------------------------------------------------------------------------------
# CSA block


def rotate_heads(q: np.ndarray, num_heads: int, sr_to: int) -> np.ndarray:
    """The CSA "rotation": per head, swap the roles of the ``sr_to²`` in-head channels and the spatial positions.

    ``k[b, n·S + c, y, x] = q[b, n·S + (y·w + x), c // w, c % w]`` with ``S = sr_to²``; defined only when the
    map of ``q`` has exactly ``S`` positions.
    """
    batch, channels, h, w = q.shape
    positions = sr_to * sr_to
    if channels != num_heads * positions or h * w != positions:
        raise ValueError(
            f"rotation needs a map of {sr_to}x{sr_to} positions with {num_heads}·{positions} channels, "
            f"got {channels} channels on {h}x{w}"
        )
    head = np.arange(num_heads).reshape(-1, 1, 1, 1)
    chan = np.arange(positions).reshape(1, -1, 1, 1)
    y = np.arange(h).reshape(1, 1, -1, 1)
    x = np.arange(w).reshape(1, 1, 1, -1)
    k = q[:, head * positions + y * w + x, chan // w, chan % w]
    return k.reshape(batch, channels, h, w)


def _require_same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes {a.shape} and {b.shape} differ (the reference fails here too)")


def csa_block(
    x: np.ndarray,
    sd: StateDict,
    *,
    dim: int,
    layer_scale_init_value: float = 0,
    sr_to: int = 14,
    num_heads: int = 4,
    mlp_ratio: int = 3,
    neighbors: int = 7,
    prefix: str = "",
) -> np.ndarray:
    """Eval-mode forward of one CSA block on NCHW ``x``, with the weights ``sd[prefix + key]``.

    Computes in the dtype of ``x``. Raises ValueError where the reference fails (see module docstring).
    """
    batch, channels, height, width = x.shape
    if channels != dim:
        raise ValueError(f"CSA block of dim {dim} got {channels} input channels")

    def weights(name: str) -> np.ndarray:
        return param(sd, prefix + name, x.dtype)

    v = conv2d(x, weights("v.weight"), weights("v.bias"), padding=neighbors // 2, groups=dim)
    v = swish(batch_norm_eval(v, sd, prefix + "act_v.0."))
    scale_h, scale_w = sr_to / height, sr_to / width
    v_small = resize_bilinear_by_scale(v, scale_h, scale_w)
    q = batch_norm_eval(conv2d(v_small, weights("q.weight"), weights("q.bias")), sd, prefix + "norm_q.")
    relations = q * rotate_heads(q, num_heads, sr_to)
    relations = resize_bilinear_by_scale(relations, 1.0 / scale_h, 1.0 / scale_w)
    gate = conv2d(relations, weights("qk.weight"), weights("qk.bias"))
    gate = sigmoid(batch_norm_eval(gate, sd, prefix + "act_qk.0."))
    _require_same_shape(gate, v, "gate ⊙ v")
    hidden = conv2d(gate * v, weights("qkv.weight"), weights("qkv.bias"))
    hidden = swish(batch_norm_eval(hidden, sd, prefix + "act_qkv.0."))
    t = conv2d(hidden, weights("mlp.weight"), weights("mlp.bias"))
    if layer_scale_init_value > 0:
        t = weights("gamma") * t
    _require_same_shape(t, x, "residual add")
    return x + t


def random_csa_state(
    rng: np.random.Generator,
    *,
    dim: int,
    layer_scale_init_value: float = 0,
    sr_to: int = 14,
    num_heads: int = 4,
    mlp_ratio: int = 3,
    neighbors: int = 7,
    prefix: str = "",
    dtype: type = np.float64,
) -> StateDict:
    """A random state dict of one CSA block: the reference's keys (under ``prefix``), shapes and order."""
    q_channels = num_heads * sr_to * sr_to
    hidden = mlp_ratio * dim
    sd: StateDict = {}
    if layer_scale_init_value > 0:
        # Random rather than the init value, so that a wrongly applied layer scale shows up.
        sd[prefix + "gamma"] = rng.uniform(0.5, 1.5, (1, dim, 1, 1)).astype(dtype)
    add_random_conv(sd, rng, prefix + "v", (dim, 1, neighbors, neighbors), bias=True, dtype=dtype)
    add_random_batch_norm(sd, rng, prefix + "act_v.0", dim, dtype=dtype)
    add_random_conv(sd, rng, prefix + "q", (q_channels, dim, 1, 1), bias=True, dtype=dtype)
    add_random_batch_norm(sd, rng, prefix + "norm_q", q_channels, dtype=dtype)
    add_random_conv(sd, rng, prefix + "qk", (dim, q_channels, 1, 1), bias=True, dtype=dtype)
    add_random_batch_norm(sd, rng, prefix + "act_qk.0", dim, dtype=dtype)
    add_random_conv(sd, rng, prefix + "qkv", (hidden, dim, 1, 1), bias=True, dtype=dtype)
    add_random_batch_norm(sd, rng, prefix + "act_qkv.0", hidden, dtype=dtype)
    add_random_conv(sd, rng, prefix + "mlp", (dim, hidden, 1, 1), bias=True, dtype=dtype)
    return sd


# ----------------------------------------------------------------------------------------------------------
# Backbone


def _avg_pool(x: np.ndarray, kernel: int) -> np.ndarray:
    """AvgPool2d(kernel), stride = kernel, no padding, floor mode."""
    batch, channels, height, width = x.shape
    h_out, w_out = height // kernel, width // kernel
    if h_out < 1 or w_out < 1:
        raise ValueError(f"AvgPool2d({kernel}) on a {height}x{width} map gives an empty output")
    x = x[:, :, : h_out * kernel, : w_out * kernel]
    return x.reshape(batch, channels, h_out, kernel, w_out, kernel).mean(axis=(3, 5))


def csa_backbone(x: np.ndarray, sd: StateDict, **constructor_args: object) -> np.ndarray:
    """Eval-mode forward of ``CSA_backbone(**constructor_args)`` on NCHW ``x``; every size-1 axis is squeezed."""
    cfg = CSABackboneConfig(**constructor_args)
    for phase in range(len(cfg.depths)):
        _, _, _, padding = cfg.downsample_conv(phase)
        stem = f"downsample_layers.{phase}."
        x = conv2d(
            x,
            param(sd, stem + "0.weight", x.dtype),
            param(sd, stem + "0.bias", x.dtype),
            stride=cfg.strides[phase],
            padding=padding,
        )
        x = batch_norm_eval(x, sd, stem + "1.")
        for block in range(cfg.depths[phase]):
            x = csa_block(x, sd, prefix=f"stages.{phase}.{block}.", **cfg.block_args(phase))
    x = batch_norm_eval(_avg_pool(x, AVG_POOL_KERNEL), sd, "norm.")
    x = conv2d(x, param(sd, "head.weight", x.dtype), param(sd, "head.bias", x.dtype))
    return np.squeeze(x)


def random_csa_backbone_state(
    rng: np.random.Generator, *, dtype: type = np.float64, **constructor_args: object
) -> StateDict:
    """A random state dict of ``CSA_backbone(**constructor_args)`` with the reference's keys, shapes and order."""
    cfg = CSABackboneConfig(**constructor_args)
    sd: StateDict = {}
    for phase in range(len(cfg.depths)):
        c_in, c_out, kernel, _ = cfg.downsample_conv(phase)
        add_random_conv(sd, rng, f"downsample_layers.{phase}.0", (c_out, c_in, kernel, kernel), bias=True, dtype=dtype)
        add_random_batch_norm(sd, rng, f"downsample_layers.{phase}.1", c_out, dtype=dtype)
    for phase in range(len(cfg.depths)):
        for block in range(cfg.depths[phase]):
            sd.update(random_csa_state(rng, prefix=f"stages.{phase}.{block}.", dtype=dtype, **cfg.block_args(phase)))
    add_random_batch_norm(sd, rng, "norm", cfg.dims[-1], dtype=dtype)
    add_random_conv(sd, rng, "head", (cfg.num_classes, cfg.dims[-1], 1, 1), bias=True, dtype=dtype)
    return sd
