"""Seeded default values for a graph's parameters, computed with numpy.

Every backend takes its weights from :func:`initial_weights`, so the ONNX model and the
PyTorch module built from the same spec and seed hold identical numbers.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable

import numpy as np

from netdsl.ir import Graph, Init, Parameter

NP_DTYPES = {
    "f32": np.float32, "f16": np.float16, "f64": np.float64, "i64": np.int64, "i32": np.int32, "bool": np.bool_,
}


def _rng(seed: int, name: str) -> np.random.Generator:
    # One stream per parameter name: adding a parameter does not change the others' values.
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _shift_kernels(shape: tuple[int, ...], k: int) -> np.ndarray:
    out = np.zeros(shape)
    for j in range(shape[1]):
        out[:, j, j // k, j % k] = 1.0
    return out


def _relative_position_index(window: int) -> np.ndarray:
    ys, xs = np.meshgrid(np.arange(window), np.arange(window), indexing="ij")
    coords = np.stack([ys.ravel(), xs.ravel()])  # 2, N
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
    return rel[0] * (2 * window - 1) + rel[1]


# Parameters with at least this many elements are drawn on worker threads: numpy's generators
# fill arrays without holding the GIL, so large draws run in parallel; small ones are not worth a hand-off.
PARALLEL_MIN_ELEMENTS = 1 << 16


def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    data = rng.standard_normal(shape, dtype=np.float32)
    data *= np.float32(std)  # in place: no second buffer for large weights
    return data


def initial_value(p: Parameter, seed: int = 0) -> np.ndarray:
    """The value of parameter ``p`` given by its :class:`Init`, reproducible from ``seed``."""
    init: Init = p.init
    shape = p.type.shape
    rng = _rng(seed, p.name)
    kind = init.kind
    if kind == "fill":
        data = np.full(shape, init.arg("value"))
    elif kind == "zeros":
        data = np.zeros(shape)
    elif kind == "ones":
        data = np.ones(shape)
    elif kind == "uniform_fan_in":
        bound = 1.0 / np.sqrt(init.arg("fan_in"))
        # Drawn in float32 directly: half the work of float64 draws for large models.
        data = rng.random(shape, dtype=np.float32)
        data *= np.float32(2 * bound)  # in place, the same float32 roundings as `data * 2b - b`
        data -= np.float32(bound)
    elif kind == "normal":
        data = _normal(rng, shape, init.arg("std"))
    elif kind == "trunc_normal":
        std, lo, hi = init.arg("std"), init.arg("a", -2.0), init.arg("b", 2.0)
        data = _normal(rng, shape, std)
        outside = (data < lo) | (data > hi)
        while outside.any():  # redraw (not clip): a truncated normal has no mass at the bounds
            data[outside] = _normal(rng, (int(outside.sum()),), std)
            outside = (data < lo) | (data > hi)
    elif kind == "kaiming_normal_fan_out":
        data = _normal(rng, shape, np.sqrt(2.0 / init.arg("fan_out")))
    elif kind == "shift":
        data = _shift_kernels(shape, init.arg("kernel"))
    elif kind == "relative_position_index":
        data = _relative_position_index(init.arg("window")).reshape(shape)
    else:
        raise ValueError(f"unknown initializer kind {kind!r} for {p.name}")
    return np.asarray(data, dtype=NP_DTYPES[p.type.dtype], order="C")


def initial_weights(graph: Graph, seed: int = 0,
                    hold: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Values of every parameter and buffer of ``graph``, in declaration order.

    Each parameter has its own random stream, so drawing the large ones on worker threads gives
    the same values as drawing everything in turn. ``hold`` maps each value to the array kept,
    as soon as it is drawn (e.g. :func:`netdsl.float16_weights.held`): the drawn arrays are never
    all alive at once.
    """
    params = list(graph.params.values())

    def draw(p: Parameter) -> np.ndarray:
        value = initial_value(p, seed)
        return value if hold is None else hold(value)

    large = sorted((p for p in params if math.prod(p.type.shape) >= PARALLEL_MIN_ELEMENTS),
                   key=lambda p: -math.prod(p.type.shape))  # largest first, for an even split
    workers = min(len(large), os.cpu_count() or 1)
    if workers < 2:
        return {p.name: draw(p) for p in params}
    from concurrent.futures import ThreadPoolExecutor  # only here: its import (logging, threads) costs 3 ms

    with ThreadPoolExecutor(max_workers=workers) as pool:
        drawing = {p.name: pool.submit(draw, p) for p in large}
        values = {p.name: draw(p) for p in params if p.name not in drawing}
        values.update((name, future.result()) for name, future in drawing.items())
    return {p.name: values[p.name] for p in params}
