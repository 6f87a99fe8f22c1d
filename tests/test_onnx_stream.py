"""Weights held once: the streamed ONNX writer (the same bytes as protobuf's serialisation, external data above
the limit, float16 converted array by array) and a pipeline that frees the weights it replaces."""

from __future__ import annotations

import gc
import sys
import weakref
from pathlib import Path

import numpy as np
import onnx
import pytest

from netdsl.allocator import release_freed_arrays
from netdsl.backends.onnx_backend import to_onnx, to_onnx_parts
from netdsl.backends.onnx_float16 import to_float16
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


def test_float16_parts_are_the_whole_models_conversion(lowered, tmp_path: Path) -> None:
    expected = to_float16(to_onnx(lowered.graph, lowered.weights), "float32").SerializeToString()
    weights = {name: array.copy() for name, array in lowered.weights.items()}
    model, payloads = to_onnx_parts(lowered.graph, weights)
    del weights
    # The weights' copies (the graph's own constants, e.g. a downscale kernel, stay with the graph).
    float32_arrays = [weakref.ref(payloads[name]) for name in lowered.weights if name in payloads]
    assert float32_arrays
    half = to_float16(model, "float32", payloads)
    assert all(a.dtype == np.float16 for a in payloads.values())
    gc.collect()
    assert all(ref() is None for ref in float32_arrays)  # each freed once converted: held by nothing else
    write_onnx_parts(half, payloads, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_bytes() == expected


def test_a_consuming_pipeline_frees_the_weights_it_replaces(repo_root: Path) -> None:
    graph = load_graph(str(repo_root / "specs" / "models" / "small.net"))
    weights = initial_weights(graph, 0)
    kernels = {name: weakref.ref(array) for name, array in weights.items() if name.endswith("conv.weight")}
    kept = run_pipeline(graph, "onnx", weights=dict(weights))
    folded = [name for name in kernels if kept.weights[name] is not weights[name]]
    assert folded  # batch-norm folding replaced these kernels
    result = run_pipeline(graph, "onnx", weights=weights, consume_weights=True)
    del weights
    gc.collect()
    assert all(kernels[name]() is None for name in folded)
    assert all(result.weights[name] is not None for name in folded)


def test_freed_arrays_are_returned_on_linux() -> None:
    # glibc's mallopt answers 1 on success; other platforms have nothing to tune.
    assert release_freed_arrays() is sys.platform.startswith("linux")
