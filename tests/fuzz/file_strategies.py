"""Hypothesis strategies for the files netdsl reads besides specs, and how each is run.

Two families:

* :func:`weights_files` -- ``.safetensors``, ``.npz`` and ``.pt`` files for a small spec, with the
  right, wrong, absent or extra tensors, odd dtypes (strings, complex, bool) and shapes, hand-made
  archives whose headers declare enormous arrays, and any of them truncated or with bytes
  flipped; run through ``netdsl compile SPEC --weights FILE``;
* :func:`onnx_files` -- small ONNX graphs wired at random (cycles, inputs nothing defines, names
  assigned twice, unknown ops, opsets that do not exist, huge and negative dimensions,
  initializers stored as external data anywhere, including outside the model's folder), their
  serialisations sometimes corrupted; run through ``netdsl coverage FILE``.

Each input is a :class:`FileInput`: the file, plus sibling files it may refer to.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from . import DEFAULT_DEADLINE_S, DEFAULT_MEMORY_BUDGET, Contract, Outcome, debug_flag, run_cli

# The spec the weights are for: two parameters, conv.weight [8,4,3,3] and conv.bias [8].
WEIGHTS_SPEC = """model tiny() {
    input x: f32[1, 4, 8, 8]
    output y = conv(x, 8, kernel=3, padding=1) as conv
}
"""
PARAMS = {"conv.weight": (8, 4, 3, 3), "conv.bias": (8,)}
DTYPES = ("float32", "float64", "float16", "int64", "int8", "uint8", "bool", "complex64", "<U3")
EDGE_DIMS = (0, 1, 2, 3, 4, 8, 16, -1, 100_000, 2**31, 2**40, 2**62)
OPS = ("Relu", "Add", "Mul", "Identity", "Conv", "MatMul", "Concat", "Reshape", "Sigmoid", "Frobnicate", "")
OPSETS = (17, 17, 17, 13, 21, 1, 0, 99, -3)
LOCATIONS = ("w.bin", "w.bin", "../w.bin", "/etc/hostname", "sub/../w.bin", "", "missing.bin", "w.bin/..")


@dataclass(frozen=True)
class FileInput:
    """A file named ``name`` holding ``data``, with ``siblings`` (name -> bytes) beside it."""

    name: str
    data: bytes
    siblings: dict[str, bytes] = field(default_factory=dict)

    def __len__(self) -> int:  # the fuzz script keeps the smallest input of each crash kind
        return len(self.data) + sum(len(v) for v in self.siblings.values())

    def write(self, folder: Path) -> Path:
        """Write the file and its siblings into an emptied ``folder``; the file's path."""
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        for name, data in self.siblings.items():
            (folder / name).write_bytes(data)
        path = folder / self.name
        path.write_bytes(self.data)
        return path


# ------------------------------------------------------------------------------------------- mutation


