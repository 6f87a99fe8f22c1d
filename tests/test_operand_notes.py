"""A shape mismatch between two operands notes where each operand was produced."""

from __future__ import annotations

from pathlib import Path

from test_diagnostics import parse_report


def test_broadcast_mismatch_points_at_the_conv_that_made_the_width(run_cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.net").write_text(
        "model M(c: int = 64) {\n"
        "    input x: f32[N=1, c, H=8, W=8]\n"
        "    t = relu(conv(x, 32, kernel=3, padding=1) as proj)\n"
        "    output y = x + t\n"
        "}\n")
    code, out, err = run_cli(["check", "t.net"])
    r = parse_report(err)
    assert code == 2 and out == ""
    assert r.message == "shapes [1, 64, 8, 8] and [1, 32, 8, 8] do not broadcast: axis -3 is 64 vs 32"
    assert r.location == "t.net:4:20" and r.underlined == "t"
    assert r.notes == ["operand 1 (f32[1,64,8,8]) is the input 'x'",
                       "operand 2 (f32[1,32,8,8]) is produced by relu at t.net:3:9"]


def test_operands_from_a_block_point_into_the_block(run_cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.net").write_text(
        "block Narrow(out: int) {\n"
        "    input v: f32[B, C, H, W]\n"
        "    output y = conv(v, out, kernel=1) as proj\n"
        "}\n"
        "model M(c: int = 64) {\n"
        "    input x: f32[N=1, c, H=8, W=8]\n"
        "    output y = x * Narrow(x, 32)\n"
        "}\n")
    code, _, err = run_cli(["check", "t.net"])
    r = parse_report(err)
    assert code == 2 and r.notes[-1] == "operand 2 (f32[1,32,8,8]) is produced by conv at t.net:3:16"
