"""Hostile ONNX files given to every command that reads one (coverage, bench, quantize): one error line naming
the file, exit 2, no traceback and nothing written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

OPSET = helper.make_opsetid("", 17)


def model(nodes: list[onnx.NodeProto], dims: tuple[int, ...] = (1, 4), opset: int = 17,
          initializers: tuple[TensorProto, ...] = ()) -> onnx.ModelProto:
    """A float model of input ``x`` and output ``y`` (shape ``dims``) with ``nodes`` in between."""
    graph = helper.make_graph(nodes, "hostile", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
                              initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def relu(name: str, inp: str, out: str) -> onnx.NodeProto:
    return helper.make_node("Relu", [inp], [out], name=name)


def outside_tensor() -> TensorProto:
    """An initializer whose external data lies in the folder above the model's."""
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=(1, 4))
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    return tensor


def write_model(m: onnx.ModelProto) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(m.SerializeToString())


def truncated(path: Path) -> None:
    path.write_bytes(model([relu("n0", "x", "y")]).SerializeToString()[:-9])


# file writer, the message after "error: <path>: "
CASES = {
    "cycle": (write_model(model([relu("n0", "b", "a"), relu("n1", "a", "b"), relu("n2", "b", "y")])),
              "not a valid ONNX model: Nodes in a graph must be topologically sorted, however input 'b' of node: "
              "name: n0 OpType: Relu is not output of any previous nodes."),
    "undefined input": (write_model(model([relu("n0", "nowhere", "y")])),
                        "not a valid ONNX model: Nodes in a graph must be topologically sorted, however input "
                        "'nowhere' of node: name: n0 OpType: Relu is not output of any previous nodes."),
    "duplicate names": (write_model(model([relu("n0", "x", "y"), relu("n1", "x", "y")])),
                        "not a valid ONNX model: Graph must be in single static assignment (SSA) form, however 'y' "
                        "has been used as output names multiple times."),
    "unknown op": (write_model(model([helper.make_node("Frobnicate", ["x"], ["y"], name="n0")])),
                   "not a valid ONNX model: No Op registered for Frobnicate with domain_version of 17 ==> Context: "
                   "Bad node spec for node. Name: n0 OpType: Frobnicate"),
    "unknown opset": (write_model(model([relu("n0", "x", "y")], opset=999)),
                      f"imports opset 999 of the ONNX domain; this installation knows opsets 1 to "
                      f"{onnx.defs.onnx_opset_version()}"),
    "huge dimensions": (write_model(model([relu("n0", "x", "y")], dims=(1 << 30, 1 << 30))),
                        "tensor 'x' declares 1,152,921,504,606,846,976 elements [1073741824, 1073741824], more than "
                        "the limit of 1,099,511,627,776"),
    "external data outside": (write_model(model([helper.make_node("Add", ["x", "w"], ["y"], name="n0")],
                                                initializers=(outside_tensor(),))),
                              "not a valid ONNX model: Data of TensorProto ( tensor name: w) should be file inside "
                              "'', but '../secret.bin' points outside the directory."),
}


def command(name: str, path: Path, tmp_path: Path) -> list[object]:
    if name == "coverage":
        return ["coverage", path, "--profile", "trt-restricted"]
    if name == "bench":
        return ["bench", path, "--batch", "1"]
    calib = tmp_path / "calib.npy"
    np.save(calib, np.zeros((2, 4), np.float32))
    return ["quantize", path, "--calib", calib, "-o", tmp_path / "out" / "q.onnx"]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", ["coverage", "bench", "quantize"])
def test_hostile_onnx_file_is_one_located_error(run_cli, tmp_path: Path, name: str, case: str) -> None:
    write, message = CASES[case]
    folder = tmp_path / "models"
    folder.mkdir()
    (tmp_path / "out").mkdir()
    path = folder / "m.onnx"
    write(path)
    code, out, err = run_cli(command(name, path, tmp_path))
    assert code == 2
    assert "Traceback" not in err
    assert err.rstrip("\n").splitlines() == [f"error: {path}: {message}"]
    assert list((tmp_path / "out").iterdir()) == []


def test_truncated_file_is_unreadable(run_cli, tmp_path: Path) -> None:
    path = tmp_path / "t.onnx"
    truncated(path)
    code, _, err = run_cli(["coverage", path])
    assert code == 2
    (line,) = err.rstrip("\n").splitlines()
    assert line.startswith(f"error: {path}: not a readable ONNX model: ")
