"""``local_attention`` -> two batched matrix products over 2-D tiles of the output, for runtimes with MatMul.

Why: ``lower_local_attention`` (the restricted form, without a product of two activations as
MatMul) needs one broadcast product per window row and side over ``kernel``-times stacked column
blocks (about 180 ONNX operators for an ACmix block with a 7x7 window) and moves several times the
bytes of a matrix product. Here an ACmix block has about 95 ONNX operators, most of them slices and
reshapes that build the tiles. With ``p = (kernel - 1) // 2``, ``k = kernel``,
``s = stride``, ``d = C / heads``:

1. The positional encoding is folded into the keys: ``q·(k_n + pos_q − pos_n) = q·(k_n − pos_n) +
   q·pos_q``, and the last term is the same for every slot of an output pixel, so the softmax over the
   slots cancels it. So ``K = k − pos`` (``pos`` repeated per head; reflection commutes with the
   subtraction), padded by reflection once; ``scale`` is applied to the query.
2. The output is cut into tiles of ``Th x Tw`` pixels (divisors of ``Ho`` and ``Wo`` near :data:`TILE`).
   The windows of a tile's pixels cover a band of ``(s·(Th − 1) + k) x (s·(Tw − 1) + k)`` padded pixels;
   the keys and values of every band are cut out (column tiles, then row tiles of those: slices and
   concats, about 3x the map at 8x8 tiles and a 7x7 window).
3. One product ``q_tile K_bandᵀ`` gives each tile pixel's logits against its whole band
   ``[Th·Tw, band]``; a constant mask adds :data:`OUTSIDE` off each pixel's window, so the softmax
   over the band gives exact zeros there and its weights are the window's softmax.
4. One product of those weights with the band's values sums all ``k²`` weighted values.

Cost: the two products do ``band / k²`` times the minimal multiply-adds (4x at 8x8 tiles with a 7x7
window: 2 x 39 M instead of 2 x 9.8 M for 64 channels at 56x56), and the logits, mask and softmax work
on ``[.., Th·Tw, band]`` (9.8 MB at 64 channels, 56x56, batch 1, against 2.4 MB for the window
logits alone); nothing is ``k²`` times the map. Exact up to rounding (only the order of the sums and
the dropped per-pixel constant change it; reference agreement within 1e-6 at 64 channels, 56x56,
float32) as long as no logit outside a pixel's window exceeds the window's largest by ~32,000
(where the mask would stop hiding it; logits are scaled dot products, orders of magnitude smaller).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from netdsl.ir import Node
from netdsl.passes.base import ops_absent
from netdsl.passes.lower_local_attention import Window, at_outputs
from netdsl.passes.rewriter import Emitter, node_pass

RULE = "local_attention_to_matmul"
TILE = 8  # output rows and columns per tile, when the map has a divisor near it
# Added to the logits outside a pixel's window; exp underflows to exactly 0 once a logit is more than ~104
# (float32) below the window's largest. -2^15 is exact in float16 and leaves half of float16's range to the
# logits: with float16's lowest value (-65504) any negative logit made the masked sum overflow float16's range,
# and the float16 range check refused the model.
OUTSIDE = -32768.0


def tile_size(length: int) -> int:
    """Output rows or columns per tile for a map side of ``length``: its divisor nearest :data:`TILE`
    (``length`` itself when it has none between TILE/2 and 2·TILE)."""
    divisors = [t for t in range(TILE // 2, 2 * TILE + 1) if length % t == 0]
    return min(divisors, key=lambda t: abs(t - TILE)) if divisors else length


@dataclass(frozen=True)
class _Tiles:
    """2-D tiles of the output of one ``local_attention`` node: ``rows x cols`` pixels each."""

    win: Window
    rows: int
    cols: int

    def span(self, size: int) -> int:
        """Padded rows (or columns) the windows of ``size`` output rows (or columns) cover."""
        return self.win.stride * (size - 1) + self.win.kernel

    @property
    def lead(self) -> tuple[int, int, int, int]:
        """The batch axes of both products: (B, heads, row tiles, column tiles)."""
        return (self.win.batch, self.win.heads, self.win.out_h // self.rows, self.win.out_w // self.cols)

    @property
    def band(self) -> int:
        """Padded pixels under one tile's windows."""
        return self.span(self.rows) * self.span(self.cols)

    def mask(self, outside: float) -> np.ndarray:
        """[rows·cols, band]: 0 where a band pixel is in a tile pixel's window, ``outside`` elsewhere."""
        s, k = self.win.stride, self.win.kernel

        def inside(size: int) -> np.ndarray:  # [size, span]: output index i covers padded s·i .. s·i + k − 1
            offset = np.arange(self.span(size))[None, :] - s * np.arange(size)[:, None]
            return (offset >= 0) & (offset < k)

        both = inside(self.rows)[:, None, :, None] & inside(self.cols)[None, :, None, :]
        return np.where(both, 0.0, outside).reshape(self.rows * self.cols, self.band)


