"""Receptive fields measured by gradients: CSA is global, a 3x3 conv block is local, ACmix reaches its window."""

from __future__ import annotations

import pytest

from netdsl.analysis.receptive_field import measure
from netdsl.cli import main
from netdsl.driver import load_graph


def test_one_csa_block_reaches_every_input_position() -> None:
    g = load_graph("specs/csa.net", "CSA", ["dim=16", "sr_to=7", "num_heads=1"], ["x=1x16x28x28"])
    rf = measure(g)
    assert rf.fraction == 1.0
    # Also from a corner: the gate is global, so the far corner still influences it.
    assert measure(g, (0, 0)).fraction == 1.0


def test_conv_block_reaches_only_its_window() -> None:
    g = load_graph("specs/baselines.net", "ConvBlock", ["dim=16"], ["x=1x16x28x28"])
    rf = measure(g)
    assert rf.extent == (3, 3)
    assert int(rf.reached.sum()) == 9
    g5 = load_graph("specs/baselines.net", "ConvBlock", ["dim=16", "kernel=5"], ["x=1x16x28x28"])
    assert measure(g5).extent == (5, 5)


@pytest.mark.parametrize("kernel_att", [3, 7])
def test_acmix_reaches_its_attention_window(kernel_att: int) -> None:
    g = load_graph("specs/acmix.net", "ACmix", ["in_planes=8", "out_planes=8", f"kernel_att={kernel_att}"],
                   ["x=1x8x20x20"])
    rf = measure(g)
    # The attention window (kernel_att) contains the conv path's 3x3 window.
    assert rf.extent == (kernel_att, kernel_att)
    assert int(rf.reached.sum()) == kernel_att * kernel_att


def test_cli_prints_fraction_and_writes_png(tmp_path, capsys) -> None:
    png = tmp_path / "rf.png"
    code = main(["receptive-field", "specs/csa.net", "--entry", "CSA", "--set", "dim=8", "--set", "sr_to=7",
                 "--set", "num_heads=1", "--input", "x=1x8x14x14", "--png", str(png)])
    out = capsys.readouterr().out
    assert code == 0
    assert "196 of 196 input positions (100.0%)" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_position_outside_output(capsys) -> None:
    code = main(["receptive-field", "specs/baselines.net", "--entry", "ConvBlock", "--set", "dim=4",
                 "--input", "x=1x4x8x8", "--position", "9,0"])
    assert code == 2
    assert "position (9, 0) is outside the 8x8 output" in capsys.readouterr().err
