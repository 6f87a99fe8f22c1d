"""``local_attention`` (ACmix / SASA sliding-window attention) -> conv, elementwise, shuffle, slice, concat, softmax.

Restricted TensorRT has no Pad, Gather, MatMul, Einsum or Reduce layer, so the op is rebuilt from
what it allows. With ``p = (kernel - 1) // 2``, ``N = kernel²`` window slots ``n = (a, b)``, ``d = C / heads``
and stride ``s``, slot (a, b) of output pixel (i, j) reads the reflection-padded map at row ``s·i + a``,
column ``s·j + b``:

1. ``k`` and ``v`` are reflection-padded by ``p`` once, as slices + concats (no ``pad`` op either).
2. **Column blocks.** The padded map is cut into ``kernel`` column blocks per row phase ``r < s``: block
   ``(r, b)`` holds rows ``r, r+s, ...`` and columns ``b, b+s, ...`` (Wo of them). Every slot ``(a, b)``
   with ``a % s == r`` is a run of ``Ho`` consecutive rows of that block, from row ``t = a // s``.
   The ``kernel`` blocks of a row phase are stacked on one axis: ``kernel·s`` copies of the map
   instead of one per slot. The value blocks are made by one one-hot depthwise conv per row phase
   (:func:`_column_blocks`), the key blocks by slices and a concat (heads first; see there).
3. **Frames.** Instead of cutting each slot's rows out of the (``C``-channel) block, the block is used
   whole, as a frame of ``R = t_max + Ho`` rows: ``q`` is placed at row offset ``t`` of a zero frame
   (once per window row ``a``), multiplied with the stacked blocks of its row phase (one broadcast
   product for all ``kernel`` slots of the window row), and only the result -- summed over each
   head's ``d`` channels by one grouped 1x1 conv whose constant kernel holds ``scale``, so
   ``heads`` channels per slot -- is cut to the slot's rows. The frame costs ``R / Ho - 1`` more
   elements per product (11% at 56x56 with a 7x7 window), far less than a copy per slot.
4. Positional logits ``scale · Σ_e q_s[e] · (pos_q[e] − pos_n[e])``:

   * when ``pos`` is a 1x1 convolution ``Wp·grid + b`` of the positional grid (ACmix's ``conv_p``),
     ``pos_q − pos_n = Wp·(G_q − G_n)`` -- the bias cancels and reflection commutes with a per-pixel
     affine map -- where ``G_q − G_n`` is a constant ``[2, N, Ho·Wo]`` computed here from the
     grid. So ``Q' = Wpᵀ q_s`` (a grouped 1x1 conv of ``q_s`` whose kernel is ``Wpᵀ`` repeated per
     head, a parameter-only subgraph that constant folding folds), and the term for all slots is
     ``Q'[x] · (scale·ΔG_x) + Q'[y] · (scale·ΔG_y)``: two broadcast products on ``[B, heads, N, Ho·Wo]``;
   * any other ``pos`` (repeated per head) is subtracted from ``k`` before padding, and
     ``scale · Σ_e q_s[e] · pos_q[e]``, one map for all slots, is added to the logits:
     ``q·(K_n + pos_q − pos_n) = q·(k − pos)_n + q·pos_q``.

5. Softmax over the slot axis (axis 2 of ``[B, heads, N, Ho·Wo]``: ONNX Runtime moves a middle axis
   last by a transpose, which for this shape is a fast two-axis one; the same softmax on a rank-4
   ``[B·heads, N, Ho, Wo]`` ran about five times slower).
6. ``y = Σ_n A_n ⊙ V_n`` by window rows: the weights of the ``kernel`` slots of row ``a``, placed
   in a zero frame like ``q`` (``heads`` channels: cheap), multiply the stacked value blocks
   (channel-major, ``[B, C, kernel, frame]``), a grouped 1x1 conv with a ones kernel sums the
   ``kernel`` columns of each channel, and the frame is cut to the row's ``Ho`` rows and added up.

Why this form: the earlier form cut a copy of k and v per slot and spent about ten operators per
slot (507 ONNX operators for one ACmix block, 64 channels, 56x56, 7x7 window), each on a 0.8 MB
tensor; here the block has 174 (181 before the value blocks became a conv), moves 688 MB op by op
instead of 851, and its products are large
enough for ONNX Runtime (CPU) to share out over two threads. Side by side in ONNX Runtime under a
load average of ~10 the old form took 0.9-1.5x the new one's median time (above 1 in 7 of the 8
configurations of batch 1 and 8, stride 1 and 2, 1 and 2 threads; docs/benchmarks.md, "Stacked
column blocks"). The stacked products are ``kernel``
times a map; over :data:`STACK_BUDGET` elements the batch is cut into chunks that keep them within
it: whole-batch stacks at batch 8 (50 MB) took 1.4-1.8x the per-slot form's summed kernel time.
Every form is exact up to float32 summation order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from netdsl.interp import eval_node
from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.conv_before_resize import is_pointwise
from netdsl.passes.pad_to_slice_concat import pad_axis
from netdsl.passes.rewriter import Emitter, node_pass
from netdsl.passes.unfold_to_conv import unfold_kernel

RULE = "lower_local_attention"
# The largest stacked product, in elements, before the batch is cut into chunks (a chunk holds at
# least one image: a 64-channel 56x56 one at stride 1 is 1.6 M elements with a 7x7 window). 2²⁰
# (4 MiB of float32): ACmix at batch 8, 64 channels, ONNX Runtime CPU, side by side, 2 images per
# chunk at 56x56 stride 2 ran in 0.85-0.94x the time of 5 per chunk (2²¹); at 28x28 stride 1,
# 2 per chunk beat 1 and 4; at 14x14 the whole batch stays one chunk.
STACK_BUDGET = 2**20


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


@dataclass(frozen=True)
class Frames:
    """The column blocks of a reflection-padded map, stacked per row phase (see the module docstring)."""

    stacks: list[str]
    rows: list[int]


def _row_count(win: Window, r: int) -> int:
    """The frame of row phase ``r``: rows ``t < (kernel - 1 - r) // s + 1`` offsets, plus ``Ho``."""
    return (win.kernel - 1 - r) // win.stride + win.out_h


