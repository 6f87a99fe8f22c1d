"""Float16 range check: does every value of a graph fit float16 on calibration inputs?

Before a model is written in float16, the lowered graph runs twice per calibration batch in
netdsl's numpy interpreter (:mod:`netdsl.interp`):

* in float32, recording each value's largest magnitude ``max |x|``;
* in float16 storage (every weight, input and node output rounded to float16, each op computed
  in float32, as GPU float16 kernels do), recording which values become Inf or NaN.

A value whose float32 magnitude exceeds :data:`FLOAT16_MAX` (it would be Inf in float16), or
that is Inf/NaN in the float16 run while finite in float32 (a rounding or underflow effect, e.g.
a divisor that flushes to 0), is an error located at the spec line of the node that computes it,
naming the op, the pass that created the node, and what to change. Parameters beyond the float16
range are errors at their declaration.

The same calibration run checks the lowerings whose exactness depends on their input's range
(:func:`check_input_ranges`): a node created by such a lowering carries the ``input_range``
attribute ``(op, lo, hi)`` (:data:`netdsl.passes.softmax_exp.INPUT_RANGE`), and a calibration value
of its first input outside [lo, hi] is an error located at the spec line of the lowered op, naming
the op, the pass and the range.

The float16 check sees values at IR-node granularity: a quantity that exists only inside one op's
runtime implementation is not observed. The ONNX emitter writes each op as one ONNX op, so an
intermediate the ONNX model stores is an IR value (e.g. ``attention``'s unscaled ``q @ kᵀ`` is the
output of the ``matmul`` that ``attention_to_matmul`` creates).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from netdsl.diagnostics import Diagnostic, NetdslError
from netdsl.initializers import NP_DTYPES
from netdsl.interp import run_graph
from netdsl.ir import Graph, Node

FLOAT16_MAX = 65504.0
"""The largest finite float16 number; anything above it (after rounding) is Inf."""

DEFAULT_SAMPLES = 8

Batch = dict[str, np.ndarray]

# What to change, by the op that leaves the float16 range; the fallback covers the rest.
_ADVICE = {
    "exp": "subtract the maximum before exp (softmax(x) does, or exp(x - reduce_max(x, axes, keepdims=true))) "
           "or scale its input down",
    "reduce_sum": "use reduce_mean, or scale the input down before summing",
    "div": "keep the divisor away from 0 (add an epsilon) or scale the operands",
    "attention": "scale q or k down (a smaller scale, or a normalisation before the projections)",
    "matmul": "scale the operands down (for attention logits q @ kᵀ: q or k, by a normalisation before the "
              "projections)",
}
_FALLBACK_ADVICE = "scale the values down before this node (a normalisation, or smaller weights)"
_KEEP_FLOAT32 = "or compile this model in float32 (--dtype float32)"


@dataclass
class ValueStats:
    """What the calibration runs saw of one node output."""

    node: Node
    value: str
    max_abs: float = 0.0  # float32 run, over all batches (Inf if float32 overflows too)
    finite_fp32: bool = True
    finite_fp16: bool = True

    @property
    def out_of_range(self) -> bool:
        """Beyond float16 in float32, or Inf/NaN only in float16."""
        return self.max_abs > FLOAT16_MAX or (self.finite_fp32 and not self.finite_fp16)


@dataclass
class RangeReport:
    """Per-value ranges of a graph over calibration batches, in graph order."""

    graph: Graph
    samples: int
    stats: dict[str, ValueStats] = field(default_factory=dict)

    def _record(self, node: Node, value: str, array: np.ndarray, fp16: bool) -> None:
        if not np.issubdtype(array.dtype, np.floating):
            return
        entry = self.stats.setdefault(value, ValueStats(node, value))
        # From the extremes alone, which need no array of the value's size (as abs and isfinite would):
        # a NaN makes both NaN, an Inf one of them infinite.
        lo, hi = (float(np.min(array)), float(np.max(array))) if array.size else (0.0, 0.0)
        finite = math.isfinite(lo) and math.isfinite(hi)
        if fp16:
            entry.finite_fp16 &= finite
            return
        entry.finite_fp32 &= finite
        if array.size:
            peak = max(abs(lo), abs(hi))
            entry.max_abs = max(entry.max_abs, peak if not math.isnan(peak) else math.inf)

    def observer(self, fp16: bool) -> Callable[[Node, list[np.ndarray]], None]:
        """The ``observe`` callback of one interpreter run (float16 storage when ``fp16``)."""

        def observe(node: Node, outputs: list[np.ndarray]) -> None:
            for name, array in zip(node.outputs, outputs, strict=True):
                self._record(node, name, array, fp16)

        return observe

    def in_graph_order(self) -> list[ValueStats]:
        """Every value's stats in graph order (a chain the interpreter runs in slices is observed at its end)."""
        order = {value: index for index, node in enumerate(self.graph.nodes) for value in node.outputs}
        return sorted(self.stats.values(), key=lambda s: order[s.value])

    def out_of_range(self) -> list[ValueStats]:
        """The values beyond float16, in graph order."""
        return [s for s in self.in_graph_order() if s.out_of_range]

    def peak(self) -> ValueStats | None:
        """The value with the largest magnitude (the first of equals), None for a graph without float values."""
        return max(self.in_graph_order(), key=lambda s: s.max_abs, default=None)


