"""Every script under ``benchmarks/`` runs to completion with its smallest settings (``--smoke``).

Scripts are found by globbing, so a new benchmark is covered as soon as it exists; the convention each
must follow (a ``--smoke`` flag, a table and ``--json OUT``) is in ``benchmarks/README.md``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "benchmarks").glob("*.py"))
TIMEOUT_S = 300  # a hung script fails instead of stalling CI


def test_benchmarks_are_found() -> None:
    assert SCRIPTS, "no scripts under benchmarks/"


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_benchmark_runs_with_smoke_settings(script: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    run = subprocess.run([sys.executable, str(script), "--smoke", "--json", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    assert run.returncode == 0, f"{script.name} --smoke failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert json.loads(out.read_text()), f"{script.name} --smoke --json wrote an empty document"
    # The dynamo exporter's notice, once per torchvision op at every export, is filtered out (acmix_speed.py).
    assert "torchvision is not installed" not in run.stderr


def test_model_comparison_adds_the_exported_baselines(tmp_path: Path) -> None:
    """``--torch-export`` (PyTorch's export of netdsl's generated module) and, where timm is installed, ``--timm``
    (timm's own model exported) each add a labelled row to the comparison and to the profile."""
    out = tmp_path / "out.json"
    argv = [sys.executable, str(REPO / "benchmarks" / "model_comparison.py"), "--smoke", "--json", str(out),
            "--torch-export", "convnext_tiny"]
    expected = {"convselfattn", "convnext_tiny", "convnext_tiny_torch_export"}
    if importlib.util.find_spec("timm") is not None:
        argv += ["--timm", "convnext_atto"]
        expected.add("convnext_atto_timm_export")
    run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert run.returncode == 0, f"model_comparison.py failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    results = json.loads(out.read_text())
    assert {model["name"] for model in results["comparison"]["models"]} == expected
    assert set(results["profile"]) == expected
    assert "convnext_tiny: torch.onnx.export vs netdsl, largest output difference" in run.stdout
