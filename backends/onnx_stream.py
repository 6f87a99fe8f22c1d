"""Writing an ONNX model whose large initializers are numpy arrays outside the proto, without copying them.

``onnx.save`` needs the whole model in one protobuf message and then serialises it into one
bytes object: a model's weights are held three times (the arrays, the message, the bytes).
:func:`write_onnx_parts` takes the model of :func:`netdsl.backends.onnx_backend.to_onnx_parts`
(initializers of more than ``PAYLOAD_MIN_BYTES`` left empty) and the arrays, and writes the file
piece by piece, each array straight from its own memory:

* up to protobuf's 2 GiB limit, one self-contained file, byte for byte what
  ``to_onnx(...).SerializeToString()`` gives: protobuf serialises a message's fields in field
  number order, and a message is the concatenation of its fields, so the graph is written as its
  fields before ``initializer`` (field 5), each initializer (its small fields, then ``raw_data``,
  field 9, the highest it uses), and its fields after; the model likewise around ``graph`` (7);
* above it, the model with every empty initializer pointing into ``<file name>.data`` (ONNX
  external data), and that file written array after array.

Both go through :func:`netdsl.atomic_write.atomic_paths`: nothing is published until all is written.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx

from netdsl.atomic_write import atomic_paths

PROTOBUF_LIMIT = 2**31 - 1
_LENGTH_DELIMITED = 2
_GRAPH_FIELD = 7  # ModelProto.graph
_INITIALIZER_FIELD = 5  # GraphProto.initializer
_RAW_DATA_FIELD = 9  # TensorProto.raw_data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field_header(number: int, length: int) -> bytes:
    """The key and length of a length-delimited field."""
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(length)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def split_before_field(data: bytes, number: int) -> tuple[bytes, bytes]:
    """A serialised message cut where its fields numbered ``number`` or above begin."""
    pos = 0
    while pos < len(data):
        key, value_at = _read_varint(data, pos)
        if key >> 3 >= number:
            return data[:pos], data[pos:]
        wire = key & 7
        if wire == 0:
            _, pos = _read_varint(data, value_at)
        elif wire == 1:
            pos = value_at + 8
        elif wire == 5:
            pos = value_at + 4
        elif wire == _LENGTH_DELIMITED:
            length, start = _read_varint(data, value_at)
            pos = start + length
        else:
            raise ValueError(f"unexpected wire type {wire} in a serialised message")
    return data, b""


def _initializer_pieces(model: onnx.ModelProto,
                        payloads: Mapping[str, np.ndarray]) -> list[tuple[bytes, np.ndarray | None]]:
    """Per initializer: the bytes before its payload, and the payload array (None when it has none)."""
    pieces = []
    for tensor in model.graph.initializer:
        head = tensor.SerializeToString()
        array = payloads.get(tensor.name)
        if array is None:
            pieces.append((_field_header(_INITIALIZER_FIELD, len(head)) + head, None))
            continue
        data_field = _field_header(_RAW_DATA_FIELD, array.nbytes)
        size = len(head) + len(data_field) + array.nbytes
        pieces.append((_field_header(_INITIALIZER_FIELD, size) + head + data_field, array))
    return pieces


def _write_inline(model: onnx.ModelProto, payloads: Mapping[str, np.ndarray], out: BinaryIO) -> None:
    shell = onnx.ModelProto()
    shell.CopyFrom(model)  # the model holds no large data: a cheap copy
    graph = shell.graph
    del graph.initializer[:]
    graph_head, graph_tail = split_before_field(graph.SerializeToString(), _INITIALIZER_FIELD + 1)
    shell.ClearField("graph")
    model_head, model_tail = split_before_field(shell.SerializeToString(), _GRAPH_FIELD + 1)
    pieces = _initializer_pieces(model, payloads)
    graph_size = len(graph_head) + len(graph_tail) + sum(len(h) + (a.nbytes if a is not None else 0)
                                                         for h, a in pieces)
    out.write(model_head + _field_header(_GRAPH_FIELD, graph_size) + graph_head)
    for head, array in pieces:
        out.write(head)
        if array is not None:
            out.write(memoryview(np.ascontiguousarray(array)).cast("B"))
    out.write(graph_tail + model_tail)


def _inline_size(model: onnx.ModelProto, payloads: Mapping[str, np.ndarray]) -> int:
    extra = sum(a.nbytes + 16 for a in payloads.values())  # data, field headers and initializer lengths
    return model.ByteSize() + extra


def write_onnx_parts(model: onnx.ModelProto, payloads: Mapping[str, np.ndarray], path: str | os.PathLike[str],
                     max_proto_bytes: int = PROTOBUF_LIMIT) -> None:
    """Write ``model`` with each empty initializer's data taken from ``payloads`` (by name), atomically.

    A model above ``max_proto_bytes`` once its data is in it is written with external data in
    ``<file name>.data`` next to ``path``; both files are published only once both are complete.
    """
    target = Path(path)
    if _inline_size(model, payloads) <= max_proto_bytes:
        with atomic_paths(target) as (staged,), open(staged, "wb") as out:
            _write_inline(model, payloads, out)
        return
    data_name = f"{target.name}.data"
    shell = onnx.ModelProto()
    shell.CopyFrom(model)
    # Data first: the model file must never point at a data file that is not there yet.
    with atomic_paths(target.with_name(data_name), target) as (staged_data, staged_model):
        with open(staged_data, "wb") as out:
            for tensor in shell.graph.initializer:
                array = payloads.get(tensor.name)
                if array is None:
                    continue
                offset = out.tell()
                out.write(memoryview(np.ascontiguousarray(array)).cast("B"))
                tensor.data_location = onnx.TensorProto.EXTERNAL
                for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(array.nbytes))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
        staged_model.write_bytes(shell.SerializeToString())
