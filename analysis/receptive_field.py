"""Measure a block's receptive field by gradients: which input positions influence one output.

The module runs in float64 and eval mode; the gradient of one output position (summed over
channels) with respect to the input is exactly zero at positions that cannot influence it,
so the influenced set is the set of non-zero gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from netdsl.backends.torch_backend import build_module
from netdsl.initializers import initial_weights
from netdsl.ir import Graph


@dataclass
class ReceptiveField:
    """Gradient magnitudes per input position (H x W) for one output position."""

    output_position: tuple[int, int]
    influence: np.ndarray  # [H, W], summed |d out / d in| over batch and channels

    @property
    def reached(self) -> np.ndarray:
        return self.influence > 0

    @property
    def fraction(self) -> float:
        return float(self.reached.mean())

    @property
    def extent(self) -> tuple[int, int]:
        """Height and width of the bounding box of the reached positions."""
        ys, xs = np.nonzero(self.reached)
        if len(ys) == 0:
            return (0, 0)
        return (int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1))


def measure(graph: Graph, position: tuple[int, int] | None = None, seed: int = 0,
            channels_last: bool = False) -> ReceptiveField:
    """Receptive field of output ``position`` (default: the centre) of the graph's first output."""
    if len(graph.inputs) != 1:
        raise ValueError("receptive-field measurement needs a graph with exactly one input")
    module = build_module(graph, initial_weights(graph, seed)).double().eval()
    shape = graph.values[graph.inputs[0]].shape
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.standard_normal(shape), dtype=torch.float64, requires_grad=True)
    out = module(x)
    out = out[0] if isinstance(out, (tuple, list)) else out
    h_axis, w_axis = (1, 2) if channels_last else (2, 3)
    if out.dim() != 4:
        raise ValueError(f"the output must be a 4-D map, found shape {tuple(out.shape)}")
    oh, ow = out.shape[h_axis], out.shape[w_axis]
    py, px = position if position is not None else (oh // 2, ow // 2)
    if not (0 <= py < oh and 0 <= px < ow):
        raise ValueError(f"position ({py}, {px}) is outside the {oh}x{ow} output")
    picked = out[:, py, px, :] if channels_last else out[:, :, py, px]
    picked.sum().backward()
    grad = x.grad.abs()
    influence = grad.sum(dim=(0, 3) if channels_last else (0, 1)).numpy()
    return ReceptiveField((py, px), influence)


def save_heatmap(rf: ReceptiveField, path: str, title: str) -> None:
    """Write a PNG heat map of log-influence with the output position marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from netdsl.atomic_write import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(4.5, 4))
    data = np.where(rf.reached, np.log10(rf.influence + 1e-300), np.nan)
    im = ax.imshow(data, cmap="viridis")
    ax.scatter([rf.output_position[1]], [rf.output_position[0]], marker="x", color="red")
    ax.set_title(f"{title}\n{100 * rf.fraction:.1f}% of input positions reached")
    fig.colorbar(im, ax=ax, label="log10 |gradient|")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