def _frames(em: Emitter, x: str, win: Window, heads_first: bool) -> Frames:
    """``x`` reflection-padded by p, its column blocks (``[B, C, rows, Wo]`` each) stacked per row phase:
    ``[B·heads, kernel, d·rows, Wo]`` (``heads_first``) or ``[B, C, kernel·rows, Wo]``."""
    s, p = win.stride, win.pad
    padded = pad_axis(em, pad_axis(em, x, 2, p, p, "reflect"), 3, p, p, "reflect")
    phases = range(min(s, win.kernel))
    rows = [_row_count(win, r) for r in phases]
    stacks = []
    for r in phases:
        in_phase = _strided(em, padded, 2, r, rows[r], s)
        if not heads_first:
            stacks.append(_column_blocks(em, in_phase, win, rows[r]))
            continue
        # Column phases first: strided slices are far slower than contiguous ones in ONNX Runtime.
        columns = [_strided(em, in_phase, 3, c, (win.kernel - 1 - c) // s + win.out_w, s) for c in phases]
        blocks = [_strided(em, columns[b % s], 3, b // s, win.out_w, 1) for b in range(win.kernel)]
        view = (win.batch * win.heads, 1, win.head_dim * rows[r], win.out_w)
        stacks.append(em.op("concat", [em.op("reshape", [block], shape=view) for block in blocks], axis=1))
    return Frames(stacks, rows)


def _column_blocks(em: Emitter, in_phase: str, win: Window, rows: int) -> str:
    """The ``kernel`` column blocks of one row phase ``[B, C, rows, Wp]``, channel-major: ``[B, C, kernel·rows, Wo]``.

    One depthwise conv with a one-hot ``1 x kernel`` kernel and column stride ``s``: its output channel
    ``c·kernel + b`` is block ``b`` of channel ``c`` (columns ``b, b+s, ...``), which is the channel-major
    stack as it is, where slices would cut each block and a concat would stack them. ONNX Runtime (CPU)
    shares the conv out over its threads; it runs slices and concats on one (64 channels, 56x56, stride 2:
    0.22 ms against 0.38 ms for the slices and concat at two threads, about the same at one). The
    heads-first key stack would need a transpose after the conv: that measured no faster at two threads
    and 10% slower at one (ACmix block, batch 1, stride 2), so the keys keep their slices.
    """
    kk, c, s = win.kernel, win.channels, win.stride
    # A 1 x kernel unfold: output map c·kernel + b picks tap (0, b).
    weight = em.const(unfold_kernel(c, 1, kk), em.graph.type_of(in_phase).dtype, "column_blocks")
    # The padded width W + kernel - 1 gives (W - 1) // s + 1 = Wo columns: the op's type rule makes W a multiple of s.
    blocks = em.op("conv", [in_phase, weight], "column_blocks", stride=(1, s), pads=(0, 0, 0, 0), dilation=(1, 1),
                   groups=c)
    return em.op("reshape", [blocks], shape=(win.batch, c, kk * rows, win.out_w))


def _framed(em: Emitter, x: str, win: Window, a: int, rows: int) -> str:
    """``x`` [.., Ho, Wo] at row offset ``a // s`` of a ``rows``-row frame, zeros around it: [.., rows, Wo]."""
    before = a // win.stride
    return pad_axis(em, x, 2, before, rows - before - win.out_h, "zero")


def _cut(em: Emitter, x: str, win: Window, a: int) -> str:
    """The ``Ho`` rows of window row ``a`` from a frame [.., rows, Wo]: [.., Ho, Wo]."""
    return _strided(em, x, 2, a // win.stride, win.out_h, 1)


def _grouped_sum(em: Emitter, x: str, kernel: np.ndarray, hint: str) -> str:
    """A grouped 1x1 conv of ``x`` with the constant ``kernel`` [groups, per group, 1, 1]: one sum per group.

    Grouped, with one output per group: ONNX Runtime (1.32, CPU) runs an ungrouped conv over 8 or
    more channels in its blocked layout, reordering the whole input first."""
    weight = em.const(kernel, em.graph.type_of(x).dtype, hint)
    return em.op("conv", [x, weight], hint, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=kernel.shape[0])


def _grid_projection(em: Emitter, pos: str) -> tuple[Node, str] | None:
    """(grid node, weight) when ``pos`` is a 1x1 convolution of a positional ``grid``, else None."""
    conv = em.producer(pos)
    if conv is None or conv.op != "conv":
        return None
    grid = em.producer(conv.inputs[0])
    if grid is None or grid.op != "grid" or not is_pointwise(em, conv) or conv.attrs["groups"] != 1:
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


def _content_logits(em: Emitter, q_s: str, k: str, win: Window, scale: float) -> str:
    """``scale · Σ_e q_s[e] · K_n[e]`` per head and slot: [B, heads, N, Ho·Wo]."""
    kk, h, d = win.kernel, win.heads, win.head_dim
    frames = _frames(em, k, win, heads_first=True)
    head_sum = np.full((h * kk, d, 1, 1), scale)
    logits = []
    for a in range(kk):
        rows = frames.rows[a % win.stride]
        query = em.op("reshape", [_framed(em, q_s, win, a, rows)], shape=(win.batch * h, 1, d * rows, win.out_w))
        # [B·heads, kernel, d·rows, Wo] viewed as [B, heads·kernel·d, rows, Wo]: groups of d channels.
        product = em.op("reshape", [em.op("mul", [query, frames.stacks[a % win.stride]])],
                        shape=(win.batch, h * kk * d, rows, win.out_w))
        summed = _grouped_sum(em, product, head_sum, "logit")
        logits.append(em.op("reshape", [_cut(em, summed, win, a)], shape=(win.batch, h, kk, win.out_h * win.out_w)))
    return em.op("concat", logits, "logits", axis=2)


def _query_position(em: Emitter, q_s: str, pos_q: str, win: Window, scale: float) -> str:
    """``scale · Σ_e q_s[e] · pos_q[e]`` per head: [B, heads, 1, Ho·Wo] (the same for every slot)."""
    summed = _grouped_sum(em, em.op("mul", [q_s, pos_q]), np.full((win.heads, win.head_dim, 1, 1), scale), "logit")
    return em.op("reshape", [summed], shape=(win.batch, win.heads, 1, win.out_h * win.out_w))


def _weighted_values(em: Emitter, attn: str, v: str, win: Window) -> str:
    """``Σ_n A_n ⊙ V_n`` for ``attn`` [B, heads, N, Ho·Wo]: [B, C, Ho, Wo]."""
    kk, h, d = win.kernel, win.heads, win.head_dim
    frames = _frames(em, v, win, heads_first=False)
    column_sum = np.ones((win.channels, kk, 1, 1))
    weights = em.op_multi("split", [attn], sizes=(kk,) * kk, axis=2)  # one [B, heads, kernel, Ho·Wo] per row a
    out = None
    for a in range(kk):
        rows = frames.rows[a % win.stride]
        weight = em.op("reshape", [weights[a]], shape=(win.batch * h, kk, win.out_h, win.out_w))
        weight = em.op("reshape", [_framed(em, weight, win, a, rows)], shape=(win.batch * h, 1, kk * rows, win.out_w))
        value = em.op("reshape", [frames.stacks[a % win.stride]], shape=(win.batch * h, d, kk * rows, win.out_w))
        # [B·heads, d, kernel·rows, Wo] viewed as [B, C·kernel, rows, Wo]: groups of the kernel columns.
        product = em.op("reshape", [em.op("mul", [weight, value])],
                        shape=(win.batch, win.channels * kk, rows, win.out_w))
        row = _cut(em, _grouped_sum(em, product, column_sum, "weighted"), win, a)
        out = row if out is None else em.op("add", [out, row])
    return out


def _attend(em: Emitter, q: str, k: str, v: str, pos: str | None, projection: tuple[Node, str] | None, win: Window,
            scale: float) -> str:
    """The lowered attention of ``win.batch`` images: [B, C, Ho, Wo]."""
    q_s = at_outputs(em, q, win)
    if pos is not None and projection is None:
        tiled = em.op("concat", [pos] * win.heads, axis=1) if win.heads > 1 else pos
        scores = em.op("add", [_content_logits(em, q_s, em.op("sub", [k, tiled]), win, scale),
                               _query_position(em, q_s, at_outputs(em, tiled, win), win, scale)])
    else:
        scores = _content_logits(em, q_s, k, win, scale)
    if projection is not None:
        scores = em.op("add", [scores, _position_logits(em, q_s, *projection, win, scale)])
    attn = em.op("softmax", [scores], "attn", axis=2)
    return _weighted_values(em, attn, v, win)


def batch_chunk(win: Window) -> int:
    """Images per chunk: as many as keep the largest stacked product within :data:`STACK_BUDGET` (at least 1)."""
    per_image = win.channels * win.kernel * _row_count(win, 0) * win.out_w
    return max(1, min(win.batch, STACK_BUDGET // per_image))


def _lower_local_attention(node: Node, em: Emitter) -> list[str] | None:
    q, k, v, *pos = node.inputs
    a = node.attrs
    win = Window(*em.graph.type_of(q).shape, heads=a["heads"], kernel=a["kernel"], stride=a["stride"])
    scale = float(a["scale"])
    projection = _grid_projection(em, pos[0]) if pos else None
    chunk = batch_chunk(win)
    if chunk == win.batch:
        return [_attend(em, q, k, v, pos[0] if pos else None, projection, win, scale)]
    outs = []
    for start in range(0, win.batch, chunk):
        n = min(chunk, win.batch - start)
        # pos has a batch of 1 (the op's type rule) and serves every chunk.
        q_part, k_part, v_part = (_strided(em, x, 0, start, n, 1) for x in (q, k, v))
        outs.append(_attend(em, q_part, k_part, v_part, pos[0] if pos else None, projection, replace(win, batch=n),
                            scale))
    return [em.op("concat", outs, axis=0)]


PASS = node_pass(RULE, "lower", _lower_local_attention, __doc__ or "", matches=("local_attention",),
                 post=ops_absent("local_attention"))
