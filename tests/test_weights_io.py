"""Weight files: each format loads by name with dtype casts; one error lists every problem; saves are atomic."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netdsl.atomic_write import atomic_paths, atomic_write_text
from netdsl.backends.weights_io import WeightsError, load_weights, save_safetensors
from netdsl.builder import GraphBuilder
from netdsl.ir import Graph, Init, TensorType


def small_graph() -> Graph:
    b = GraphBuilder("Small")
    x = b.input("x", TensorType("f32", (1, 3, 4, 4)))
    w = b.param("a.weight", TensorType("f32", (8, 3, 1, 1)), Init("uniform_fan_in", (("fan_in", 3),)))
    bias = b.param("a.bias", TensorType("f32", (8,)), Init("zeros"))
    b.param("bn.num_batches_tracked", TensorType("i64", ()), Init("zeros"), kind="buffer")
    b.output(b.op("conv", [x, w, bias], stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1))
    return b.graph


def reference_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "a.weight": rng.standard_normal((8, 3, 1, 1)).astype(np.float32),
        "a.bias": np.zeros(8, np.float32),
        "bn.num_batches_tracked": np.array(12, np.int64),
    }


def assert_same(loaded: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(loaded) == list(expected)
    for name, value in expected.items():
        assert loaded[name].dtype == value.dtype, name
        np.testing.assert_array_equal(loaded[name], value)


def test_safetensors_round_trip_casts_to_parameter_dtype(tmp_path: Path) -> None:
    expected = reference_weights()
    as_f64 = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in expected.items()}
    save_safetensors(as_f64, tmp_path / "w.safetensors")
    assert_same(load_weights(tmp_path / "w.safetensors", small_graph()), expected)


def test_npz(tmp_path: Path) -> None:
    expected = reference_weights()
    np.savez(tmp_path / "w.npz", **expected)
    assert_same(load_weights(tmp_path / "w.npz", small_graph()), expected)


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_torch_checkpoints(tmp_path: Path, wrapper: str | None, suffix: str) -> None:
    torch = pytest.importorskip("torch")
    expected = reference_weights()
    state = {k: torch.from_numpy(v.copy()) for k, v in expected.items()}
    state["a.bias"] = state["a.bias"].to(torch.bfloat16)  # exact: the biases are zero
    path = tmp_path / f"w{suffix}"
    torch.save(state if wrapper is None else {wrapper: state, "epoch": 3}, path)
    assert_same(load_weights(path, small_graph()), expected)


def test_torch_is_imported_only_for_torch_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = "import sys, netdsl.backends.weights_io; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
    monkeypatch.setitem(sys.modules, "torch", None)  # as if PyTorch were not installed
    with pytest.raises(WeightsError, match=r"reading \.pt weights needs PyTorch"):
        load_weights(tmp_path / "w.pt", small_graph())


def test_every_problem_in_one_error(tmp_path: Path) -> None:
    weights = reference_weights()
    del weights["a.bias"]
    weights["a.weight"] = np.zeros((8, 3), np.float32)
    weights["foo"] = np.zeros(2, np.float32)
    np.savez(tmp_path / "w.npz", **weights)
    with pytest.raises(WeightsError) as err:
        load_weights(tmp_path / "w.npz", small_graph())
    problems = [
        "missing: a.bias [8]",
        "unexpected: foo",
        "shape mismatch: a.weight expects [8,3,1,1], file has [8,3]",
    ]
    assert err.value.problems == problems
    assert str(err.value) == (
        f"weights in {tmp_path / 'w.npz'} do not fit graph 'Small' (3 problems):\n"
        "  missing: a.bias [8]\n"
        "  unexpected: foo\n"
        "  shape mismatch: a.weight expects [8,3,1,1], file has [8,3]"
    )


def test_non_finite_values_are_reported(tmp_path: Path) -> None:
    weights = reference_weights()
    weights["a.weight"][0, 0, 0, 0] = np.nan
    weights["a.weight"][1, 0, 0, 0] = np.nan
    weights["a.bias"] = np.full(8, 1e300)  # finite in float64, Inf once cast to the f32 parameter
    save_safetensors(weights, tmp_path / "w.safetensors")
    with pytest.raises(WeightsError) as err:
        load_weights(tmp_path / "w.safetensors", small_graph())
    assert err.value.problems == ["non-finite: a.weight has 2 NaN, 0 Inf", "non-finite: a.bias has 0 NaN, 8 Inf"]
    assert "(2 problems)" in str(err.value)


def test_unreadable_and_unknown_files(tmp_path: Path) -> None:
    (tmp_path / "w.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match=r"cannot read weights file .*w\.safetensors"):
        load_weights(tmp_path / "w.safetensors", small_graph())
    with pytest.raises(WeightsError, match=r"unsupported weights format '\.bin'"):
        load_weights(tmp_path / "w.bin", small_graph())
    with pytest.raises(WeightsError, match="cannot read weights file"):
        load_weights(tmp_path / "absent.npz", small_graph())


def test_failed_save_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError("disk full")

    # The bytes are written to a staged file; the failure comes before it is published.
    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_safetensors(reference_weights(), tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_failed_atomic_write_keeps_old_content_and_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_paths(target) as (tmp,):
            tmp.write_text("half of the new")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert list(tmp_path.iterdir()) == [target]
