"""Weights held in float16 for a float16 compile: what is held, and the model written from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from netdsl.float16_weights import Float16Weights, held


def test_kernels_are_held_in_float16_and_vectors_in_float32() -> None:
    rng = np.random.default_rng(3)
    kernel = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    index = np.arange(12, dtype=np.int64).reshape(3, 4)
    np.testing.assert_array_equal(held(kernel), kernel.astype(np.float16))
    assert held(kernel).dtype == np.float16
    assert held(bias) is bias and held(index) is index


def test_a_kernel_beyond_float16_stays_float32() -> None:
    # Left as it is for the range check to name the parameter with its float32 magnitude.
    kernel = np.full((2, 2), 1e5, dtype=np.float32)
    assert held(kernel) is kernel


def test_taking_empties_the_source_and_assignment_holds() -> None:
    source = {"w": np.ones((4, 4), np.float32), "b": np.zeros(4, np.float32)}
    weights = Float16Weights.taking(source)
    assert source == {} and list(weights) == ["w", "b"]
    assert weights["w"].dtype == np.float16 and weights["b"].dtype == np.float32
    weights["w2"] = np.ones((2, 3), np.float64)
    assert weights["w2"].dtype == np.float16


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-65504, 65504, width=32), min_size=4, max_size=4))
def test_held_is_float16_rounding_within_range(values: list[float]) -> None:
    kernel = np.asarray(values, dtype=np.float32).reshape(2, 2)
    np.testing.assert_array_equal(held(kernel), kernel.astype(np.float16))


def initializers(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_float16_model_holds_the_float32_weights_rounded(repo_root: Path, run_cli, tmp_path: Path) -> None:
    # ResNet-style convs with batch norm: folding computes each kernel from the float16-held one, a second
    # rounding that keeps it within one float16 ulp of the float32 fold rounded once.
    spec = repo_root / "specs" / "models" / "small.net"
    for dtype in ("float32", "float16"):
        code, _, err = run_cli(["compile", spec, "--dtype", dtype, "-o", tmp_path / f"{dtype}.onnx"])
        assert code == 0, err
    full, half = initializers(tmp_path / "float32.onnx"), initializers(tmp_path / "float16.onnx")
    kernels = [name for name, array in full.items() if array.dtype == np.float32 and array.ndim >= 2]
    assert kernels
    for name in kernels:
        rounded = full[name].astype(np.float16)
        assert half[name].dtype == np.float16
        ulp = np.spacing(np.abs(rounded)).astype(np.float32)
        assert np.all(np.abs(half[name].astype(np.float32) - rounded.astype(np.float32)) <= ulp), name
