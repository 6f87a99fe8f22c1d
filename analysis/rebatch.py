"""Re-batching a fixed-batch ONNX model for the benchmark.

A model exported with a fixed batch is re-batched on a copy: the batch dimension of the graph
inputs is rewritten, output shapes are re-inferred, and constant shapes that bake the old batch in
(the leading entry of Reshape shapes on batch-carrying tensors; Expand shapes, Resize sizes and
ConstantOfShape shapes whose leading entry is the old batch) are scaled. The re-batched model is then
verified against the original on distinct random samples with ONNX Runtime, so a model that mixes
samples or cannot be re-batched is reported as such instead of being timed wrongly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import numpy_helper

if TYPE_CHECKING:
    pass



class RebatchError(ValueError):
    """A fixed-batch model cannot be run at another batch size."""


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in initializers]


def batch_size_of(model: onnx.ModelProto) -> int | None:
    """The fixed batch (first dim shared by all graph inputs), or None when it is symbolic."""
    firsts = set()
    for vi in _graph_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if not dims:
            raise RebatchError(f"graph input '{vi.name}' has no batch axis (rank 0 or unknown shape)")
        firsts.add(dims[0].dim_value if dims[0].HasField("dim_value") else None)
    if None in firsts:
        return None
    if len(firsts) != 1:
        raise RebatchError(f"graph inputs disagree on the batch size: {sorted(firsts)}")
    return firsts.pop()


def _constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    int64 = onnx.TensorProto.INT64
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == int64}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            if node.attribute[0].t.data_type == onnx.TensorProto.INT64:
                values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _batch_carrying(model: onnx.ModelProto) -> set[str]:
    """Tensors whose element count grows with the batch (downstream of the inputs, not shapes)."""
    carrying = {vi.name for vi in _graph_inputs(model)}
    for node in model.graph.node:
        if node.op_type not in ("Shape", "Size") and any(i in carrying for i in node.input):
            carrying.update(node.output)
    return carrying


# (op, index of the constant shape-like input, rule): "scale" multiplies the leading entry by
# new/old batch (Reshape of a batch-carrying tensor); "replace" swaps a leading entry equal to the old
# batch for the new one (Expand / Resize sizes / ConstantOfShape may broadcast a constant up to it)
_SHAPE_INPUTS = {"Reshape": (1, "scale"), "Expand": (1, "replace"), "Resize": (3, "replace"),
                 "ConstantOfShape": (0, "replace")}


def _rewrite_constant_shapes(model: onnx.ModelProto, old: int, new: int) -> None:
    values = _constant_values(model)
    carrying = _batch_carrying(model)
    for node in model.graph.node:
        if node.op_type not in _SHAPE_INPUTS:
            continue
        index, rule = _SHAPE_INPUTS[node.op_type]
        if index >= len(node.input) or node.input[index] not in values:
            continue
        shape = values[node.input[index]].copy()
        if shape.ndim != 1 or shape.size == 0:
            continue
        lead = int(shape[0])
        if rule == "scale":
            if node.input[0] not in carrying or lead <= 0:
                continue  # -1 and 0 already follow the input; constants do not carry the batch
            if (lead * new) % old:
                what = f"{node.op_type} '{node.name}'"
                raise RebatchError(f"{what} has leading dim {lead}, not a multiple of the exported batch {old}")
            shape[0] = lead * new // old
        elif lead == old:
            shape[0] = new
        else:
            continue
        # a fresh initializer per node: the original constant may be shared with other nodes
        name = f"{node.input[index]}__batch{new}_{node.name or id(node)}"
        model.graph.initializer.append(numpy_helper.from_array(shape.astype(np.int64), name))
        node.input[index] = name


def rebatch_model(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy of ``model`` that runs at ``batch``; raises :class:`RebatchError` when it cannot."""
    old = batch_size_of(model)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for vi in _graph_inputs(copy):
        dim = vi.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = batch
    # outputs and intermediates are re-inferred: not every output has a batch axis (squeeze at batch 1)
    for vi in copy.graph.output:
        vi.type.tensor_type.ClearField("shape")
    del copy.graph.value_info[:]
    if old is not None and old != batch:
        _rewrite_constant_shapes(copy, old, batch)
    try:
        return onnx.shape_inference.infer_shapes(copy, strict_mode=True)
    except Exception as e:  # noqa: BLE001 - onnx raises several error types for one meaning
        raise RebatchError(f"the model does not type-check at batch {batch}: {str(e).strip().splitlines()[-1]}") from e


def random_inputs(model: onnx.ModelProto, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random float (normal) / zero integer and bool inputs of the model's static input shapes."""
    feeds = {}
    for vi in _graph_inputs(model):
        tensor_type = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[vi.name] = np.zeros(dims, dtype=dtype)
    return feeds


def verify_rebatch(original: Any, rebatched: Any, old: int, batch: int, feeds: dict[str, np.ndarray]) -> None:
    """Check that ``rebatched`` (a session at ``batch``) equals ``original`` (a session at ``old``)
    run chunk by chunk on the same distinct samples; raises :class:`RebatchError` when not."""
    chunks = []
    for start in range(0, batch, old):
        index = np.arange(start, start + old) % batch  # the last chunk wraps around to stay full
        chunks.append(original.run(None, {k: v[index] for k, v in feeds.items()}))
    actual = rebatched.run(None, feeds)
    names = [o.name for o in rebatched.get_outputs()]
    for i, name in enumerate(names):
        exported = chunks[0][i].shape
        if not exported or exported[0] != old:
            raise RebatchError(
                f"output '{name}' has shape {exported} at the exported batch {old}: its first axis is not the batch "
                "(e.g. squeeze() dropped a size-1 batch axis), so the model cannot be re-batched; export it at each "
                "batch size"
            )
        expected = np.concatenate([c[i] for c in chunks])[:batch]
        if actual[i].shape != expected.shape:
            raise RebatchError(
                f"at batch {batch} output '{name}' has shape {actual[i].shape}, but the batch-{old} model run sample "
                f"by sample gives {expected.shape}; export the model at this batch"
            )
        if not np.allclose(actual[i], expected, rtol=1e-3, atol=1e-4):
            raise RebatchError(
                f"at batch {batch} output '{name}' differs from the batch-{old} model run sample by sample: the "
                "model mixes samples across the batch or bakes the batch size into a constant; export it at this batch"
            )
