"""SIGINT and SIGTERM sent to real netdsl processes while they write: one line, exit 130/143, no file left.

Each command runs in a subprocess whose ``os.replace`` (the step that publishes a staged output,
see :mod:`netdsl.atomic_write`) first marks that the outputs are staged and then waits: the test
sends the signal at that moment, the worst one, when complete temporary files exist.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CSA = REPO / "specs" / "csa.net"

# argv[1]: the marker file; argv[2]: "cli" or a script path; the rest: that program's arguments.
STAGED_THEN_WAIT = """
import os, runpy, sys, time
marker, program = sys.argv[1], sys.argv[2]
real_replace = os.replace

def replace_after_a_wait(src, dst):
    open(marker, "w").close()
    time.sleep(600)
    real_replace(src, dst)

os.replace = replace_after_a_wait
if program == "cli":
    from netdsl.cli import main
    sys.exit(main(sys.argv[3:]))
sys.argv = sys.argv[2:]
runpy.run_path(program, run_name="__main__")
"""


def _stop_while_staged(argv: list[str], program: str, out: Path, signum: signal.Signals,
                       tmp_path: Path) -> subprocess.CompletedProcess[str]:
    marker = tmp_path / "staged"
    # SIGINT as at a terminal: a shell starts background jobs with SIGINT ignored, and a child keeps that, so a
    # test run launched in the background would otherwise send Ctrl-C to a process told to ignore it.
    proc = subprocess.Popen([sys.executable, "-c", STAGED_THEN_WAIT, str(marker), program, *argv], cwd=out,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    started = time.monotonic()
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() - started > 600:
            proc.kill()
            stdout, stderr = proc.communicate()
            pytest.fail(f"the outputs were never staged (exit {proc.returncode}):\n{stdout}\n{stderr}")
        time.sleep(0.05)
    assert any(out.iterdir()), "a staged output should exist when the signal is sent"
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def _assert_stopped(done: subprocess.CompletedProcess[str], signum: signal.Signals, out: Path) -> None:
    assert done.returncode == 128 + signum.value, done.stderr
    assert done.stderr == f"interrupted by {signum.name}: stopped, nothing partial was left behind\n"
    assert "Traceback" not in done.stdout
    assert sorted(p.name for p in out.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_compile(tmp_path: Path, signum: signal.Signals) -> None:
    out = tmp_path / "out"
    out.mkdir()
    done = _stop_while_staged(["compile", str(CSA), "--target", "onnx", "-o", "csa.onnx"], "cli", out, signum,
                              tmp_path)
    _assert_stopped(done, signum, out)


def _compiled_csa(folder: Path) -> Path:
    from netdsl.cli import main

    path = folder / "csa.onnx"
    assert main(["compile", str(CSA), "--target", "trt-restricted", "--dtype", "float32", "-o", str(path)]) == 0
    return path


def test_quantize(tmp_path: Path) -> None:
    model = _compiled_csa(tmp_path)
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((2, 64, 28, 28)).astype(np.float32))
    out = tmp_path / "out"
    out.mkdir()
    done = _stop_while_staged(["quantize", str(model), "--calib", str(calib), "--samples", "2", "--method", "minmax",
                               "-o", "q.onnx"], "cli", out, signal.SIGTERM, tmp_path)
    _assert_stopped(done, signal.SIGTERM, out)


def test_bench(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    done = _stop_while_staged(["bench", str(CSA), "--batch", "1", "--warmup", "1", "--runs", "2", "--no-size",
                               "--json", "bench.json"], "cli", out, signal.SIGINT, tmp_path)
    _assert_stopped(done, signal.SIGINT, out)


@pytest.mark.slow
def test_train(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "out"
    out.mkdir()
    argv = ["--spec", str(REPO / "specs" / "models" / "small.net"), "--entry", "conv_small", "--epochs", "1",
            "--out", "run", "--no-progress"]
    done = _stop_while_staged(argv, str(REPO / "examples" / "train.py"), out, signal.SIGTERM, tmp_path)
    assert done.returncode == 143, done.stderr
    assert done.stderr.endswith("interrupted by SIGTERM: stopped, nothing partial was left behind\n")
    leftovers = [p.relative_to(out) for p in out.rglob("*") if p.is_file()]
    assert leftovers == []


def test_sigterm_handler_is_restored_after_a_command() -> None:
    from netdsl.cli import main

    before = signal.getsignal(signal.SIGTERM)
    assert main(["check", str(CSA)]) == 0
    assert signal.getsignal(signal.SIGTERM) is before
