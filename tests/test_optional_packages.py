"""Commands that need an optional package say which extra installs it (exit 2), never a traceback.

Each case runs the command line in a fresh interpreter where ``import torch`` fails, as it does in
an environment installed without the ``[torch]`` extra.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CSA = str(REPO / "specs" / "csa.net")
WITHOUT_TORCH = ("import sys; sys.modules['torch'] = None; from netdsl.cli import main; "
                 "sys.exit(main(sys.argv[1:]))")


def run_without_torch(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCH, *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("argv", [
    ("compile", CSA, "--target", "torch", "-o", "m.py"),
    ("receptive-field", CSA, "--entry", "CSA", "--set", "dim=16", "--set", "sr_to=7", "--set", "num_heads=1",
     "--input", "x=1x16x28x28"),
])
def test_torch_commands_name_the_extra(tmp_path: Path, argv: tuple[str, ...]) -> None:
    proc = run_without_torch(tmp_path, *argv)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[0] == (f"error: 'netdsl {argv[0]}' with these options needs the 'torch' "
                                           "package, which is not installed")
    assert 'help: pip install "netdsl[torch]"' in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m.py").exists()


def test_onnx_needs_no_torch(tmp_path: Path) -> None:
    proc = run_without_torch(tmp_path, "compile", CSA, "--target", "onnx", "-o", "m.onnx")
    assert proc.returncode == 0 and (tmp_path / "m.onnx").exists(), proc.stderr
