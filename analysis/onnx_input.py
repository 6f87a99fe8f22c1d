"""Reading ONNX model files a user hands to netdsl (``coverage``, ``bench``, ``quantize``) as untrusted input.

A model file is judged before any command looks at it: it must parse, pass the ONNX checker
(which refuses cycles, inputs no node or initializer defines, names assigned twice, unknown
ops), import only opsets this onnx knows, keep every external data file inside the model's own
folder and within that file's size, and declare no tensor too large to ever allocate. Each
failure is one :class:`OnnxFileError` line naming the file and what is wrong, reported by the
commands as a user error (exit 2).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import external_data_helper

from netdsl.diagnostics import one_line

# No graph input, output or value may declare more elements than this (2**40 float32 values are
# 4 TiB): larger ones are corrupt or hostile, and running them would only exhaust memory.
MAX_TENSOR_ELEMENTS = 2**40


class OnnxFileError(Exception):
    """An ONNX file that cannot be used; the message is one line naming the file."""


def _check_opsets(model: onnx.ModelProto) -> str | None:
    known = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and not 1 <= entry.version <= known:
            return f"imports opset {entry.version} of the ONNX domain; this installation knows opsets 1 to {known}"
    return None


def _check_dims(model: onnx.ModelProto) -> str | None:
    graph = model.graph
    for info in (*graph.input, *graph.output, *graph.value_info):
        dims = [d.dim_value for d in info.type.tensor_type.shape.dim if d.HasField("dim_value")]
        if any(d < 0 for d in dims):
            return f"tensor '{info.name}' declares a negative dimension {dims}"
        if math.prod(dims) > MAX_TENSOR_ELEMENTS:
            return (f"tensor '{info.name}' declares {math.prod(dims):,} elements {dims}, more than the limit of "
                    f"{MAX_TENSOR_ELEMENTS:,}")
    for tensor in graph.initializer:
        if any(d < 0 for d in tensor.dims) or math.prod(tensor.dims) > MAX_TENSOR_ELEMENTS:
            return f"initializer '{tensor.name}' declares dimensions {list(tensor.dims)} beyond the limit"
    return None


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in ``graph``: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def _check_external_data(model: onnx.ModelProto, folder: Path) -> str | None:
    """None when every external tensor's file lies inside ``folder`` and holds its bytes."""
    root = folder.resolve()
    for tensor in _tensors(model.graph):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        location = Path(info.location)
        target = (root / location).resolve()
        if not info.location or location.is_absolute() or not target.is_relative_to(root):
            return f"external data of tensor '{tensor.name}' points outside the model's folder: '{info.location}'"
        if not target.is_file():
            return f"external data file '{info.location}' of tensor '{tensor.name}' does not exist"
        size = target.stat().st_size
        offset = int(info.offset or 0)
        length = size - offset if info.length is None else int(info.length)
        if offset < 0 or length < 0 or offset + length > size:
            return (f"external data of tensor '{tensor.name}' asks for bytes {offset}..{offset + length} of "
                    f"'{info.location}', which holds {size}")
    return None


def load_onnx_file(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The checked model in ``path``, external data loaded; raises :class:`OnnxFileError`."""
    path = Path(path)
    if not path.is_file():
        raise OnnxFileError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf and onnx raise several error types
        raise OnnxFileError(f"{path}: not a readable ONNX model: {one_line(err)}") from None
    problem = _check_opsets(model) or _check_dims(model)
    if problem is None:
        try:
            onnx.checker.check_model(model)
        except Exception as err:  # noqa: BLE001 - the checker raises ValidationError, and others for odd protos
            problem = f"not a valid ONNX model: {one_line(err)}"
    problem = problem or _check_external_data(model, path.parent)
    if problem is not None:
        raise OnnxFileError(f"{path}: {problem}")
    try:
        external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as err:  # noqa: BLE001 - I/O and onnx's own path checks
        raise OnnxFileError(f"{path}: cannot read the model's external data: {one_line(err)}") from None
    return model