def _reiterable(batches: Iterable[Batch]) -> Iterable[Batch]:
    """``batches`` as they are if they can be iterated again without being held (:class:`CalibrationBatches`),
    else as a list."""
    return batches if isinstance(batches, CalibrationBatches) else list(batches)


def sample_count(graph: Graph, batches: Iterable[Batch]) -> int:
    """How many samples ``batches`` hold (the first input's leading axis, one per batch for scalars)."""
    first = graph.inputs[0] if graph.inputs else None
    return sum(len(b[first]) if first and b[first].ndim else 1 for b in batches)


ONE_BLAS_THREAD_BELOW = 32 << 20
"""Weight bytes under which the float16 check runs BLAS on one thread (:func:`blas_threads`)."""


def blas_threads(weights: dict[str, np.ndarray]) -> int | None:
    """BLAS threads for the float16 check of a model with ``weights``: 1 for a small model, else None (the
    library's default).

    Each BLAS thread's work buffer is resident once used, about 2 MB here: beside a small model that is a
    sixth of its float16 file (MobileViT-S's compile peaks at 66 MB with one thread, 68 MB with two, in the
    same time), while a large model's matrix products gain from the second thread (ConvNeXt-T's check took
    10% longer on one)."""
    size = sum(np.asarray(w).nbytes for w in weights.values())
    return 1 if size < ONE_BLAS_THREAD_BELOW else None


RunDone = Callable[[], None]
"""Called after each interpreter run of a range check (a progress bar's advance)."""


def observe_ranges(graph: Graph, weights: dict[str, np.ndarray], batches: Iterable[Batch],
                   run_done: RunDone | None = None) -> RangeReport:
    """Run ``graph`` on each batch in float32 and in float16 storage; the ranges every value reached (attention
    chains a slice at a time, convolutions a band of rows at a time: :func:`netdsl.interp.run_graph`'s
    ``in_slices``). ``run_done`` is called after each of the two runs per batch."""
    from threadpoolctl import threadpool_limits

    batches = _reiterable(batches)
    report = RangeReport(graph, sample_count(graph, batches))
    with threadpool_limits(limits=blas_threads(weights), user_api="blas"):
        for batch in batches:
            for fp16 in (False, True):
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    run_graph(graph, weights, batch, storage=np.float16 if fp16 else None,
                              observe=report.observer(fp16), in_slices=True)
                if run_done is not None:
                    run_done()
    return report


@dataclass(frozen=True)
class CalibrationBatches:
    """The batches of :func:`calibration_batches`, made again on each iteration: a run holds one batch at a time
    (eight 224x224 RGB samples are 4.8 MB, a third of a small model's float16 file)."""

    graph: Graph
    samples: int
    seed: int
    data: np.ndarray | None = None

    def _batch_size(self) -> int:
        """Samples per batch: the first input's leading axis (1 for a scalar input)."""
        first = self.graph.type_of(self.graph.inputs[0])
        return first.shape[0] if first.rank else 1

    def _distinct_samples(self) -> int:
        """The samples a pass covers before batches repeat any (cycling through ``data`` fills the last batch)."""
        return self.samples if self.data is None else min(self.samples, len(self.data))

    def __len__(self) -> int:
        """The number of batches an iteration gives."""
        return math.ceil(self._distinct_samples() / self._batch_size())

    def __iter__(self) -> Iterator[Batch]:
        graph = self.graph
        if self.data is not None:
            name, batch = graph.inputs[0], self._batch_size()
            rows = np.arange(len(self) * batch) % self._distinct_samples()
            for i in range(len(self)):
                yield {name: self.data[rows[i * batch:(i + 1) * batch]]}
            return
        rng = np.random.default_rng(self.seed)
        for _ in range(len(self)):
            yield {name: rng.standard_normal(graph.type_of(name).shape).astype(NP_DTYPES[graph.type_of(name).dtype])
                   for name in graph.inputs}


