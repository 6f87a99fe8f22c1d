"""A netdsl process whose standard output is closed by its reader stops quietly: exit 141, no message, no file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_CLI = "import sys; from netdsl.cli import main; sys.exit(main(sys.argv[1:]))"


def test_compile_into_a_closed_pipe_exits_141_without_a_message(tmp_path: Path) -> None:
    out = tmp_path / "csa.onnx"
    proc = subprocess.Popen([sys.executable, "-c", RUN_CLI, "compile", str(REPO / "specs" / "csa.net"),
                             "--target", "trt-restricted", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the coverage table is printed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == ""
    assert list(tmp_path.iterdir()) == []

