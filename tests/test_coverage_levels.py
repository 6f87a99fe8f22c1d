"""Evidence levels of coverage verdicts: per-level counts, ``--strict``, JSON, and the 100-column table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest

from netdsl import api
from netdsl.coverage.checker import check_coverage
from netdsl.coverage.profile import LEVELS, load_profile
from netdsl.coverage.report import TABLE_WIDTH, CoverageReport

REPO = Path(__file__).resolve().parents[1]
CSA = REPO / "specs" / "csa.net"
CBAM = REPO / "specs" / "blocks" / "cbam_shared.net"
RESTRICTED = load_profile("trt-restricted")


def levels_of(model_path: Path) -> dict[str, int]:
    """Covered nodes per level, read off the profile rule of each node's op."""
    counts = dict.fromkeys(LEVELS, 0)
    for node in onnx.load(str(model_path)).graph.node:
        counts[RESTRICTED.rule_for(node.op_type).level] += 1
    return counts


def test_compile_prints_the_counts_per_level(run_cli, tmp_path: Path) -> None:
    out_file = tmp_path / "csa.onnx"
    code, out, err = run_cli(["compile", CSA, "--target", "trt-restricted", "-o", out_file])
    assert code == 0, err
    counts = levels_of(out_file)
    total = sum(counts.values())
    levels = ", ".join(f"{counts[level]} {level}" for level in LEVELS)
    assert f"{total}/{total} nodes covered: {levels}; 0 graph-level violation(s)" in out
    assert counts["assumed"] == 0 and counts["evidenced"] > 0  # CSA runs on the reference model's layers


def test_strict_accepts_csa(run_cli, tmp_path: Path) -> None:
    out_file = tmp_path / "csa.onnx"
    code, _, err = run_cli(["compile", CSA, "--target", "trt-restricted", "--strict", "-o", out_file])
    assert code == 0 and out_file.exists(), err


def test_strict_refuses_assumed_rules_and_lists_them(run_cli, tmp_path: Path) -> None:
    lenient = tmp_path / "cbam.onnx"
    assert run_cli(["compile", CBAM, "--target", "trt-restricted", "-o", lenient])[0] == 0
    assumed: dict[str, int] = {}
    for node in onnx.load(str(lenient)).graph.node:
        if RESTRICTED.rule_for(node.op_type).level == "assumed":
            assumed[node.op_type] = assumed.get(node.op_type, 0) + 1
    assert assumed  # CBAM's max reductions lower to Slice/Sub/Relu chains, its spatial gate concatenates
    strict = tmp_path / "strict.onnx"
    code, _, err = run_cli(["compile", CBAM, "--target", "trt-restricted", "--strict", "-o", strict])
    assert code == 2 and not strict.exists()
    assert f"--strict: {sum(assumed.values())} of " in err and f"allowed only by {len(assumed)} assumed rule(s)" in err
    listed = re.findall(r"= note: (\w+) \((\d+) nodes?\) is allowed by assumption: ", err)
    assert {op: int(n) for op, n in listed} == assumed
    assert "Traceback" not in err


def test_coverage_command_strict_and_json(run_cli, tmp_path: Path) -> None:
    model = tmp_path / "cbam.onnx"
    assert run_cli(["compile", CBAM, "--target", "trt-restricted", "-o", model])[0] == 0
    report_file = tmp_path / "report.json"
    assert run_cli(["coverage", model, "--json", report_file])[0] == 0
    data = json.loads(report_file.read_text())
    by_level = {level: sum(n["covered"] and n["level"] == level for n in data["nodes"]) for level in LEVELS}
    assert data["summary"]["levels"] == by_level == levels_of(model)
    assert {n["op"]: n["level"] for n in data["nodes"]}["Sigmoid"] == "evidenced"
    code, _, err = run_cli(["coverage", model, "--strict"])
    assert code == 2 and "--strict:" in err


@pytest.mark.parametrize("spec", [CBAM, REPO / "specs" / "models" / "convnext_tiny.net"])
def test_table_fits_100_columns_one_line_per_node(run_cli, tmp_path: Path, spec: Path) -> None:
    _, out, _ = run_cli(["compile", spec, "--target", "trt-restricted", "-o", tmp_path / "m.onnx"])
    lines = out.split("\nwrote ")[0].splitlines()  # the table, its footnotes and the summary
    assert max(len(line.rstrip()) for line in lines) <= TABLE_WIDTH
    rows = [line for line in lines if re.match(r"\s*\d+\s+[A-Z]\w*\s", line)]
    model = restricted_report(spec)
    assert [int(r.split()[0]) for r in rows] == list(range(model.total))
    # Every reason is a numbered footnote under the table, referenced from its rows.
    text = " ".join(" ".join(lines).split())
    for n in model.nodes:
        if not n.covered:
            number = re.search(r"\[(\d+)\]\s*$", rows[n.index]).group(1)
            assert f"[{number}] {' '.join(n.reasons[0].split())}" in text


def restricted_report(spec: Path) -> CoverageReport:
    """The coverage report of the spec's default entry lowered for trt-restricted."""
    return check_coverage(api.to_onnx(api.load(spec), "trt-restricted"), RESTRICTED)


def test_wide_table_has_node_names_and_reasons(run_cli, tmp_path: Path) -> None:
    # Only CSE and gelu's ONNX form run, so the layer norms stay and are refused with their rewrite.
    _, out, _ = run_cli(["compile", REPO / "specs" / "models" / "convnext_tiny.net", "--target", "trt-restricted",
                         "--passes", "cse,gelu_to_erf", "--wide", "-o", tmp_path / "m.onnx"])
    assert "stages.0.0/layernorm" in out and "suggested rewrite" in out
