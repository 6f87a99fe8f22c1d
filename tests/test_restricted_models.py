"""Restricted mode takes the models and blocks engineers bring, as written (issue 14's must-show).

For each case, ``netdsl compile`` for the restricted target (``trt-restricted``, and ``trt-dla``
for ConvNeXt-T, Swin-T, CvT-13 and the ViT block) writes a model whose every node the target's
profile covers, and that model's ONNX Runtime output equals the ``onnx`` target's within 1e-4
relative to the output's largest magnitude (float32, a random input, the same perturbed weights
loaded by ``--weights``). The lowered models also pass the float16 range check (``--dtype
float16``). Small configurations run in the fast suite; the full models at 224x224 are marked slow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_models import SMALL_CONVNEXT, SMALL_CVT, SMALL_SWIN, perturbed_weights

from netdsl.coverage.checker import check_coverage
from netdsl.coverage.profile import load_profile
from netdsl.driver import load_graph
from netdsl.ir import Graph

SPECS = Path(__file__).resolve().parents[1] / "specs"
TOLERANCE = 1e-4  # relative to the largest magnitude of the onnx target's output


@dataclass(frozen=True)
class Case:
    """A spec under ``specs/``, its entry, ``--set`` flags and input shape (None: the spec's defaults)."""

    spec: str
    entry: str | None = None
    sets: dict[str, object] = field(default_factory=dict)
    shape: tuple[int, ...] | None = None

    def sets_flags(self) -> list[str]:
        """``KEY=VALUE`` for every ``--set``."""
        return [f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in self.sets.items()]

    def input_flags(self) -> list[str]:
        """``x=SHAPE`` when the case binds the input shape."""
        return ["x=" + "x".join(map(str, self.shape))] if self.shape else []

    def flags(self) -> list[str]:
        """The command line's spec flags selecting this case."""
        flags = ["--entry", self.entry] if self.entry else []
        flags += [f for s in self.sets_flags() for f in ("--set", s)]
        return flags + [f for i in self.input_flags() for f in ("--input", i)]

    def graph(self) -> Graph:
        """The elaborated graph of the case."""
        return load_graph(SPECS / self.spec, self.entry, self.sets_flags(), self.input_flags())


SMALL = {
    "convnext_tiny": Case("models/convnext_tiny.net", sets=SMALL_CONVNEXT, shape=(1, 3, 64, 64)),
    "swin_tiny": Case("models/swin_tiny.net", sets=SMALL_SWIN, shape=(1, 3, 64, 64)),
    "cvt13": Case("models/cvt13.net", sets=SMALL_CVT, shape=(2, 3, 64, 64)),
    "vit_block": Case("blocks/vit.net", sets={"dim": 48, "num_heads": 3}, shape=(1, 17, 48)),
    "cbam": Case("blocks/cbam.net", sets={"channels": 32, "reduction": 4}, shape=(1, 32, 12, 12)),
    "nonlocal_matmul": Case("blocks/nonlocal.net", "nonlocal_matmul", {"channels": 16, "size": 8, "inner": 8}),
    "nonlocal_attention": Case("blocks/nonlocal.net", "nonlocal_attention", {"channels": 16, "size": 8, "inner": 8}),
}
FULL = {
    "convnext_tiny": Case("models/convnext_tiny.net"),
    "swin_tiny": Case("models/swin_tiny.net"),
    "cvt13": Case("models/cvt13.net"),
    "vit_block": Case("blocks/vit.net"),
    "cbam": Case("blocks/cbam.net"),
    "nonlocal_matmul": Case("blocks/nonlocal.net", "nonlocal_matmul"),
    "nonlocal_attention": Case("blocks/nonlocal.net", "nonlocal_attention"),
}
# (case name, restricted target): every case for trt-restricted; ConvNeXt-T and the token-sequence models
# (rank-4 views for DLA) for trt-dla too
DLA = ("convnext_tiny", "swin_tiny", "cvt13", "vit_block")
RUNS = [(name, "trt-restricted") for name in SMALL] + [(name, "trt-dla") for name in DLA]


def _compile(run_cli: Callable, case: Case, target: str, out: Path, *extra: str) -> None:
    code, stdout, err = run_cli(["compile", SPECS / case.spec, "--target", target, "-o", out, *case.flags(), *extra])
    assert code == 0, f"{case.spec} for {target}:\n{err}\n{stdout[-4000:]}"
    assert out.is_file()


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    return out


def check_restricted(run_cli: Callable, tmp_path: Path, case: Case, target: str) -> None:
    """Compile ``case`` for ``onnx`` and for ``target`` with the same weights; covered, and the same outputs."""
    graph = case.graph()
    weights = tmp_path / "weights.npz"
    np.savez(weights, **perturbed_weights(graph))
    plain, lowered = tmp_path / "plain.onnx", tmp_path / f"{target}.onnx"
    _compile(run_cli, case, "onnx", plain, "--weights", weights)
    _compile(run_cli, case, target, lowered, "--weights", weights)
    report = check_coverage(onnx.load(str(lowered)), load_profile(target))
    assert report.covered, report.violation_lines()
    x = np.random.default_rng(11).standard_normal(graph.values[graph.inputs[0]].shape).astype(np.float32)
    expected, actual = _run(plain, x), _run(lowered, x)
    assert actual.shape == expected.shape
    scale = float(np.abs(expected).max())
    assert float(np.abs(actual - expected).max()) <= TOLERANCE * scale


@pytest.mark.parametrize(("name", "target"), RUNS, ids=[f"{n}-{t}" for n, t in RUNS])
def test_small_configuration_compiles_covered_and_equals_the_onnx_target(
        run_cli: Callable, tmp_path: Path, name: str, target: str) -> None:
    check_restricted(run_cli, tmp_path, SMALL[name], target)


@pytest.mark.parametrize(("name", "target"), RUNS, ids=[f"{n}-{t}" for n, t in RUNS])
def test_lowered_small_configuration_passes_the_float16_range_check(
        run_cli: Callable, tmp_path: Path, name: str, target: str) -> None:
    out = tmp_path / "half.onnx"
    _compile(run_cli, SMALL[name], target, out, "--dtype", "float16")
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


@pytest.mark.slow
@pytest.mark.parametrize(("name", "target"), RUNS, ids=[f"{n}-{t}" for n, t in RUNS])
def test_full_model_compiles_covered_and_equals_the_onnx_target(
        run_cli: Callable, tmp_path: Path, name: str, target: str) -> None:
    check_restricted(run_cli, tmp_path, FULL[name], target)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "target"), RUNS, ids=[f"{n}-{t}" for n, t in RUNS])
def test_lowered_full_model_passes_the_float16_range_check(
        run_cli: Callable, tmp_path: Path, name: str, target: str) -> None:
    _compile(run_cli, FULL[name], target, tmp_path / "half.onnx", "--dtype", "float16")
