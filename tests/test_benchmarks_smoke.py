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
from typing import Any

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


def _round_row(model: str, median_ms: float, speedup: float, error: str | None = None) -> dict[str, Any]:
    return {"threads": 2, "batch": 1, "stride": 2, "model": model, "median_ms": median_ms, "p90_ms": 2 * median_ms,
            "speedup_vs_baseline": speedup, "onnx_nodes": 10, "mb_moved": 1.0, "max_abs_error_vs_torch": 0.0,
            "error": error}


def test_acmix_speed_rounds_give_medians_and_the_range_of_speed_ups(monkeypatch: pytest.MonkeyPatch) -> None:
    """One configuration's rounds: each row's latency, p90 and speed-up are the medians over the rounds, beside the
    lowest and highest speed-up of a round; a model that failed in a round keeps that round's error; the table
    gets the range column. (The smoke run of every benchmark above runs two rounds end to end.)"""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import acmix_speed
    from rich.console import Console

    rounds = [[_round_row("base", 30.0, 1.0), _round_row("ours", 5.0, 6.0), _round_row("broken", 1.0, 30.0)],
              [_round_row("base", 36.0, 1.0), _round_row("ours", 4.0, 9.0), _round_row("broken", 0.0, 0.0, "failed")],
              [_round_row("base", 33.0, 1.0), _round_row("ours", 4.5, 7.0), _round_row("broken", 1.0, 30.0)]]
    base, ours, broken = acmix_speed.over_rounds(rounds)
    assert (base["median_ms"], base["speedup_min"], base["speedup_max"]) == (33.0, 1.0, 1.0)
    assert (ours["median_ms"], ours["p90_ms"], ours["speedup_vs_baseline"]) == (4.5, 9.0, 7.0)
    assert (ours["speedup_min"], ours["speedup_max"], ours["rounds"]) == (6.0, 9.0, 3)
    assert broken["error"] == "failed" and broken["rounds"] == 3
    console = Console(record=True, width=200)
    acmix_speed.render([base, ours, broken], "rounds", console)
    text = console.export_text()
    assert "rounds' range" in text and "6.0-9.0x" in text and "failed" in text


def test_acmix_speed_refuses_zero_rounds() -> None:
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "acmix_speed.py"), "--rounds", "0"], cwd=REPO,
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    assert run.returncode == 2
    assert "--rounds must be at least 1, got 0" in run.stderr


def test_acmix_training_cold_primes_a_fresh_cache_before_the_second_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--cold`` runs each module twice in a child with a new cache; only the second child's cache is primed,
    by :data:`PRIMER` run first in the same environment, and the compiled rows are named after their cache."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import acmix_training

    calls: list[tuple[list[str], dict[str, str]]] = []

    def fake_run(command: list[str], env: dict[str, str], check: bool, stdout: int) -> None:
        calls.append((command, env))
        if "--json" in command:
            rows = [{"mode": "eager"}, {"mode": acmix_training.COMPILED}]
            Path(command[command.index("--json") + 1]).write_text(json.dumps({"rows": rows}))

    monkeypatch.setattr(acmix_training.subprocess, "run", fake_run)
    empty = acmix_training.measure_cold("generated", ["--steps", "1"], acmix_training.EMPTY)
    primed = acmix_training.measure_cold("generated", ["--steps", "1"], acmix_training.PRIMED)
    assert [row["mode"] for row in empty] == ["eager", "torch.compile, empty cache"]
    assert [row["mode"] for row in primed] == ["eager", "torch.compile, primed cache"]
    (first, first_env), (primer, primer_env), (second, second_env) = calls
    assert first[:3] == [sys.executable, acmix_training.__file__, "--steps"]
    assert primer == [sys.executable, "-c", acmix_training.PRIMER]
    assert "--only" in first and "--only" in second and "-c" not in first
    assert primer_env["TORCHINDUCTOR_CACHE_DIR"] == second_env["TORCHINDUCTOR_CACHE_DIR"]
    assert first_env["TORCHINDUCTOR_CACHE_DIR"] != second_env["TORCHINDUCTOR_CACHE_DIR"]
    assert second_env["TORCHINDUCTOR_CACHE_DIR"].startswith(second_env["TMPDIR"])


@pytest.mark.slow
def test_acmix_training_cold_compiles_with_an_empty_and_a_primed_cache(tmp_path: Path) -> None:
    """A tiny block through ``--cold`` for real: one eager row, then one compiled row per cache."""
    out = tmp_path / "cold.json"
    command = [sys.executable, str(REPO / "benchmarks" / "acmix_training.py"), "--cold", "--only", "generated",
               "--channels", "4", "--size", "8", "--batch", "1", "--steps", "1", "--warmup", "0", "--json", str(out)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=2 * TIMEOUT_S)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["mode"] for row in rows] == ["eager", "torch.compile, empty cache", "torch.compile, primed cache"]
    assert all(row["compile_s"] > 0 for row in rows[1:])
