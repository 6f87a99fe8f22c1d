"""What each command imports: ``netdsl check`` type-checks without numpy, so it starts faster than numpy does.

benchmarks/cli_speed.py measures the wall times; these tests keep the import structure behind them:
each case runs the command line in a fresh interpreter where importing the blocked packages fails.
"""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from netdsl.cli import main
from netdsl.initializers import NP_DTYPES
from netdsl.ir import FLOAT_MAX, INT_RANGE

REPO = Path(__file__).resolve().parents[1]
CSA = str(REPO / "specs" / "csa.net")


def run_without(blocked: tuple[str, ...], *argv: str) -> subprocess.CompletedProcess[str]:
    """The command line in a fresh interpreter where ``import`` of each of ``blocked`` fails."""
    code = (f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); from netdsl.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_check_imports_neither_numpy_nor_rich() -> None:
    proc = run_without(("numpy", "rich", "onnx"), "check", CSA)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: csa_demo: 18 ops")


def test_a_spec_with_constants_still_checks(tmp_path: Path) -> None:
    spec = tmp_path / "c.net"
    spec.write_text("model m() {\n  input x: f32[1, 4]\n  output y = x * 0.5 + constant(2.0, shape=[1, 4])\n}\n")
    proc = run_without((), "check", str(spec))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: m: 4 ops")


@pytest.mark.parametrize("dtype", sorted(FLOAT_MAX))
def test_float_ranges_are_numpys(dtype: str) -> None:
    assert FLOAT_MAX[dtype] == float(np.finfo(NP_DTYPES[dtype]).max)


@pytest.mark.parametrize("dtype", sorted(INT_RANGE))
def test_integer_ranges_are_numpys(dtype: str) -> None:
    info = np.iinfo(NP_DTYPES[dtype])
    assert INT_RANGE[dtype] == (info.min, info.max)


def test_a_tensorrt_compile_prints_its_table_without_rich(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    proc = run_without(("rich",), "compile", CSA, "--target", "trt-restricted", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "18/18 nodes covered: 5 confirmed, 13 evidenced, 0 assumed" in proc.stdout and out.exists()


def test_a_tensorrt_compile_of_csa_looks_up_no_onnx_schema_and_draws_no_calibration(tmp_path: Path) -> None:
    # ONNX's first shape inference or schema look-up in a process initialises its whole operator schema registry:
    # the emitted CSA model is fully typed and its nodes set every attribute the checks read. It has no
    # range-limited lowering, so there are no calibration inputs to draw.
    code = ("import sys, onnx.defs, onnx.shape_inference, netdsl.range_check as rc; from netdsl.cli import main\n"
            "def refuse(*args, **kwargs): raise AssertionError('called')\n"
            "onnx.shape_inference.infer_shapes = onnx.defs.get_schema = rc.calibration_batches = refuse\n"
            "sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "m.onnx"
    proc = subprocess.run([sys.executable, "-c", code, "compile", CSA, "--target", "trt-restricted", "-o", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "18/18 nodes covered" in proc.stdout and "shape inference" not in proc.stdout and out.exists()


def test_an_onnx_compile_imports_no_restricted_lowering(tmp_path: Path) -> None:
    # lookup() imports a pass's own module, not the whole registry: the onnx pipeline's 19 passes (and the
    # modules they build on), none of the restricted targets' lowerings.
    restricted_only = ["erf_decompose", "layernorm_decompose", "maxpool_to_elementwise", "softmax_decompose",
                       "sqrt_decompose", "fold_params"]
    code = ("import sys; from netdsl.cli import main; code = main(sys.argv[1:]); "
            f"print(sorted(m for m in {restricted_only!r} if 'netdsl.passes.' + m in sys.modules)); sys.exit(code)")
    out = tmp_path / "m.onnx"
    proc = subprocess.run([sys.executable, "-c", code, "compile", CSA, "--target", "onnx", "-o", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]" and out.exists()


@pytest.mark.parametrize("collecting", [True, False])
def test_garbage_collection_is_as_the_caller_left_it(collecting: bool, capsys: pytest.CaptureFixture[str]) -> None:
    # The command line pauses cyclic collection during its start-up only.
    (gc.enable if collecting else gc.disable)()
    try:
        assert main(["check", CSA]) == 0
        assert gc.isenabled() is collecting
    finally:
        gc.enable()
    assert capsys.readouterr().out.startswith("ok: ")
