"""Determinism: the same spec gives the same IR text and the same ONNX bytes in any process.

Python randomises ``str`` hashing per process (``PYTHONHASHSEED``), which changes the iteration
order of sets; anything that leaks set order into names, node order or attributes shows up as
a difference between two processes started with different seeds.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HASH_SEEDS = ("0", "987654321")


def entry_specs(folder: Path) -> list[Path]:
    """The spec files of ``folder`` that have a model, so that they build without --entry."""
    return [p for p in sorted(folder.glob("*.net")) if re.search(r"^model ", p.read_text(), re.MULTILINE)]


DEMO_SPECS = entry_specs(REPO / "specs")
MODEL_SPECS = entry_specs(REPO / "specs" / "models")

# Builds a spec's graph with the default weights, runs the passes of the ONNX forms and writes its ONNX
# serialisation to argv[2].
ONNX_SCRIPT = """
import sys
from netdsl.backends.onnx_backend import to_onnx
from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.passes.pipeline import ONNX_FORMS, run_pipeline
graph = run_pipeline(load_graph(sys.argv[1]), "onnx", passes=ONNX_FORMS).graph
with open(sys.argv[2], "wb") as f:
    f.write(to_onnx(graph, initial_weights(graph), opset=17).SerializeToString())
"""


def run_python(args: list[str], hash_seed: str) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` from the repository root with ``PYTHONHASHSEED=hash_seed``."""
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"PYTHONHASHSEED={hash_seed} python {' '.join(args)}\n{proc.stderr}"
    return proc


def ir_texts(spec: Path) -> list[str]:
    rel = str(spec.relative_to(REPO))
    return [run_python(["-m", "netdsl.cli", "show", "--ir", rel], seed).stdout for seed in HASH_SEEDS]


def assert_same_ir(spec: Path) -> None:
    first, second = ir_texts(spec)
    assert first.startswith("graph "), first[:500]
    assert first == second, f"IR of {spec.name} differs between PYTHONHASHSEED={HASH_SEEDS[0]} and {HASH_SEEDS[1]}"


def test_bundled_specs_are_found() -> None:
    assert {"csa.net", "acmix.net"} <= {p.name for p in DEMO_SPECS}


@pytest.mark.parametrize("spec", DEMO_SPECS, ids=lambda p: p.name)
def test_ir_is_identical_across_hash_seeds(spec: Path) -> None:
    assert_same_ir(spec)


@pytest.mark.slow
@pytest.mark.parametrize("spec", MODEL_SPECS, ids=lambda p: p.name)
def test_model_ir_is_identical_across_hash_seeds(spec: Path) -> None:
    assert_same_ir(spec)


@pytest.mark.skipif(importlib.util.find_spec("netdsl.backends.onnx_backend") is None,
                    reason="the ONNX backend (netdsl.backends.onnx_backend) is not part of this build")
@pytest.mark.parametrize("spec", DEMO_SPECS, ids=lambda p: p.name)
def test_onnx_bytes_are_identical_across_hash_seeds(spec: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    outputs = []
    for seed in HASH_SEEDS:
        out = tmp_path / f"model-{seed}.onnx"
        run_python(["-c", ONNX_SCRIPT, str(spec.relative_to(REPO)), str(out)], seed)
        outputs.append(out.read_bytes())
    assert len(onnx.load_model_from_string(outputs[0]).graph.node) > 0
    assert outputs[0] == outputs[1], f"ONNX of {spec.name} differs between hash seeds {HASH_SEEDS}"