def calibration_batches(graph: Graph, samples: int, seed: int, data: np.ndarray | None = None) -> CalibrationBatches:
    """Inputs for :func:`observe_ranges`: ``samples`` samples in batches of the graph's batch size.

    With ``data`` (``[n, *sample_shape]`` for the graph's single input) the batches take its
    samples in order, cycling when ``n`` is not a multiple of the batch size; without it every
    input is drawn from a standard normal distribution seeded by ``seed``. The batches are made as
    they are iterated, each time the same. Raises ValueError when ``data`` is given for a graph
    with several inputs, or a non-float input has no data.
    """
    if samples < 1:
        raise ValueError(f"the number of calibration samples must be positive, found {samples}")
    if data is not None:
        if len(graph.inputs) != 1:
            raise ValueError(f"calibration data feeds a graph with one input; this one has {len(graph.inputs)}: "
                             + ", ".join(graph.inputs))
        return CalibrationBatches(graph, samples, seed, data)
    for name in graph.inputs:
        t = graph.type_of(name)
        if not np.issubdtype(NP_DTYPES[t.dtype], np.floating):
            raise ValueError(f"input '{name}' is {t}: give calibration data (--calib) for non-float inputs")
    return CalibrationBatches(graph, samples, seed)


def _fmt(x: float) -> str:
    return "Inf" if math.isinf(x) else f"{x:.6g}"


def parameter_overflow(graph: Graph, weights: dict[str, np.ndarray]) -> Diagnostic | None:
    """A located error for the first floating parameter whose magnitude exceeds float16, else None."""
    for name, param in graph.params.items():
        array = np.asarray(weights[name])
        if not np.issubdtype(array.dtype, np.floating) or not array.size:
            continue
        peak = float(np.max(np.abs(array)))
        if peak > FLOAT16_MAX:
            prov = param.provenance
            return Diagnostic(
                f"parameter '{name}' {param.type} does not fit float16: max |w| = {_fmt(peak)}, above {FLOAT16_MAX:g}",
                prov.span, chain=prov.chain,
                help=f"scale this parameter down (and the values it multiplies up), {_KEEP_FLOAT32}")
    return None


def range_diagnostic(report: RangeReport) -> Diagnostic | None:
    """A located error for the first value beyond float16 in graph order (the root cause), else None."""
    bad = report.out_of_range()
    if not bad:
        return None
    first = bad[0]
    node = first.node
    label = f"{node.op} '{first.value}'"
    samples = f"{report.samples} calibration sample{'s' if report.samples != 1 else ''}"
    if first.max_abs > FLOAT16_MAX:
        message = (f"{label} overflows float16: max |x| = {_fmt(first.max_abs)} on {samples}, "
                   f"above {FLOAT16_MAX:g}")
    else:
        message = (f"{label} is Inf or NaN in float16 although it stays finite in float32 "
                   f"(max |x| = {_fmt(first.max_abs)} on {samples})")
    notes = [f"value '{first.value}' {report.graph.values[first.value]}"]
    if node.provenance.rules:
        notes.append("created by pass " + " > ".join(node.provenance.rules) + " from the op written here")
    if len(bad) > 1:
        later = bad[1]
        notes.append(f"{len(bad) - 1} later value(s) are out of range too, the first '{later.value}' ({later.node.op})")
    advice = _ADVICE.get(node.op, _FALLBACK_ADVICE)
    return Diagnostic(message, node.provenance.span, notes=notes, chain=node.provenance.chain,
                      help=f"{advice}; {_KEEP_FLOAT32}")


