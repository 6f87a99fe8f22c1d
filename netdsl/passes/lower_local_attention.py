"""``local_attention`` (ACmix / SASA sliding-window attention) -> conv, elementwise, shuffle, slice, concat, softmax.

Restricted TensorRT has no Pad, Gather, MatMul, Einsum or Reduce layer, so the op is rebuilt from
what it allows, without materialising ``kernel²``-times expanded key or value tensors. With
``p = (kernel - 1) // 2``, ``N = kernel²`` window slots and ``d = C / heads``:

1. ``k`` and ``v`` are reflection-padded by ``p`` once, as slices + concats (the ``pad`` op is not
   allowed either). Slot ``n = (a, b)`` of every output pixel is then a slice of the padded map:
   rows ``a, a+s, ...`` (cut once per ``a``), columns ``b, b+s, ...``; with a stride ``s``, unit-step
   slices of the map's ``s x s`` phases.
2. Content logits, per slot: ``q_s ⊙ K_n`` (``q_s`` = ``q`` at the output positions), summed over
   the ``d`` channels of each head by a grouped 1x1 convolution whose constant kernel is filled
   with ``scale`` (groups = heads), giving ``[B, heads, Ho, Wo]``; the ``N`` maps are concatenated to
   ``[B, heads, N, Ho·Wo]``.
3. Positional logits ``scale · Σ_e q_s[e] · (pos_q[e] − pos_n[e])``:

   * when ``pos`` is a 1x1 convolution ``Wp·grid + b`` of the positional grid (ACmix's ``conv_p``),
     ``pos_q − pos_n = Wp·(G_q − G_n)`` — the bias cancels and reflection commutes with a per-pixel
     affine map — where ``G_q − G_n`` is a constant ``[2, N, Ho·Wo]`` computed here from the
     grid. So ``Q' = Wpᵀ q_s`` (a grouped 1x1 conv of ``q_s`` whose kernel is ``Wpᵀ`` repeated per
     head, a parameter-only subgraph that constant folding folds), and the term for all slots is
     ``Q'[x] · (scale·ΔG_x) + Q'[y] · (scale·ΔG_y)``: two broadcast products on ``[B, heads, N, Ho·Wo]``
     instead of ``N`` extra passes over ``[B, C, Ho, Wo]``;
   * any other ``pos`` is repeated per head, reflection-padded and sliced like ``k``, and
     ``pos_q − pos_n`` is added to ``K_n`` before the product.

4. Softmax over the slot axis (axis 2 of ``[B, heads, N, Ho·Wo]``; kept 4-D because ONNX Runtime's
   Softmax over a middle axis of a 5-D tensor was measured about ten times slower).
5. ``y = Σ_n A_n ⊙ V_n``: ``A_n`` ``[B, heads, 1, Ho·Wo]`` broadcasts over the ``d`` channels of
   ``V_n`` viewed as ``[B, heads, d, Ho·Wo]``; a running sum of ``N`` products.

Cost: about ``5·N`` elementwise passes over ``[B, C, Ho, Wo]``; the largest intermediate is the
``[B, heads, N, Ho·Wo]`` logit tensor. In ONNX Runtime (CPU, one 64-channel ACmix block on a 56x56
map) this was faster than the alternatives tried, with which the whole block took longer: a full
1x1 conv with a block-ones kernel instead of the grouped one (about 20%), adding
``pos_q − pos_n`` per slot instead of the grid factorisation (about 15%), and stacking the
``kernel`` row offsets on an axis to batch the column slices (larger copies; about twice as long).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from netdsl.interp import eval_node
from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.pad_to_slice_concat import pad_axis
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "lower_local_attention"


@dataclass(frozen=True)
class Window:
    """The geometry of one ``local_attention`` node."""

    batch: int
    channels: int
    height: int
    width: int
    heads: int
    kernel: int
    stride: int

    @property
    def head_dim(self) -> int:
        return self.channels // self.heads

    @property
    def pad(self) -> int:
        return (self.kernel - 1) // 2

    @property
    def out_h(self) -> int:
        return self.height // self.stride

    @property
    def out_w(self) -> int:
        return self.width // self.stride

    @property
    def slots(self) -> list[tuple[int, int]]:
        """Window offsets (a, b) in slot order n = a·kernel + b."""
        return [(a, b) for a in range(self.kernel) for b in range(self.kernel)]


def _strided(em: Emitter, x: str, axis: int, start: int, count: int, step: int) -> str:
    """``count`` entries of ``x`` along ``axis`` from ``start`` with ``step`` (no node if that is all of it)."""
    if start == 0 and step == 1 and em.graph.type_of(x).shape[axis] == count:
        return x
    return em.op("slice", [x], axis=axis, start=start, end=start + (count - 1) * step + 1, step=step)


def at_outputs(em: Emitter, x: str, win: Window) -> str:
    """``x[..., ::s, ::s]``: the map at the (top-left aligned) output positions."""
    rows = _strided(em, x, 2, 0, win.out_h, win.stride)
    return _strided(em, rows, 3, 0, win.out_w, win.stride)


def _phases(em: Emitter, x: str, axis: int, stride: int) -> list[str]:
    """``x[r::stride]`` along ``axis`` for r < stride (just ``[x]`` for stride 1)."""
    n = em.graph.type_of(x).shape[axis]
    return [_strided(em, x, axis, r, len(range(r, n, stride)), stride) for r in range(stride)]


def _slot_maps(em: Emitter, x: str, win: Window) -> list[str]:
    """Per slot (a, b): ``x`` reflection-padded by p, at rows ``s·i + a`` and columns ``s·j + b``.

    With a stride, the padded map is first split into its ``s x s`` phases (``[r::s, c::s]``), so
    that each slot is a unit-step slice of one phase: strided slices are far slower than
    contiguous ones in ONNX Runtime, and this way there are only ``s²`` of them per map.
    """
    s, p = win.stride, win.pad
    padded = pad_axis(em, pad_axis(em, x, 2, p, p, "reflect"), 3, p, p, "reflect")
    phases = [_phases(em, rows, 3, s) for rows in _phases(em, padded, 2, s)]  # phases[r][c] = padded[r::s, c::s]
    rows = [[_strided(em, phase, 2, a // s, win.out_h, 1) for phase in phases[a % s]] for a in range(win.kernel)]
    return [_strided(em, rows[a][b % s], 3, b // s, win.out_w, 1) for a, b in win.slots]


def _grid_projection(em: Emitter, pos: str) -> tuple[Node, str] | None:
    """(grid node, weight) when ``pos`` is a 1x1 convolution of a positional ``grid``, else None."""
    conv = em.producer(pos)
    if conv is None or conv.op != "conv":
        return None
    grid = em.producer(conv.inputs[0])
    pointwise = (
        em.graph.type_of(conv.inputs[1]).shape[2:] == (1, 1)
        and tuple(conv.attrs["stride"]) == (1, 1)
        and tuple(conv.attrs["pads"]) == (0, 0, 0, 0)
        and conv.attrs["groups"] == 1
    )
    if grid is None or grid.op != "grid" or not pointwise:
        return None
    return grid, conv.inputs[1]


def _grid_offsets(grid: Node, win: Window) -> np.ndarray:
    """``G_q − G_n``: [2, N, Ho·Wo], the grid at each output position minus its reflected window slot."""
    g = eval_node(grid, [])[0][0].astype(np.float64)  # [2, H, W], exactly the grid op's values
    p, s = win.pad, win.stride
    padded = np.pad(g, ((0, 0), (p, p), (p, p)), mode="reflect")
    at_q = g[:, ::s, ::s]
    rows, cols = (win.out_h - 1) * s + 1, (win.out_w - 1) * s + 1
    diffs = [at_q - padded[:, a:a + rows:s, b:b + cols:s] for a, b in win.slots]
    return np.stack(diffs, axis=1).reshape(2, len(diffs), win.out_h * win.out_w)


def _position_logits(em: Emitter, q_s: str, grid: Node, weight: str, win: Window, scale: float) -> str:
    """``scale · Σ_e q_s[e] (pos_q[e] − pos_n[e])`` for ``pos = conv1x1(grid, weight)``: [B, heads, N, Ho·Wo]."""
    dtype = em.graph.type_of(q_s).dtype
    # Wp is [d, 2, 1, 1]; the grouped conv needs, per head h, rows h·2 + c holding Wp[:, c].
    per_head = em.op("reshape", [em.op("transpose", [weight], perm=(1, 0, 2, 3))], shape=(2, win.head_dim, 1, 1))
    kernel = em.op("concat", [per_head] * win.heads, axis=0) if win.heads > 1 else per_head
    projected = em.op("conv", [q_s, kernel], "pos_proj", stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1),
                      groups=win.heads)
    projected = em.op("reshape", [projected], shape=(win.batch, win.heads, 2, win.out_h * win.out_w))
    offsets = scale * _grid_offsets(grid, win)
    terms = []
    for axis in range(2):
        coord = em.op("slice", [projected], axis=2, start=axis, end=axis + 1, step=1)
        terms.append(em.op("mul", [coord, em.const(offsets[axis][None, None], dtype, "grid_offsets")]))
    return em.op("add", terms, "pos_logits")


def _relative_keys(em: Emitter, keys: list[str], pos: str, win: Window) -> list[str]:
    """``K_n + (pos_q − pos_n)`` per slot, for a positional encoding of any origin (repeated per head)."""
    tiled = em.op("concat", [pos] * win.heads, axis=1) if win.heads > 1 else pos
    at_q = at_outputs(em, tiled, win)
    return [em.op("add", [key, em.op("sub", [at_q, pos_n])]) for key, pos_n in
            zip(keys, _slot_maps(em, tiled, win), strict=True)]


def _content_logits(em: Emitter, q_s: str, keys: list[str], win: Window, scale: float) -> str:
    """``scale · Σ_e q_s[e] · K_n[e]`` per head and slot: [B, heads, N, Ho·Wo]."""
    flat = win.out_h * win.out_w
    head_sum = em.const(np.full((win.heads, win.head_dim, 1, 1), scale), em.graph.type_of(q_s).dtype, "head_sum")
    logits = []
    for key in keys:
        summed = em.op("conv", [em.op("mul", [q_s, key]), head_sum], "logit", stride=(1, 1), pads=(0, 0, 0, 0),
                       dilation=(1, 1), groups=win.heads)
        logits.append(em.op("reshape", [summed], shape=(win.batch, win.heads, 1, flat)))
    return em.op("concat", logits, "logits", axis=2)


def _weighted_values(em: Emitter, attn: str, values: list[str], win: Window) -> str:
    """``Σ_n A_n ⊙ V_n`` for ``attn`` [B, heads, N, Ho·Wo]: [B, C, Ho, Wo]."""
    view = (win.batch, win.heads, win.head_dim, win.out_h * win.out_w)
    # A generator, so that each product is emitted just before it is added: a runtime that follows
    # the node order then keeps one product alive at a time, not N.
    terms = (em.op("mul", [em.op("slice", [attn], axis=2, start=n, end=n + 1, step=1),
                           em.op("reshape", [value], shape=view)])
             for n, value in enumerate(values))
    out = next(terms)
    for term in terms:
        out = em.op("add", [out, term])
    return em.op("reshape", [out], shape=(win.batch, win.channels, win.out_h, win.out_w))


def _lower_local_attention(node: Node, em: Emitter) -> list[str] | None:
    q, k, v, *pos = node.inputs
    a = node.attrs
    win = Window(*em.graph.type_of(q).shape, heads=a["heads"], kernel=a["kernel"], stride=a["stride"])
    scale = float(a["scale"])

    q_s = at_outputs(em, q, win)
    keys = _slot_maps(em, k, win)
    projection = _grid_projection(em, pos[0]) if pos else None
    if pos and projection is None:
        keys = _relative_keys(em, keys, pos[0], win)
    scores = _content_logits(em, q_s, keys, win, scale)
    if projection is not None:
        scores = em.op("add", [scores, _position_logits(em, q_s, *projection, win, scale)])
    attn = em.op("softmax", [scores], "attn", axis=2)
    return [_weighted_values(em, attn, _slot_maps(em, v, win), win)]


PASS = node_pass(RULE, "lower", _lower_local_attention, __doc__ or "", matches=("local_attention",),
                 post=ops_absent("local_attention"))
