"""``netdsl stats``: parameter counts equal PyTorch's for the generated module; MACs and traffic add up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from netdsl.backends.torch_backend import build_module
from netdsl.cli import main
from netdsl.driver import load_graph
from netdsl.traffic import graph_stats

CASES = [
    ("specs/csa.net", "CSA", ["dim=32", "sr_to=7", "layer_scale_init_value=0.1"], ["x=2x32x14x14"]),
    ("specs/acmix.net", "ACmix", ["in_planes=16", "out_planes=32"], ["x=1x16x14x14"]),
    ("specs/acmix.net", "WindowAttentionACmix", ["dim=32", "window_size=7", "num_heads=4"], ["x=1x14x14x32"]),
]


@pytest.mark.parametrize("spec,entry,sets,inputs", CASES)
def test_params_equal_pytorch_count(spec: str, entry: str, sets: list[str], inputs: list[str]) -> None:
    graph = load_graph(spec, entry, sets, inputs)
    module = build_module(graph)
    torch_params = sum(p.numel() for p in module.parameters())
    assert graph_stats(graph).total.params == torch_params


def test_convselfattn_figures_match_the_reference_totals(tmp_path: Path, capsys) -> None:
    out = tmp_path / "s.json"
    assert main(["stats", "specs/models/convselfattn.net", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    # Totals of the reference backbone at 224x224 (parameters and conv MACs).
    assert data["params"] == 27_638_836
    assert data["macs"] == 4_069_200_384
    stages = {b["name"]: b for b in data["blocks"]}
    assert [stages[f"stages.{i}"]["params"] for i in range(4)] == [292_356, 1_523_040, 9_029_664, 12_521_160]
    assert sum(b["bytes_per_frame"] for b in data["blocks"]) == data["bytes_per_frame"]
    assert "params: 27,638,836" in capsys.readouterr().out


def test_per_frame_figures_do_not_depend_on_batch() -> None:
    one = graph_stats(load_graph("specs/csa.net", "CSA", ["dim=16", "sr_to=7"], ["x=1x16x14x14"])).to_json()
    four = graph_stats(load_graph("specs/csa.net", "CSA", ["dim=16", "sr_to=7"], ["x=4x16x14x14"])).to_json()
    assert four["macs"] == one["macs"] and four["activation_bytes"] == one["activation_bytes"]
    # Weights are read once per batch, so the per-frame traffic shrinks with larger batches.
    assert four["bytes_per_frame"] < one["bytes_per_frame"]