def check_float16(graph: Graph, weights: dict[str, np.ndarray], batches: Iterable[Batch],
                  run_done: RunDone | None = None) -> RangeReport:
    """Check that ``graph`` with ``weights`` fits float16 on ``batches``; raises NetdslError (located) if not.
    ``run_done`` as for :func:`observe_ranges`."""
    diag = parameter_overflow(graph, weights)
    if diag is None:
        report = observe_ranges(graph, weights, batches, run_done)
        diag = range_diagnostic(report)
        if diag is None:
            return report
    raise NetdslError(diag)


@dataclass
class InputRangeStats:
    """The extremes that calibration inputs gave the input of one range-limited lowering (NaN ignored)."""

    node: Node
    op: str
    lo: float
    hi: float
    low: float = math.inf
    high: float = -math.inf

    @property
    def out_of_range(self) -> bool:
        return self.low < self.lo or self.high > self.hi


def _input_observer(stats: dict[int, InputRangeStats],
                    env: dict[str, np.ndarray]) -> Callable[[Node, list[np.ndarray]], None]:
    """The ``observe`` callback of one run: widens the extremes of each range-limited node's input."""

    needed = {entry.node.inputs[0] for entry in stats.values()}

    def observe(node: Node, outputs: list[np.ndarray]) -> None:
        entry = stats.get(id(node))
        if entry is not None:
            values = np.asarray(env[node.inputs[0]], dtype=np.float64)
            values = values[~np.isnan(values)]
            if values.size:
                entry.low, entry.high = min(entry.low, float(values.min())), max(entry.high, float(values.max()))
        # Only the inputs of range-limited nodes are kept: the run drops every value after its last use.
        env.update((name, array) for name, array in zip(node.outputs, outputs, strict=True) if name in needed)

    return observe


def range_limited_nodes(graph: Graph) -> list[Node]:
    """The nodes of range-limited lowerings (those carrying the ``input_range`` attribute), in graph order."""
    from netdsl.passes.softmax_exp import INPUT_RANGE

    return [n for n in graph.nodes if INPUT_RANGE in n.attrs]


def observe_input_ranges(graph: Graph, weights: dict[str, np.ndarray], batches: Iterable[Batch],
                         run_done: RunDone | None = None) -> list[InputRangeStats]:
    """Run ``graph`` in float32 on each batch; the extremes of every range-limited lowering's input, in graph order.
    ``run_done`` is called after each run."""
    from netdsl.passes.softmax_exp import INPUT_RANGE

    stats = {id(n): InputRangeStats(n, *n.attrs[INPUT_RANGE]) for n in range_limited_nodes(graph)}
    if not stats:
        return []
    for batch in batches:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            run_graph(graph, weights, batch, observe=_input_observer(stats, {**weights, **batch}))
        if run_done is not None:
            run_done()
    return list(stats.values())


def input_range_diagnostic(stats: list[InputRangeStats], samples: int) -> Diagnostic | None:
    """A located error for the first lowering whose input left its range on the calibration inputs, else None."""
    bad = [s for s in stats if s.out_of_range]
    if not bad:
        return None
    first = bad[0]
    side = (f"min {_fmt(first.low)}, below {first.lo:g}" if first.low < first.lo
            else f"max {_fmt(first.high)}, above {first.hi:g}")
    rules = " > ".join(first.node.provenance.rules) or "a lowering"
    notes = [f"{first.op} was lowered by pass {rules}, exact for inputs in {first.lo:g} .. {first.hi:g}"]
    if len(bad) > 1:
        notes.append(f"{len(bad) - 1} later range-limited lowering(s) are out of range too")
    prov = first.node.provenance
    return Diagnostic(
        f"the input of {first.op} leaves the range its lowering is exact for: {side} on {samples} calibration "
        f"sample{'s' if samples != 1 else ''}", prov.span, notes=notes, chain=prov.chain,
        help="keep the input inside the range (or declare the range it has, e.g. sqrt(x, range=[lo, hi])), "
             "calibrate with real data (--calib), or compile for a target that keeps the op")


def check_input_ranges(graph: Graph, weights: dict[str, np.ndarray], batches: Iterable[Batch],
                       run_done: RunDone | None = None) -> list[InputRangeStats]:
    """Check every range-limited lowering's input on ``batches``; a located NetdslError if one leaves its range.
    ``run_done`` as for :func:`observe_input_ranges`."""
    batches = _reiterable(batches)
    stats = observe_input_ranges(graph, weights, batches, run_done)
    diag = input_range_diagnostic(stats, sample_count(graph, batches))
    if diag is not None:
        raise NetdslError(diag)
    return stats
