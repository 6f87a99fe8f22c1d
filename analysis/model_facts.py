"""Static facts shown beside the latencies of a side-by-side benchmark.

* **Size**: parameters, MACs per frame and bytes moved per frame. For ONNX models they are computed
  here from the graph after ONNX shape inference, with the definitions of
  :mod:`netdsl.cost` / :mod:`netdsl.traffic`: MACs of the dense ops only (Conv, ConvTranspose,
  MatMul, Gemm), and per node the bytes of every tensor it reads (activations, weights, constants)
  plus every tensor it writes, divided by the batch. Parameters are the elements of floating-point
  initializers, except batch-norm running statistics and resize scales (buffers, not parameters) and
  single-element constants (the scalars of element-wise formulas, e.g. a decomposed GELU's).
  A figure that needs a shape that shape inference could not give is ``None``.
* **Coverage**: a :class:`~netdsl.coverage.report.CoverageReport` summarised to what a
  comparison shows: covered nodes out of all, whether the model is deployable under the profile,
  and its violations grouped by op and reason with the first spec location of each group.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from netdsl.analysis.rebatch import RebatchError, batch_size_of, rebatch_model
from netdsl.coverage.report import CoverageReport
from netdsl.memory import MemoryFigures, live_memory

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                onnx.TensorProto.DOUBLE}
# (op, input index) slots whose initializers are buffers or settings, not learned parameters
_NOT_PARAMETERS = {("BatchNormalization", 3), ("BatchNormalization", 4), ("Resize", 1), ("Resize", 2)}


@dataclass
class ModelSize:
    """Parameters, MACs per frame and bytes moved per frame (None where unknown).

    ``macs_compiled`` is, for a spec, the MACs per frame of its graph after the benchmarked target's
    passes (what actually runs: e.g. 1x1 convs moved to the smaller side of a resize); ``macs`` is the
    spec as written, as ``netdsl stats`` reports it."""

    params: int | None = None
    macs: int | None = None
    bytes_per_frame: int | None = None
    macs_compiled: int | None = None


@dataclass
class ViolationGroup:
    """Uncovered nodes that share an op and the reasons they are refused."""

    op: str
    reason: str
    count: int
    first_at: str  # spec location (and block) or node name of the first such node
    rewrite: str | None = None


@dataclass
class CoverageSummary:
    """How much of a model a TensorRT profile allows, and why the rest is refused.

    ``error`` is set (and the counts are 0) when the model could not be built for the profile's target.
    """

    profile: str
    covered: int = 0
    total: int = 0
    deployable: bool = False
    violations: list[ViolationGroup] = field(default_factory=list)
    graph_violations: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def text(self) -> str:
        """``100%`` when deployable, else ``covered/total`` (``error`` when it was not checked)."""
        if self.error is not None:
            return "error"
        return "100%" if self.deployable else f"{self.covered}/{self.total}"

    def reason_lines(self) -> list[str]:
        """One line per violation group and per graph-level violation (empty when deployable)."""
        lines = []
        for g in self.violations:
            line = f"{g.count} x {g.op}: {g.reason} (first at {g.first_at})"
            lines.append(f"{line}; rewrite: {g.rewrite}" if g.rewrite else line)
        return lines + [f"graph: {v}" for v in self.graph_violations]

    def to_dict(self) -> dict:
        """A JSON-ready dict, with the display ``text``."""
        return {"profile": self.profile, "text": self.text, "covered": self.covered, "total": self.total,
                "deployable": self.deployable, "error": self.error,
                "violations": [asdict(g) for g in self.violations], "graph_violations": self.graph_violations}


def summarize_coverage(report: CoverageReport) -> CoverageSummary:
    """The summary of ``report``: counts, verdict, violations grouped by (op, reasons) in graph order."""
    groups: dict[tuple[str, str], ViolationGroup] = {}
    for node in report.violations():
        key = (node.op, "; ".join(node.reasons))
        if key in groups:
            groups[key].count += 1
        else:
            groups[key] = ViolationGroup(node.op, key[1], 1, node.where, node.rewrite)
    return CoverageSummary(report.profile, report.covered_count, report.total, report.covered, list(groups.values()),
                           [v.message for v in report.graph_violations])


# --------------------------------------------------------------------------- size of an ONNX graph


def parameter_count(model: onnx.ModelProto) -> int:
    """Elements of the floating-point initializers that some node reads as a parameter (see the module
    docstring): unused initializers and those read only as buffers or settings are not counted."""
    slots: dict[str, set[tuple[str, int]]] = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            slots.setdefault(name, set()).add((node.op_type, index))
    return sum(math.prod(t.dims) for t in model.graph.initializer
               if t.data_type in _FLOAT_TYPES and math.prod(t.dims) > 1
               and not slots.get(t.name, set()) <= _NOT_PARAMETERS)


def _tensor_shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], int]]:
    """Static (shape, bytes per element) of every tensor whose shape inference fixed every dimension."""
    shapes = {t.name: (tuple(t.dims), _itemsize(t.data_type)) for t in model.graph.initializer}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        tensor_type = vi.type.tensor_type
        if not tensor_type.HasField("shape") or vi.name in shapes:
            continue
        dims = tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = (tuple(d.dim_value for d in dims), _itemsize(tensor_type.elem_type))
    return shapes


def _itemsize(elem_type: int) -> int:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize


def _node_macs(node: onnx.NodeProto, shapes: dict[str, tuple[tuple[int, ...], int]]) -> int:
    """MACs of one node (0 outside the dense ops); KeyError when a shape it needs is unknown."""
    op = node.op_type
    if op not in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
        return 0
    out = math.prod(shapes[node.output[0]][0])
    first, second = shapes[node.input[0]][0], shapes[node.input[1]][0]
    if op == "Conv":  # weight [Co, Ci/groups, k...]
        return out * math.prod(second[1:])
    if op == "ConvTranspose":  # weight [Ci, Co/groups, k...]: every input element feeds Co/groups * k outputs
        return math.prod(first) * math.prod(second[1:])
    if op == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        return out * first[0 if trans_a else 1]
    return out * first[-1]  # MatMul


def onnx_size(model: onnx.ModelProto) -> ModelSize:
    """Parameters, MACs per frame and bytes per frame of an ONNX model (see the module docstring).

    A symbolic batch is taken as 1; MACs and bytes are None when shape inference fails or leaves a
    tensor they need without a static shape."""
    size = ModelSize(params=parameter_count(model))
    try:
        batch = batch_size_of(model) or 1
        inferred = rebatch_model(model, batch)  # a copy with every shape inferred (strict)
    except RebatchError:
        return size
    shapes = _tensor_shapes(inferred)
    try:
        size.macs = sum(_node_macs(node, shapes) for node in inferred.graph.node) // batch
    except KeyError:
        pass
    try:
        moved = sum(math.prod(shapes[name][0]) * shapes[name][1]
                    for node in inferred.graph.node for name in [*node.input, *node.output] if name)
        size.bytes_per_frame = moved // batch
    except KeyError:
        pass
    return size


def onnx_activation_memory(model: onnx.ModelProto) -> MemoryFigures:
    """Peak live and largest activation of an ONNX model run in node order (:func:`netdsl.memory.live_memory`).

    Shapes come from ONNX shape inference; initializers and Constant outputs are weights. Unlike the
    figures of the IR, they count the tensors inside ops that one IR op emits as several ONNX nodes
    (e.g. an attention's attention matrix)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    weights = {t.name for t in model.graph.initializer}
    weights |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    size = {name: math.prod(shape) * itemsize for name, (shape, itemsize) in _tensor_shapes(inferred).items()
            if name not in weights}
    nodes = [([i for i in n.input if i], list(n.output)) for n in inferred.graph.node]
    return live_memory(nodes, size, [i.name for i in model.graph.input], [o.name for o in model.graph.output])
