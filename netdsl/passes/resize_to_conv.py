"""``resize`` by a fractional or shrinking factor -> per-axis 1x1 convs with the interpolation matrix.

DLA resizes only up, by whole factors; CSA resizes its maps to and from an ``sr_to`` grid by
factors such as 14/56, 14/27 and 27/14. Along one axis a resize is a matrix product,
``y = M x`` with ``M[n_out, n_in]`` from :func:`netdsl.resample.interpolation_matrix` (two taps
per row for bilinear, one for nearest), and a matrix product over one axis is a 1x1 conv once that
axis is the channel axis. So each axis that needs it becomes::

    transpose (axis <-> channels) -> conv 1x1 with weight M[n_out, n_in, 1, 1], no bias -> transpose back

and ``cleanup_shuffles`` merges the transposes between the two axes into one. Each output is the
same two-term weighted sum as the resize's, summed in another order (float32: a few ulps).
Cost: ``n_out * n_in`` MACs per output column instead of two; for CSA's 27 -> 14 reduction
(192 channels) about 3 M MACs per block, next to the block's ~100 M.

A resize shrinking by whole factors (CSA's 56 -> 14) becomes the single strided depth-wise conv
of ``downscale_to_conv`` instead. Resizes whose factors are both whole numbers (upsampling, which
DLA runs natively) stay; in a resize that needs the rewrite, an axis upsampled by a whole factor
stays a resize of that axis.
"""

from __future__ import annotations

from netdsl.ir import Graph, Node
from netdsl.passes.downscale_to_conv import downscale_as_conv
from netdsl.passes.rewriter import Emitter, node_pass
from netdsl.resample import interpolation_matrix

RULE = "resize_to_conv"
_SWAP = {2: (0, 2, 1, 3), 3: (0, 3, 2, 1)}  # bring the height / width axis to the channel position


def _whole_upsampling(scale: float) -> bool:
    return scale >= 1 and float(scale).is_integer()


def _interpolate_axis(em: Emitter, x: str, axis: int, n_out: int, scale: float, mode: str) -> str:
    """``x`` resized along ``axis`` by transposing it to the channels and mixing them with a 1x1 conv."""
    n_in = em.graph.type_of(x).shape[axis]
    matrix = interpolation_matrix(n_in, n_out, scale, mode)
    swapped = em.op("transpose", [x], "swap", perm=_SWAP[axis])
    weight = em.const(matrix.reshape(n_out, n_in, 1, 1), em.graph.type_of(x).dtype, "interpolation")
    mixed = em.op("conv", [swapped, weight], "interpolate", stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1),
                  groups=1)
    return em.op("transpose", [mixed], "unswap", perm=_SWAP[axis])


def _rewrite(node: Node, em: Emitter) -> list[str] | None:
    if all(_whole_upsampling(s) for s in node.attrs["scales"]):
        return None
    shrunk = downscale_as_conv(node, em)  # by whole factors: one depth-wise conv does it
    if shrunk is not None:
        return shrunk
    scales = tuple(node.attrs["scales"])
    sizes, mode = tuple(node.attrs["sizes"]), node.attrs["mode"]
    x = node.inputs[0]
    for axis, n_out, scale in zip((2, 3), sizes, scales):
        if not _whole_upsampling(scale):
            x = _interpolate_axis(em, x, axis, n_out, scale, mode)
    # An axis upsampled by a whole factor stays a (DLA-native) resize of that axis alone.
    kept = [(n, s) if _whole_upsampling(s) else (n, 1.0) for n, s in zip(sizes, scales)]
    if any(s > 1 for _, s in kept):
        x = em.op("resize", [x], mode=mode, scales=tuple(s for _, s in kept), sizes=tuple(n for n, _ in kept))
    return [x]


def only_whole_upsampling(graph: Graph) -> list[str]:
    """Postcondition: every resize left upsamples by whole factors."""
    return [f"resize {n.outputs[0]} by {tuple(n.attrs['scales'])} is left" for n in graph.nodes
            if n.op == "resize" and not all(_whole_upsampling(s) for s in n.attrs["scales"])]


PASS = node_pass(RULE, "lower", _rewrite, __doc__ or "", post=only_whole_upsampling, matches=("resize",))
