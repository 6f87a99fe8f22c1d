"""``local_attention`` (ACmix / SASA sliding-window attention) -> conv, elementwise, shuffle, slice, concat, softmax.

Restricted TensorRT has no Pad, Gather, MatMul, Einsum or Reduce layer, so the op is rebuilt from
what it allows. With ``p = (kernel - 1) // 2``, ``N = kernel²`` window slots ``n = (a, b)``, ``d = C / heads``
and stride ``s``, slot (a, b) of output pixel (i, j) reads the reflection-padded map at row ``s·i + a``,
column ``s·j + b``:

1. ``k`` and ``v`` are reflection-padded by ``p`` once, as slices + concats (no ``pad`` op either).
2. **Window blocks.** One conv with a one-hot ``P x kernel`` kernel and stride ``s`` (``P = min(s,
   kernel)`` row phases) unfolds the padded map, each channel on its own (a depthwise conv, or at a
   stride a conv of the channels as a batch of single-channel maps): its tap ``r·kernel + b`` of
   channel ``c`` holds rows ``r, r+s, ...`` and columns ``b, b+s, ...`` (``Wo`` of them) of channel
   ``c``, ``R = (kernel - 1) // s + Ho`` rows. Slot ``(a, b)`` is then the ``Ho`` rows from
   row ``t = a // s`` of tap ``(a % s, b)``: ``P·kernel`` taps in all, instead of a copy per slot.
3. **Frames.** Instead of cutting each slot's rows out of the stack, the stack is used whole, as a
   frame of ``R`` rows: ``q`` is placed at row offset ``t`` of a zero frame (once per row offset: the
   ``P`` window rows ``a`` with ``a // s = t`` share it), multiplied with all ``P·kernel`` taps (one
   broadcast product), and only the result -- summed over each head's ``d`` channels by one grouped
   1x1 conv whose constant kernel holds ``scale``, so ``heads`` channels per tap -- is cut to the
   ``Ho`` rows at offset ``t``. The frame costs ``R / Ho - 1`` more elements per product (11% at
   56x56 with a 7x7 window), far less than a copy per slot. When ``kernel`` is not a multiple of
   ``s``, the last row offset has fewer window rows than phases: its other taps' logits are cut off
   and their attention weights are zero.
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
6. ``y = Σ_n A_n ⊙ V_n`` by row offsets: the weights of the slots of offset ``t``, placed in a zero
   frame like ``q`` (``heads`` channels: cheap), multiply the value stack (``[B·heads, d, P·kernel·R,
   Wo]``), a grouped 1x1 conv with a ones kernel sums each channel's taps, and the frame is cut to
   the offset's ``Ho`` rows and added up.

Why this form: the first form cut a copy of k and v per slot and spent about ten operators per
slot (507 ONNX operators for one ACmix block, 64 channels, 56x56, 7x7 window), each on a 0.8 MB
tensor; here the block has 168 at stride 1 and 117 at stride 2, and its products are large enough
for ONNX Runtime (CPU) to share out over two threads. The stack conv replaced strided row-phase
slices and, for the keys, column slices and a concat per phase (ONNX Runtime runs those on one
thread), and a product per window row became one per row offset: at stride 2, side by side, batch 1
4.36 -> 4.06 ms and batch 8 56.0 -> 48.8 ms at two threads (docs/benchmarks.md, "Window blocks by
one conv"). The stacked products are ``P·kernel``
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
# least one image: a 64-channel 56x56 one is 1.6 M elements at stride 1, 0.8 M at stride 2 with a 7x7
# window). 2²⁰ (4 MiB of float32): ACmix at batch 8, 64 channels, ONNX Runtime CPU, side by side, one
# image per chunk at 56x56 stride 2 took 0.96x (two threads) and 0.93x (one) the time of two (2²¹);
# with the earlier per-window-row products, 2 images per chunk ran in 0.85-0.94x the time of 5; at
# 28x28 stride 1, 2 per chunk beat 1 and 4; at 14x14 the whole batch stays one chunk.
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


def _phases(win: Window) -> int:
    """Row phases a window spans: window rows ``a`` with the same ``a // s`` differ in ``a % s``."""
    return min(win.stride, win.kernel)


def _frame_rows(win: Window) -> int:
    """Rows of a frame: ``Ho`` plus the largest row offset ``(kernel - 1) // s``."""
    return (win.kernel - 1) // win.stride + win.out_h


def _taps(win: Window) -> int:
    """Taps of a window stack: ``kernel`` column blocks per row phase."""
    return _phases(win) * win.kernel


