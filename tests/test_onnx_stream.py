"""The streamed ONNX writer: the same bytes as protobuf's serialisation, external data above the limit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from netdsl.backends.onnx_backend import to_onnx, to_onnx_parts
from netdsl.backends.onnx_stream import split_before_field, write_onnx_parts
from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.passes.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lowered():
    graph = load_graph(str(REPO / "specs" / "csa.net"))
    return run_pipeline(graph, "onnx", weights=initial_weights(graph, 0))


def test_inline_file_is_protobufs_serialisation(lowered, tmp_path: Path) -> None:
    model, payloads = to_onnx_parts(lowered.graph, lowered.weights, channels_last_resize=True)
    weights = [name for name in payloads if name in lowered.weights]  # the others are the emitter's constants
    assert weights and all(payloads[name] is lowered.weights[name] for name in weights)  # not copies
    write_onnx_parts(model, payloads, tmp_path / "m.onnx")
    expected = to_onnx(lowered.graph, lowered.weights, channels_last_resize=True).SerializeToString()
    assert (tmp_path / "m.onnx").read_bytes() == expected


def test_external_data_above_the_limit(lowered, tmp_path: Path) -> None:
    model, payloads = to_onnx_parts(lowered.graph, lowered.weights)
    write_onnx_parts(model, payloads, tmp_path / "m.onnx", max_proto_bytes=1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    loaded = onnx.load(str(tmp_path / "m.onnx"))
    reference = to_onnx(lowered.graph, lowered.weights)
    for got, want in zip(loaded.graph.initializer, reference.graph.initializer, strict=True):
        assert got.name == want.name
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(got), onnx.numpy_helper.to_array(want))


def test_split_before_field() -> None:
    tensor = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [2], [1.0, 2.0])
    data = tensor.SerializeToString()
    head, tail = split_before_field(data, 8)  # name is field 8
    assert head + tail == data and tail.startswith(b"\x42\x01w")
