"""``benchmarks/restricted_cost.py`` smoke-runs with small settings and reports what it claims to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_small_run_reports_both_targets_side_by_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import restricted_cost

    out = tmp_path / "cost.json"
    code = restricted_cost.main(["--models", "cvt13", "--size", "64", "--batch", "1,2", "--runs", "3",
                                 "--warmup", "0", "--threads", "1", "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["batches"] == [1, 2] and data["runs"] == 3
    plain, restricted = data["rows"]
    assert (plain["model"], plain["target"], restricted["target"]) == ("cvt13", "onnx", "trt-restricted")
    assert restricted["covered"] == restricted["total"] and not restricted["refused_ops"]
    assert plain["covered"] < plain["total"]  # the onnx target keeps LayerNormalization, Erf, MatMul
    assert restricted["max_rel_error"] <= 1e-4 and plain["max_rel_error"] == 0.0
    assert restricted["nodes"] > plain["nodes"] > 0 and restricted["peak_bytes"] > 0
    for batch in ("1", "2"):
        timing = restricted["batches"][batch]
        low, high = timing["ratio_ci95"]
        assert timing["median_ms"] > 0 and low <= timing["ratio_to_onnx"] <= high
        assert "ratio_to_onnx" not in plain["batches"][batch]
    assert "cvt13" in capsys.readouterr().out