@st.composite
def _mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` unchanged, truncated, with bytes overwritten, or with bytes inserted."""
    kind = draw(st.sampled_from(("keep", "keep", "truncate", "flip", "insert")))
    if kind == "keep" or not data:
        return data
    at = draw(st.integers(0, len(data) - 1))
    if kind == "truncate":
        return data[:at]
    chunk = draw(st.binary(min_size=1, max_size=8))
    return data[:at] + chunk + data[at + (len(chunk) if kind == "flip" else 0):]


# ------------------------------------------------------------------------------------------- weights


@st.composite
def _arrays(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """Tensors by name: mostly the spec's parameters, sometimes mis-shaped, mis-typed, missing or extra."""
    names = draw(st.lists(st.sampled_from([*PARAMS, "extra", "conv.weight.x", ""]), max_size=4, unique=True))
    arrays = {}
    for name in names:
        shape = PARAMS.get(name, (2,))
        if draw(st.booleans()):
            shape = tuple(draw(st.lists(st.integers(0, 9), max_size=4)))
        dtype = draw(st.sampled_from(DTYPES))
        values = draw(st.sampled_from((0.0, 1.0, float("nan"), float("inf"), 1e300)))
        with np.errstate(all="ignore"):  # NaN and 1e300 cast to integers on purpose
            arrays[name] = np.full(shape, values if dtype != "<U3" else "abc").astype(dtype)
    return arrays


def _npy_header(shape: tuple[int, ...], descr: str) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@st.composite
def _npz(draw: st.DrawFn) -> bytes:
    buf = io.BytesIO()
    if draw(st.booleans()):
        (np.savez_compressed if draw(st.booleans()) else np.savez)(buf, **draw(_arrays()))
    else:  # a hand-made archive: a header declaring any shape, followed by a few bytes
        shape = tuple(draw(st.lists(st.sampled_from(EDGE_DIMS[:-4] + (10**6, 2**31)), max_size=3)))
        body = _npy_header(shape, draw(st.sampled_from(("<f4", "<f8", "|b1", "<i8")))) + draw(st.binary(max_size=64))
        with zipfile.ZipFile(buf, "w") as archive:
            archive.writestr(draw(st.sampled_from(("conv.weight.npy", "conv.bias.npy", "x.npy"))), body)
    return buf.getvalue()


@st.composite
def _safetensors(draw: st.DrawFn) -> bytes:
    from safetensors.numpy import save

    if draw(st.booleans()):
        arrays = {k: v for k, v in draw(_arrays()).items() if v.dtype.kind in "fiub"}
        return save(arrays)
    # a hand-made header: any dtype, shape and offsets, followed by a few bytes
    entries = {name: {"dtype": draw(st.sampled_from(("F32", "F64", "I64", "BOOL", "XX"))),
                      "shape": draw(st.lists(st.sampled_from(EDGE_DIMS[:-1]), max_size=3)),
                      "data_offsets": draw(st.lists(st.sampled_from((0, 4, 32, 10**12)), min_size=2, max_size=2))}
               for name in draw(st.lists(st.sampled_from(list(PARAMS)), max_size=2, unique=True))}
    header = json.dumps(entries).encode()
    length = draw(st.sampled_from((len(header), len(header), 0, 2**40)))
    return struct.pack("<Q", length) + header + draw(st.binary(max_size=64))


@st.composite
def _torch_checkpoint(draw: st.DrawFn) -> bytes:
    import torch

    arrays = {k: torch.from_numpy(v) for k, v in draw(_arrays()).items() if v.dtype.kind in "fiub"}
    wrapped = draw(st.sampled_from(("plain", "state_dict", "list", "scalar")))
    value = {"plain": arrays, "state_dict": {"state_dict": arrays, "epoch": 3}, "list": list(arrays.values()),
             "scalar": 7}[wrapped]
    buf = io.BytesIO()
    torch.save(value, buf)
    return buf.getvalue()


@st.composite
def weights_files(draw: st.DrawFn) -> FileInput:
    """A weights file for :data:`WEIGHTS_SPEC` (see the module docstring)."""
    suffix, maker = draw(st.sampled_from(((".safetensors", _safetensors()), (".npz", _npz()),
                                          (".pt", _torch_checkpoint()), (".npz", st.binary(max_size=300)),
                                          (".safetensors", st.binary(max_size=300)))))
    return FileInput("w" + suffix, draw(_mutated(draw(maker))))


# ------------------------------------------------------------------------------------------- ONNX


# Built once: a strategy built inside a composite is validated again at every draw.
_DIMS = st.lists(st.sampled_from(EDGE_DIMS), min_size=1, max_size=4)
_LOCATION = st.sampled_from(LOCATIONS)
_OFFSET = st.sampled_from((0, 0, 4, -8, 2**40))
_LENGTH = st.sampled_from((8, 8, 0, 2**40))
_DATA_FILE = st.binary(min_size=0, max_size=16)
_OP = st.sampled_from(OPS)
_OPSET = st.sampled_from(OPSETS)


@st.composite
def _onnx_model(draw: st.DrawFn) -> FileInput:
    import onnx
    from onnx import TensorProto, helper

    siblings: dict[str, bytes] = {}
    inits = []
    for i in range(draw(st.integers(0, 2))):
        tensor = helper.make_tensor(f"w{i}", TensorProto.FLOAT, [2], [1.0, 2.0])
        if draw(st.booleans()):  # external data, wherever it points
            tensor.ClearField("float_data")
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", draw(_LOCATION)), ("offset", str(draw(_OFFSET))),
                               ("length", str(draw(_LENGTH)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            siblings["w.bin"] = draw(_DATA_FILE)
        inits.append(tensor)
    names = ["x", *(t.name for t in inits)]
    nodes = []
    for i in range(draw(st.integers(1, 5))):
        op = draw(_OP)
        inputs = draw(st.lists(st.sampled_from([*names, "undefined", f"t{i + 1}"]), min_size=1, max_size=2))
        output = draw(st.sampled_from((f"t{i}", f"t{i}", "x", "t0")))
        nodes.append(helper.make_node(op, inputs, [output], name=f"n{i}"))
        names.append(output)
    nodes.append(helper.make_node("Identity", [names[-1]], ["y"], name="out"))
    graph = helper.make_graph(draw(st.permutations(nodes)) if draw(st.booleans()) else nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, draw(_DIMS))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, draw(_DIMS))],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", draw(_OPSET))])
    model.ir_version = draw(st.sampled_from((onnx.IR_VERSION, 8, 3, 0, 999)))
    data = model.SerializeToString()
    # Mostly intact: a corrupted serialisation rarely gets past the protobuf parser.
    return FileInput("m.onnx", draw(_mutated(data)) if draw(st.integers(0, 3)) == 0 else data, siblings)


@st.composite
def onnx_files(draw: st.DrawFn) -> FileInput:
    """An ONNX file (see the module docstring), or raw bytes named ``.onnx``."""
    if draw(st.integers(0, 9)) == 0:
        return FileInput("m.onnx", draw(st.binary(max_size=300)))
    return draw(_onnx_model())


# ------------------------------------------------------------------------------------------- running


def prepare_weights_runs() -> None:
    """Import what :func:`run_weights_file` runs, once, outside any run's deadline.

    A netdsl process pays these imports once too; inside the first run they would count against
    its deadline (a first run that imported onnx on a loaded machine was once reported as a hang).
    """
    import safetensors.numpy  # noqa: F401
    import torch  # noqa: F401

    import netdsl.backends.onnx_backend  # noqa: F401
    import netdsl.backends.onnx_stream  # noqa: F401
    import netdsl.backends.weights_io  # noqa: F401


def prepare_onnx_runs() -> None:
    """Import what :func:`run_onnx_file` runs and load its profile, once, outside any run's deadline."""
    import netdsl.analysis.onnx_input  # noqa: F401
    import netdsl.coverage.checker  # noqa: F401
    from netdsl.coverage.profile import load_profile

    load_profile("trt")



def run_weights_file(file: FileInput, workdir: Path, deadline_s: float = DEFAULT_DEADLINE_S,
                     memory_bytes: int = DEFAULT_MEMORY_BUDGET, debug: bool = False) -> Outcome:
    """``netdsl compile`` of :data:`WEIGHTS_SPEC` with ``--weights`` the file, judged."""
    folder = workdir / "weights"
    path = file.write(folder)
    spec = workdir / "tiny.net"
    spec.write_text(WEIGHTS_SPEC)
    argv = [*debug_flag(debug), "compile", str(spec), "--weights", str(path), "-o", str(workdir / "out.onnx")]
    return run_cli(argv, deadline_s, memory_bytes, Contract(ok_prefix="wrote", names_file=str(path)))


def run_onnx_file(file: FileInput, workdir: Path, deadline_s: float = DEFAULT_DEADLINE_S,
                  memory_bytes: int = DEFAULT_MEMORY_BUDGET, debug: bool = False) -> Outcome:
    """``netdsl coverage`` of the file against the ``trt`` profile, judged."""
    path = file.write(workdir / "onnx")
    return run_cli([*debug_flag(debug), "coverage", str(path), "--profile", "trt"], deadline_s, memory_bytes,
                   Contract(ok_prefix="", names_file=str(path), verdict=" nodes covered: "))
