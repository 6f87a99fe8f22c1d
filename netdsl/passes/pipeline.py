"""Per-target pass pipelines: which rewrites each backend gets, in which order, checked after every step.

:data:`PIPELINES` names the passes of each target:

* ``onnx`` keeps what ONNX Runtime runs fastest: its fused kernels (attention, softmax, layer
  norm) stay; batch norms are folded into the convs before them (ONNX Runtime would fuse those
  too, but only folded ones can move), a conv fed by a per-pixel affine chain of one map becomes one
  conv of that map when that costs at most 4x the multiply-adds of the convs it frees
  (``fold_pointwise_into_conv``: ACmix's fc and grouped dep_conv at stride 2 become one dense strided conv
  of the block's input), slices of the batch or spatial axes move above the 1x1 convs they read
  (``slice_before_conv``: ACmix's query projection then runs at the output positions only),
  1x1 convs move in front of enlarging resizes
  (``conv_before_resize``: CSA's projections run on the small map) and behind average pools
  (``pool_before_conv``: CSA's last MLP conv and ConvNeXt's last MLP linear run on the pooled pixel),
  means and sums over leading axes become matrix products (``reduce_to_matmul``: ONNX Runtime's
  reductions are slow there), sliding-window attention becomes batched matrix products over 2-D tiles
  (``local_attention_to_matmul``: about 95 ONNX operators for an ACmix block against the ~180 of
  the restricted lowering, which has no product of two activations as MatMul), then
  constant folding, CSE, cleanup of data movement and DCE run;
* the ONNX emitter writes each IR op as one ONNX op, so every decomposition is a pass: ``onnx`` and
  ``trt`` run :data:`ONNX_FORMS` (attention and sliding-window attention as matrix products, shift and
  unfold as one-hot convs, which ONNX Runtime runs as fast as or faster than pads, slices and concats,
  roll as slices and concats, group norms as instance norms, exact gelu in its erf form at every opset,
  silu as sigmoid and mul); the restricted targets have their own forms of these ops, and also run
  ``silu_to_sigmoid``, ``shift_to_conv``, ``unfold_to_conv`` and ``roll_to_slice_concat``;
* ``torch`` keeps what trains well: nothing that changes parameters or training behaviour (no
  batch-norm folding, no DCE, which would drop parameters a checkpoint names), only CSE, shuffle
  cleanup and ``merge_sibling_convs``: convs reading one input run as one conv whose kernel is
  theirs concatenated in ``forward`` (each keeps its parameters and their names) and whose channel
  slices are views, so inductor builds fewer kernels (ACmix's q, k and v: 12 C++ kernels for a
  compiled training step instead of 14). ONNX Runtime copies each slice, which eats the saving
  (ACmix and a non-local block: no measurable gain; ResNet-50's first block, 64 channels read by a 64-
  and a 256-channel conv: slower), so the ``onnx`` pipeline does not merge; nor do the TensorRT
  targets (TensorRT's builder fuses convs that share an input itself, its horizontal fusion; the
  merge is not measured on TensorRT);
* ``trt`` (standard TensorRT) runs the ONNX forms, folds batch norms into convolutions and moves average pools
  above pointwise convs;
* ``trt-restricted`` lowers everything it can to the restricted layer set (conv, elementwise,
  shuffle, concat, slice, softmax, resize by scales): attention, matrix products of two
  activations (both in chunks no larger than about the attention matrix), gathers by constant
  indices, selects by constant masks, shift, unfold, roll, max
  pooling, padding, reductions, linear maps and activations outside the set, then folds batch
  norms and per-pixel affine chains into the convs after them (``fold_pointwise_into_conv``), moves
  slices above 1x1 convs and average pools above pointwise convs and folds parameter-only subgraphs into
  constants. Layer, group and instance norms become means (by ``reduce_mean``, lowered by
  ``reduce_to_conv`` after them), ``sqrt`` and elementwise ops. ``pow`` with a constant exponent,
  ``sqrt``, ``exp``, ``erf`` and exact ``gelu`` get exact element-wise forms (``pow_decompose``,
  ``sqrt_decompose``, ``exp_decompose``, ``erf_decompose``; a pass emitting sqrt or pow must run
  before them);
* ``trt-dla`` is the same except that MaxPool and ReduceMax, which DLA runs, are kept (a
  ``reduce_min`` becomes ``-reduce_max(-x)``), that
  strided slices become strided depth-wise convs (DLA slices take unit steps only), resizes by
  fractional or shrinking factors become 1x1 convs over the resized axis (DLA only upsamples by
  whole factors), pools with windows above 8 become pools in steps within DLA's windows or
  depth-wise convs (``pool_windows``), that
  element-wise ops, slices, splits and concats off DLA's rank-4 form are run on rank-4 views
  (``elementwise_rank4``, ``slice_concat_rank4``: token sequences ``[B, T, C]``, rank-5 windows,
  slices of the batch axis), and that the remaining
  concats are moved to the channel axis (the only one DLA concatenates along).

Passes run by phase (:data:`netdsl.passes.base.PHASES`), in list order within a phase; a
``passes`` list given by the user replaces the target's list and is ordered the same way. After
each pass the IR is verified; a broken graph is an internal error naming the pass. A pass that
declares the ops it rewrites is skipped while the graph has none of them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

from netdsl.diagnostics import Diagnostic, NetdslError, did_you_mean
from netdsl.ir import Graph
from netdsl.passes.base import PHASES, Pass, RewriteLog, Weights, removed_ops
from netdsl.passes.registry import all_passes, get_pass, lookup, needs_weights
from netdsl.printer import format_graph
from netdsl.verifier import verify

_FOLD_AND_CLEAN = ["fold_batchnorm", "fold_pointwise_into_conv", "slice_before_conv", "pool_before_conv", "fold_params",
                   "constant_folding", "cse", "cleanup_shuffles", "dce"]

# Element-wise math without an allowed layer; pow emits the sqrt that sqrt_decompose lowers, so it goes first.
_MATH = ["pow_decompose", "sqrt_decompose", "exp_decompose", "erf_decompose"]

ONNX_FORMS = ["attention_to_matmul", "local_attention_to_matmul", "shift_to_conv", "unfold_to_conv",
              "roll_to_slice_concat", "groupnorm_to_instancenorm", "gelu_to_erf", "silu_to_sigmoid"]
"""The decompositions the ONNX emitter leaves to passes, in the forms of runtimes with MatMul, Erf and
InstanceNormalization: after them every op has a one-op ONNX form, at any opset."""

PIPELINES: dict[str, list[str]] = {
    "onnx": [*ONNX_FORMS, "fold_batchnorm", "fold_pointwise_into_conv", "slice_before_conv", "conv_before_resize",
             "pool_before_conv", "downscale_to_conv", "reduce_to_matmul", "constant_folding", "cse", "cleanup_shuffles",
             "dce"],
    "torch": ["cse", "merge_sibling_convs", "cleanup_shuffles"],
    "trt": [*ONNX_FORMS, "fold_batchnorm", "pool_before_conv", "constant_folding", "cse", "cleanup_shuffles", "dce"],
    # Order matters within the lower phase: the attention lowerings emit pads, reductions and
    # concats, matmul_to_conv emits linear maps, and the maxpool lowering emits an edge pad, all
    # lowered by the passes after them.
    "trt-restricted": [
        "lower_attention", "lower_local_attention", "matmul_to_conv", "gather_to_slice", "where_to_blend",
        "shift_to_conv", "unfold_to_conv", "roll_to_slice_concat", "pool_padding_explicit",
        "maxpool_to_elementwise", "pad_to_slice_concat", "layernorm_decompose", "groupnorm_decompose",
        "reduce_to_conv", "reduce_max_to_elementwise", "linear_to_conv", "silu_to_sigmoid", "hardswish_decompose",
        "clip_to_relu", "minmax_to_relu", "tanh_decompose", "neg_to_mul", *_MATH, *_FOLD_AND_CLEAN,
    ],
    "trt-dla": [
        "lower_attention", "lower_local_attention", "matmul_to_conv", "gather_to_slice", "where_to_blend",
        "shift_to_conv", "unfold_to_conv", "roll_to_slice_concat", "pool_padding_explicit",
        "pad_to_slice_concat", "strided_slice_to_conv", "resize_to_conv", "pool_windows", "layernorm_decompose",
        "groupnorm_decompose", "reduce_to_conv", "reduce_min_to_max", "linear_to_conv", "silu_to_sigmoid",
        "hardswish_decompose", "clip_to_relu", "minmax_to_relu", "tanh_decompose", "neg_to_mul", *_MATH,
        "elementwise_rank4", "slice_concat_rank4", "concat_to_channels", *_FOLD_AND_CLEAN,
    ],
}

PRINT_ALL = "all"


def lowering_targets(op: str) -> dict[str, tuple[list[str], str]]:
    """For IR op ``op``: each pass that removes it (its postcondition says so) -> (the targets whose pipeline
    runs it, the condition under which it removes the op, "" for always).

    Passes in no pipeline are left out: only what a ``--target`` applies counts as a lowering.
    """
    found: dict[str, tuple[list[str], str]] = {}
    for name, p in all_passes().items():
        targets = [target for target, names in PIPELINES.items() if name in names]
        removal = removed_ops(p)
        if targets and removal is not None and op in removal.ops:
            found[name] = (targets, removal.when)
    return found


class PassFailure(RuntimeError):
    """A pass raised or left an invalid graph: an internal error, named after the pass."""


@dataclass
class PipelineResult:
    """The lowered graph, its weights (pruned to its parameters; None if none were given), and the log."""

    graph: Graph
    weights: Weights | None
    log: RewriteLog
    passes: list[str]


def pipeline_passes(target: str, passes: list[str] | None = None) -> list[str]:
    """The pass names to run for ``target`` (or the given ``passes``), in run order; user errors for unknown names."""
    if passes is None:
        if target not in PIPELINES:
            raise NetdslError(Diagnostic(f"unknown target '{target}'", help=did_you_mean(target, PIPELINES),
                                         notes=["targets: " + ", ".join(PIPELINES)]))
        passes = PIPELINES[target]
    phases = [PHASES.index(lookup(name).phase) for name in passes]
    return [name for _, _, name in sorted(zip(phases, range(len(passes)), passes))]


def run_pipeline(graph: Graph, target: str, weights: Weights | None = None, passes: list[str] | None = None,
                 print_after: str | None = None, printer: Callable[[str], None] = print,
                 after_pass: Callable[[str, Graph], None] | None = None,
                 consume_weights: bool = False) -> PipelineResult:
    """Run the pipeline of ``target`` (or ``passes`` instead) on a copy of ``graph``.

    ``weights`` (by parameter name) are needed by passes that rewrite parameter values
    (``fold_batchnorm``, ``fold_params``); the caller's dict is not modified, unless
    ``consume_weights`` hands it over: the passes then update it in place, so a replaced weight
    (e.g. a conv kernel before batch-norm folding) is freed at once instead of living on in the
    caller's dict beside its replacement, and the dict is emptied once the result is built.
    The caller must not use it afterwards. ``print_after``
    names a pass (or ``all``) after which the IR is given to ``printer``; ``after_pass(name, graph)``
    is called after every pass (e.g. to measure the graph).
    Raises NetdslError for an unknown target, pass or ``print_after`` name, ValueError when
    weights are missing, and :class:`PassFailure` when a pass breaks the IR.
    """
    names = pipeline_passes(target, passes)
    if print_after is not None and print_after != PRINT_ALL and print_after not in names:
        raise NetdslError(Diagnostic(f"--print-after '{print_after}' is not one of the passes run",
                                     help=did_you_mean(print_after, names),
                                     notes=["passes run: " + (", ".join(names) or "none")]))
    work = _checked_weights(graph, weights, names, consume_weights)
    graph = _copy_graph(graph)
    log = RewriteLog()
    for name in names:
        step = get_pass(name, work)
        try:
            if _may_rewrite(step, graph):
                graph = step.run(graph, log)
                verify(graph)
        except NetdslError:
            raise
        except Exception as err:
            raise PassFailure(f"pass '{name}' failed on graph '{graph.name}': {type(err).__name__}: {err}") from err
        if print_after in (name, PRINT_ALL):
            printer(f"# IR after {name}\n" + format_graph(graph))
        if after_pass is not None:
            after_pass(name, graph)
    if work is not None:
        pruned = {p: work[p] for p in graph.params}
        if consume_weights:
            work.clear()  # the pruned-away weights (e.g. folded batch-norm statistics) go now, not with the caller
        work = pruned
    return PipelineResult(graph, work, log, names)


def _may_rewrite(step: Pass, graph: Graph) -> bool:
    """False when ``step`` declares the ops it rewrites and ``graph`` has none of them: a node pass is called on
    those nodes only, so running it (and verifying the graph it leaves unchanged) would do nothing."""
    return not isinstance(step.matches, frozenset) or any(n.op in step.matches for n in graph.nodes)


def _copy_graph(graph: Graph) -> Graph:
    """A deep copy of ``graph`` for the passes to rewrite, sharing its immutable parts.

    Types, inits and provenance are frozen dataclasses: seeding deepcopy's memo with them makes
    the copy reuse them instead of rebuilding thousands of equal objects.
    """
    frozen: list[object] = [*graph.values.values(), *(n.provenance for n in graph.nodes)]
    for p in graph.params.values():
        frozen += (p.type, p.init, p.provenance)
    memo: dict[int, object] = {id(obj): obj for obj in frozen}
    return copy.deepcopy(graph, memo)


def _checked_weights(graph: Graph, weights: Weights | None, names: list[str], consume: bool) -> Weights | None:
    """``weights`` (itself when ``consume``, else a copy) after checking it names every parameter when a pass
    needs it."""
    if weights is None:
        needing = [n for n in names if needs_weights(n)]
        if needing:
            raise ValueError(f"passes {', '.join(needing)} rewrite parameter values and need the weights")
        return None
    missing = [p for p in graph.params if p not in weights]
    if missing:
        raise ValueError(f"weights miss parameters: {', '.join(missing)}")
    return weights if consume else dict(weights)