def _row_groups(win: Window) -> list[int]:
    """Window rows per row offset ``t = a // s``, for t = 0, 1, ...: ``phases``, fewer in the last group."""
    return [min(_phases(win), win.kernel - t * win.stride) for t in range((win.kernel - 1) // win.stride + 1)]


def _reflected(em: Emitter, x: str, win: Window) -> str:
    """``x`` reflection-padded by p on both spatial axes, as slices and concats."""
    return pad_axis(em, pad_axis(em, x, 2, win.pad, win.pad, "reflect"), 3, win.pad, win.pad, "reflect")


def _stack(em: Emitter, padded: str, win: Window) -> str:
    """The reflection-padded map ``padded`` unfolded by one conv: ``[B·C, taps, rows, Wo]``, tap ``r·kernel + b``
    of image-channel ``(i, c)`` holding rows ``r, r+s, ...`` (:func:`_frame_rows` of them) and columns
    ``b, b+s, ...`` of that channel.

    The conv's one-hot ``phases x kernel`` kernel with stride ``s`` gives output channel ``r·kernel + b``
    per input channel = tap (r, b) at every output position: the row phases and column blocks of all
    slots, stacked as the products read them, in one operator. ONNX Runtime (CPU) shares the conv out
    over its threads; the strided slices, column slices and concats it replaces ran on one (the key
    stack's 2 column-phase slices, 7 block slices and concat per row phase took ~2.5x the conv's time
    at 64 channels, 56x56, stride 2). Strided, the conv runs over the ``B·C`` channels as a batch of
    single-channel maps: 0.58-0.99x the time of the same taps as a depthwise conv of the ``C``-channel
    map (one and two threads, 64 channels, 14x14 to 56x56, 5x5 and 7x7 windows); at stride 1 the
    depthwise conv is the faster one (the batch took 1.06-2.75x its time)."""
    s, p, c = win.stride, win.pad, win.channels
    per_map = 1 if s > 1 else c
    maps = em.op("reshape", [padded], shape=(win.batch * c // per_map, per_map, win.height + 2 * p, win.width + 2 * p))
    weight = em.const(unfold_kernel(per_map, _phases(win), win.kernel), em.graph.type_of(padded).dtype,
                      "window_blocks")
    # Padded height s·Ho + kernel - 1 less `phases` rows gives exactly Ho + (kernel - 1) // s output rows (the
    # op's type rule makes H and W multiples of s); the width likewise gives Wo columns.
    taps = em.op("conv", [maps, weight], "window_blocks", stride=(s, s), pads=(0, 0, 0, 0), dilation=(1, 1),
                 groups=per_map)
    return em.op("reshape", [taps], shape=(win.batch * c, _taps(win), _frame_rows(win), win.out_w))


def _framed(em: Emitter, x: str, win: Window, t: int) -> str:
    """``x`` [.., Ho, Wo] at row offset ``t`` of a frame, zeros around it: [.., rows, Wo]."""
    return pad_axis(em, x, 2, t, _frame_rows(win) - t - win.out_h, "zero")


def _cut(em: Emitter, x: str, win: Window, t: int) -> str:
    """The ``Ho`` rows at row offset ``t`` of a frame [.., rows, Wo]: [.., Ho, Wo]."""
    return _strided(em, x, 2, t, win.out_h, 1)


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


def _content_logits(em: Emitter, q_s: str, k_pad: str, win: Window, scale: float) -> str:
    """``scale · Σ_e q_s[e] · K_n[e]`` per head and slot, ``k_pad`` the padded keys: [B, heads, N, Ho·Wo]."""
    kk, h, c, taps, rows = win.kernel, win.heads, win.channels, _taps(win), _frame_rows(win)
    keys = _stack(em, k_pad, win)
    head_sum = np.full((h, win.head_dim, 1, 1), scale)
    logits = []
    for t, rows_in_group in enumerate(_row_groups(win)):
        query = em.op("reshape", [_framed(em, q_s, win, t)], shape=(win.batch * c, 1, rows, win.out_w))
        # [B·C, taps, rows, Wo] viewed as [B, C, taps·rows, Wo]: each head's d channels summed per pixel.
        product = em.op("reshape", [em.op("mul", [query, keys])], shape=(win.batch, c, taps * rows, win.out_w))
        summed = em.op("reshape", [_grouped_sum(em, product, head_sum, "logit")],
                       shape=(win.batch, h * taps, rows, win.out_w))
        group = em.op("reshape", [_cut(em, summed, win, t)], shape=(win.batch, h, taps, win.out_h * win.out_w))
        # The last group may hold fewer window rows than phases: its other taps are no slot.
        logits.append(_strided(em, group, 2, 0, rows_in_group * kk, 1))
    return em.op("concat", logits, "logits", axis=2)


def _query_position(em: Emitter, q_s: str, pos_q: str, win: Window, scale: float) -> str:
    """``scale · Σ_e q_s[e] · pos_q[e]`` per head: [B, heads, 1, Ho·Wo] (the same for every slot)."""
    summed = _grouped_sum(em, em.op("mul", [q_s, pos_q]), np.full((win.heads, win.head_dim, 1, 1), scale), "logit")
    return em.op("reshape", [summed], shape=(win.batch, win.heads, 1, win.out_h * win.out_w))


def _weighted_values(em: Emitter, attn: str, v_pad: str, win: Window) -> str:
    """``Σ_n A_n ⊙ V_n`` for ``attn`` [B, heads, N, Ho·Wo] and the padded values ``v_pad``: [B, C, Ho, Wo]."""
    kk, h, taps, rows = win.kernel, win.heads, _taps(win), _frame_rows(win)
    values = em.op("reshape", [_stack(em, v_pad, win)], shape=(win.batch * h, win.head_dim, taps * rows, win.out_w))
    tap_sum = np.ones((win.channels, taps, 1, 1))
    groups = _row_groups(win)
    weights = em.op_multi("split", [attn], sizes=tuple(n * kk for n in groups), axis=2)
    out = None
    for t, rows_in_group in enumerate(groups):
        weight = em.op("reshape", [weights[t]], shape=(win.batch * h, rows_in_group * kk, win.out_h, win.out_w))
        # Taps of no slot (a short last group) get weight 0.
        weight = pad_axis(em, weight, 1, 0, taps - rows_in_group * kk, "zero")
        weight = em.op("reshape", [_framed(em, weight, win, t)], shape=(win.batch * h, 1, taps * rows, win.out_w))
        # [B·heads, d, taps·rows, Wo] viewed as [B, C·taps, rows, Wo]: groups of one channel's taps.
        product = em.op("reshape", [em.op("mul", [weight, values])],
                        shape=(win.batch, win.channels * taps, rows, win.out_w))
        row = _cut(em, _grouped_sum(em, product, tap_sum, "weighted"), win, t)
        out = row if out is None else em.op("add", [out, row])
    return out


def _attend(em: Emitter, q_s: str, k_pad: str, v_pad: str, pos_q: str | None, projection: tuple[Node, str] | None,
            win: Window, scale: float) -> str:
    """The lowered attention of ``win.batch`` images from the queries ``q_s`` and positions ``pos_q`` at the
    output positions and the padded keys and values: [B, C, Ho, Wo]."""
    scores = _content_logits(em, q_s, k_pad, win, scale)
    if pos_q is not None:
        scores = em.op("add", [scores, _query_position(em, q_s, pos_q, win, scale)])
    if projection is not None:
        scores = em.op("add", [scores, _position_logits(em, q_s, *projection, win, scale)])
    attn = em.op("softmax", [scores], "attn", axis=2)
    return _weighted_values(em, attn, v_pad, win)


def batch_chunk(win: Window) -> int:
    """Images per chunk: as many as keep the largest stacked product within :data:`STACK_BUDGET` (at least 1)."""
    per_image = win.channels * _taps(win) * _frame_rows(win) * win.out_w
    return max(1, min(win.batch, STACK_BUDGET // per_image))


def _lower_local_attention(node: Node, em: Emitter) -> list[str] | None:
    q, k, v, *pos = node.inputs
    a = node.attrs
    win = Window(*em.graph.type_of(q).shape, heads=a["heads"], kernel=a["kernel"], stride=a["stride"])
    scale = float(a["scale"])
    projection = _grid_projection(em, pos[0]) if pos else None
    keys, pos_q = k, None
    if pos and projection is None:
        tiled = em.op("concat", [pos[0]] * win.heads, axis=1) if win.heads > 1 else pos[0]
        keys, pos_q = em.op("sub", [k, tiled]), at_outputs(em, tiled, win)
    # The queries are cut to the output positions before the batch is cut into chunks: slice_before_conv then
    # turns the cut into the stride of q's projection, which runs on those positions only. The keys and values
    # are padded whole too: one pad's slices and concats instead of one per chunk (ACmix, batch 8, stride 2: 709
    # operators instead of 905, in the same time side by side in ONNX Runtime).
    q_s = at_outputs(em, q, win)
    k_pad, v_pad = _reflected(em, keys, win), _reflected(em, v, win)
    chunk = batch_chunk(win)
    if chunk == win.batch:
        return [_attend(em, q_s, k_pad, v_pad, pos_q, projection, win, scale)]
    outs = []
    for start in range(0, win.batch, chunk):
        n = min(chunk, win.batch - start)
        # pos has a batch of 1 (the op's type rule) and serves every chunk.
        parts = (_strided(em, x, 0, start, n, 1) for x in (q_s, k_pad, v_pad))
        outs.append(_attend(em, *parts, pos_q, projection, replace(win, batch=n), scale))
    return [em.op("concat", outs, axis=0)]


PASS = node_pass(RULE, "lower", _lower_local_attention, __doc__ or "", matches=("local_attention",),
                 post=ops_absent("local_attention"))
