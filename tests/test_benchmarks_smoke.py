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


def test_acmix_speed_rounds_give_medians_and_the_range_of_speed_ups(tmp_path: Path) -> None:
    """Rounds (two in the smoke settings, one configuration): each row's speed-up is the median of the rounds'
    speed-ups, within their range, and the table has the range column."""
    out = tmp_path / "out.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "acmix_speed.py"), "--smoke", "--json", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert run.returncode == 0, f"acmix_speed.py failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    document = json.loads(out.read_text())
    assert document["config"]["rounds"] == 2
    rows = document["rows"]
    assert [r["model"] for r in rows] == ["reference (unfold + sum)", "reference, einsum sums", "netdsl onnx",
                                          "netdsl trt-restricted"]
    for row in rows:
        assert row["rounds"] == 2
        assert row["speedup_min"] <= row["speedup_vs_baseline"] <= row["speedup_max"]
    assert rows[0]["speedup_min"] == rows[0]["speedup_max"] == 1.0  # the baseline against itself, every round
    assert "rounds' range" in run.stdout


def test_acmix_speed_refuses_zero_rounds() -> None:
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "acmix_speed.py"), "--rounds", "0"], cwd=REPO,
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    assert run.returncode == 2
    assert "--rounds must be at least 1, got 0" in run.stderr