def _stacked(em: Emitter, x: str, pieces: list[tuple[int, int, int, int]]) -> str:
    """``x`` sliced along ``pieces`` (axis, start, end, step), the slices stacked on a new axis 2."""
    cut = [em.op("slice", [x], axis=ax, start=start, end=end, step=step) for ax, start, end, step in pieces]
    one = list(em.graph.type_of(cut[0]).shape)
    views = [em.op("reshape", [c], shape=(*one[:2], 1, *one[2:])) for c in cut]
    return em.op("concat", views, axis=2) if len(views) > 1 else views[0]


def _tiled(em: Emitter, x: str, tiles: _Tiles, row_axis: int) -> str:
    """The padded pixels under each tile's windows, for ``x`` [B, heads, ...] with padded rows on ``row_axis``
    and columns after them: ``[B, h, d, Hp, Wp]`` -> ``[B, h, row tiles, col tiles, d, band]`` (keys,
    ``row_axis`` 3), ``[B, h, Hp, Wp, d]`` -> ``[B, h, row tiles, col tiles, band, d]`` (values, 2).

    Column tiles are cut first and stacked on axis 2, then row tiles of that, stacked on axis 2 again.
    """
    s = tiles.win.stride
    columns = _stacked(em, x, [(row_axis + 1, t * tiles.cols * s, t * tiles.cols * s + tiles.span(tiles.cols), 1)
                               for t in range(tiles.lead[3])])
    rows = _stacked(em, columns, [(row_axis + 1, t * tiles.rows * s, t * tiles.rows * s + tiles.span(tiles.rows), 1)
                                  for t in range(tiles.lead[2])])
    shape = list(em.graph.type_of(rows).shape)
    shape[row_axis + 2:row_axis + 4] = [tiles.band]
    return em.op("reshape", [rows], shape=tuple(shape))


def _padded_heads(em: Emitter, x: str, win: Window) -> str:
    """``x`` [B, C, H, W] reflection-padded by p and split into heads: [B, heads, d, Hp, Wp]."""
    p = win.pad
    padded = em.op("pad", [x], pads=(p, p, p, p), mode="reflect")
    return em.op("reshape", [padded], shape=(win.batch, win.heads, win.head_dim, win.height + 2 * p,
                                              win.width + 2 * p))


def _attend(em: Emitter, queries: str, keys: str, values: str, tiles: _Tiles) -> str:
    """Attention within each tile's window band: [B, heads, row tiles, col tiles, rows·cols, d].

    The logits of the whole band ``[rows·cols, band]`` are computed; a constant mask adds :data:`OUTSIDE` to
    the entries outside each pixel's window, which the softmax turns into exact zeros, so the softmax
    weights are the band matrix of the value product as they are.
    """
    dtype = em.graph.type_of(queries).dtype
    logits = em.op("matmul", [queries, keys], "logits")
    outside = em.const(tiles.mask(OUTSIDE), dtype, "window_mask")
    attn = em.op("softmax", [em.op("add", [logits, outside])], "attn", axis=5)
    return em.op("matmul", [attn, values])


def _to_matmul(node: Node, em: Emitter) -> list[str] | None:
    q, k, v, *pos = node.inputs
    a = node.attrs
    win = Window(*em.graph.type_of(q).shape, heads=a["heads"], kernel=a["kernel"], stride=a["stride"])
    dtype = em.graph.type_of(q).dtype
    tiles = _Tiles(win, tile_size(win.out_h), tile_size(win.out_w))
    b, h, d = win.batch, win.heads, win.head_dim
    pixels = (b, h, tiles.lead[2], tiles.rows, tiles.lead[3], tiles.cols)

    scaled = em.op("mul", [at_outputs(em, q, win), em.const(a["scale"], dtype, "scale")])
    split = em.op("reshape", [scaled], shape=(b, h, d, *pixels[2:]))
    queries = em.op("reshape", [em.op("transpose", [split], perm=(0, 1, 3, 5, 4, 6, 2))],
                    shape=(*tiles.lead, tiles.rows * tiles.cols, d))
    if pos:
        tiled = em.op("concat", [pos[0]] * h, axis=1) if h > 1 else pos[0]
        k = em.op("sub", [k, tiled], "relative_keys")
    keys = _tiled(em, _padded_heads(em, k, win), tiles, row_axis=3)
    values = _tiled(em, em.op("transpose", [_padded_heads(em, v, win)], perm=(0, 1, 3, 4, 2)), tiles, row_axis=2)
    out = em.op("reshape", [_attend(em, queries, keys, values, tiles)], shape=(*tiles.lead, tiles.rows, tiles.cols, d))
    channels_first = em.op("transpose", [out], perm=(0, 1, 6, 2, 4, 3, 5))  # [B, h, d, tiles, rows, tiles, cols]
    return [em.op("reshape", [channels_first], shape=(b, win.channels, win.out_h, win.out_w))]


PASS = node_pass(RULE, "lower", _to_matmul, __doc__ or "", matches=("local_attention",),
                 post=ops_absent("local_attention"))
