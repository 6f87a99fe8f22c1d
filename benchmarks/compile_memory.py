"""Peak memory of ``netdsl compile`` against the size of the model it writes.

    python benchmarks/compile_memory.py [--json OUT] [--models a,b] [--no-deep | --deep-only] [--dtype float16]
                                        [--calib-samples N]

Compiles every bundled model (``specs/models/*.net``, each file's last model) and a 10x deep
ConvNeXt-T (``--set depths=30,30,90,30``) for the ``onnx`` target, each in its own subprocess,
and reads the subprocess's peak resident set (``ru_maxrss`` of the finished child). Prints a
table and, with ``--json``, writes the rows.

The ratio is ``(peak - baseline) / model size``: the baseline is the peak of ``netdsl check`` on
the same spec in a process that has first imported the modules ``compile`` loads (onnx, the
ONNX writer and, for float16, the range check's progress bar and BLAS thread limit), measured the
same way: the interpreter, its libraries and the elaborated graph, without weights. The raw
peak / size ratio is printed too; for small models the baseline dominates it. The bound
(ratio <= 2, the exit status) is judged on models of at least ``JUDGED_MIN_BYTES``.

``--calib-samples N`` passes ``--calib-samples N`` to a float16 compile: its range check runs the
interpreter on one calibration batch after another, so fewer samples take less time for the same
peak but for the inputs themselves (each sample of a 224x224 RGB model is 0.6 MB); the 10x deep
variant's eight-sample range check takes hours on a busy 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "specs" / "models"
DEEP = ("convnext_tiny.net", ["--set", "depths=30,30,90,30"], "convnext_tiny 10x deep")
COMPILE_MODULES = ("onnx", "netdsl.backends.onnx_backend", "netdsl.backends.onnx_stream")
"""What ``compile`` imports beyond ``check`` (the ONNX writer): loaded in the baseline process too."""
RANGE_CHECK_MODULES = ("rich.progress", "threadpoolctl")
"""What a float16 ``compile`` imports besides for its range check (progress bar, BLAS thread limit): loaded in the
baseline process of float16 rows too."""
JUDGED_MIN_BYTES = 10_000_000
"""Models below this size are listed but not held to the bound: their whole excess over the baseline
(the lowered IR, the ONNX message, ~1 MB) is within how much the baseline itself varies."""


def peak_rss(argv: list[str], preload: tuple[str, ...] = ()) -> int:
    """Peak resident bytes of ``netdsl ARGV`` in a fresh subprocess that first imports ``preload``
    (Linux: ru_maxrss in KiB).

    Each runs under a small launcher process, so that its RUSAGE_CHILDREN holds that one command only.
    """
    launcher = ("import resource, subprocess, sys; "
                "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    command = "".join(f"import {module}; " for module in preload) + "import sys; from netdsl.cli import main; " \
        "sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", launcher, sys.executable, "-c", command, *argv],
                          capture_output=True, text=True, check=True)
    return int(done.stdout.strip()) * 1024


def output_bytes(path: Path) -> int:
    """Size of a written model, with its external data file if it has one."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def measure(spec: Path, extra: list[str], label: str, folder: Path, dtype: str,
            calib_samples: int | None = None) -> dict:
    """One row: the compile's peak, the baseline's, the written model's size and their ratios."""
    out = folder / "model.onnx"
    baseline = peak_rss(["check", str(spec), *extra],
                        COMPILE_MODULES + (RANGE_CHECK_MODULES if dtype == "float16" else ()))
    samples = ["--calib-samples", str(calib_samples)] if calib_samples and dtype == "float16" else []
    peak = peak_rss(["compile", str(spec), *extra, "--target", "onnx", "--dtype", dtype, *samples, "-o", str(out)])
    size = output_bytes(out)
    for p in folder.iterdir():
        p.unlink()
    return {"model": label, "model_bytes": size, "peak_rss_bytes": peak, "baseline_rss_bytes": baseline,
            "ratio": (peak - baseline) / size, "raw_ratio": peak / size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--models", help="comma-separated spec file stems (default: all bundled models)")
    parser.add_argument("--no-deep", action="store_true", help="leave out the 10x deep ConvNeXt-T")
    parser.add_argument("--deep-only", action="store_true", help="only the 10x deep ConvNeXt-T")
    parser.add_argument("--calib-samples", type=int, metavar="N", help="float16: samples of the range check")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="compile --dtype")
    parser.add_argument("--smoke", action="store_true", help="smallest settings: the small model only, no deep variant")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.no_deep = "small", True
    bundled = [p.stem for p in sorted(MODELS.glob("*.net")) if p.stem != "common"]  # common.net: shared blocks only
    stems = args.models.split(",") if args.models else bundled
    unknown = [stem for stem in stems if stem not in bundled]
    if unknown:
        parser.error(f"--models: no bundled model {', '.join(map(repr, unknown))} (bundled: {', '.join(bundled)})")
    cases = [] if args.deep_only else [(MODELS / f"{stem}.net", [], stem) for stem in stems]
    if not args.no_deep:
        cases.append((MODELS / DEEP[0], DEEP[1], DEEP[2]))
    rows = []
    print(f"{'model':28} {'model MB':>9} {'peak MB':>8} {'base MB':>9} {'(peak-base)/size':>18} {'peak/size':>10}")
    with tempfile.TemporaryDirectory(prefix="netdsl-memory-") as tmp:
        for spec, extra, label in cases:
            row = measure(spec, extra, label, Path(tmp), args.dtype, args.calib_samples)
            rows.append(row)
            print(f"{label:28} {row['model_bytes'] / 1e6:9.1f} {row['peak_rss_bytes'] / 1e6:8.0f} "
                  f"{row['baseline_rss_bytes'] / 1e6:9.0f} {row['ratio']:18.2f} {row['raw_ratio']:10.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"python": sys.version.split()[0], "cpu_count": os.cpu_count(),
                                         "dtype": args.dtype, "calib_samples": args.calib_samples, "rows": rows},
                                        indent=2) + "\n")
    judged = [r["ratio"] for r in rows if r["model_bytes"] >= JUDGED_MIN_BYTES]
    worst = max(judged, default=0.0)
    print(f"largest (peak - base) / size of the {len(judged)} models of {JUDGED_MIN_BYTES / 1e6:g} MB or more: "
          f"{worst:.2f}")
    return 0 if worst <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
