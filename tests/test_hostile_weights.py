"""Hostile weights files given to ``compile --weights``: one located error, exit 2, no traceback, nothing written,
and nothing allocated beyond what the graph's parameters can need."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from netdsl import api

SPEC = """
model t() {
    input x: f32[N=1, 4]
    output y = linear(x, 3) as fc
}
"""


def weights() -> dict[str, np.ndarray]:
    return {"fc.weight": np.ones((3, 4), np.float32), "fc.bias": np.zeros(3, np.float32)}


def truncated(path: Path) -> None:
    api.write_weights(weights(), path)
    data = path.read_bytes()
    path.write_bytes(data[:-7])


def corrupt(path: Path) -> None:
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 3)


def compressed_bomb(path: Path) -> None:
    # 16 MB of zeros in a few kB: more than the 12 + 3 parameters can need.
    np.savez_compressed(path, **weights(), pad=np.zeros(4 << 20, np.float32))


def npy_declaring(shape: tuple[int, ...]) -> bytes:
    """A .npy member whose header declares ``shape`` and which holds 16 bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + bytes(16)


def declared_enormous(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("fc.weight.npy", npy_declaring((1 << 20, 1 << 20)))
        archive.writestr("fc.bias.npy", npy_declaring((3,)))


def strings(path: Path) -> None:
    np.savez(path, **{"fc.weight": np.array([["a"] * 4] * 3), "fc.bias": np.zeros(3, np.float32)})


def safetensors_header_enormous(path: Path) -> None:
    header = json.dumps({"fc.weight": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]},
                         "fc.bias": {"dtype": "F32", "shape": [1 << 20, 1 << 20],
                                     "data_offsets": [48, 48 + (1 << 42)]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(60))


# file name, writer, the error lines
CASES: dict[str, tuple[str, Callable[[Path], None], list[str]]] = {
    "truncated safetensors": ("w.safetensors", truncated, [
        "error: cannot read weights file {path}: Error while deserializing header: incomplete metadata, file not "
        "fully covered"]),
    "corrupt npz": ("w.npz", corrupt, ["error: cannot read weights file {path}: File is not a zip file"]),
    "compressed bomb": ("w.npz", compressed_bomb, [
        "error: {path}: the archive expands to 16,777,660 bytes, more than the 1,048,696 the graph's parameters "
        "can need"]),
    "npz member declaring 4 TB": ("w.npz", declared_enormous, [
        "error: {path}: array 'fc.weight' declares 4,398,046,511,104 bytes of data, the archive holds 16"]),
    "strings for a float parameter": ("w.npz", strings, [
        "error: weights in {path} do not fit graph 't' (1 problem):",
        "  not a real-valued tensor: fc.weight holds <U1"]),
    "safetensors header declaring 4 TB": ("w.safetensors", safetensors_header_enormous, [
        "error: cannot read weights file {path}: Error while deserializing header: incomplete metadata, file not "
        "fully covered"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_weights_file_is_a_clean_error(write_spec, run_cli, tmp_path: Path, case: str) -> None:
    name, write, lines = CASES[case]
    path, out = tmp_path / name, tmp_path / "out" / "m.onnx"
    write(path)
    out.parent.mkdir()
    code, _, err = run_cli(["compile", write_spec(SPEC), "--weights", path, "-o", out])
    assert code == 2
    assert "Traceback" not in err
    assert err.rstrip("\n").splitlines() == [line.format(path=path) for line in lines]
    assert list(out.parent.iterdir()) == []


def test_checkpoint_holding_an_object_is_refused(write_spec, run_cli, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path, out = tmp_path / "w.pt", tmp_path / "m.onnx"
    torch.save({"fc.weight": torch.zeros(3, 4), "fc.bias": Path("/")}, path)
    code, _, err = run_cli(["compile", write_spec(SPEC), "--weights", path, "-o", out])
    (line,) = err.rstrip("\n").splitlines()
    assert code == 2 and not out.exists()
    assert line.startswith(f"error: {path}: refused: the checkpoint holds more than tensors and plain containers (")
