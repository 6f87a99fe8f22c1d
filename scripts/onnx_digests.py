"""sha256 of what netdsl emits for every bundled spec and target, to show that a refactoring changes no output.

    python scripts/onnx_digests.py [--targets onnx,trt-restricted,trt-dla,torch] > digests.txt

Compiles the default entry (the file's last model) of every ``specs/*.net``, ``specs/blocks/*.net``
and ``specs/models/*.net`` with the seeded default weights and prints one ``sha256  spec  target``
line per pair: the serialised ONNX model for the ONNX targets (byte for byte what ``netdsl compile``
writes), the generated module source for ``torch``. A spec that does not compile for a target prints
``error: <message>`` in place of the digest, so a changed diagnostic shows up too. Run it before and
after a change and compare the two outputs with ``diff``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from netdsl import api
from netdsl.diagnostics import NetdslError

REPO = Path(__file__).resolve().parents[1]
SPEC_GLOBS = ("specs/*.net", "specs/blocks/*.net", "specs/models/*.net")
DEFAULT_TARGETS = ("onnx", "trt-restricted", "trt-dla", "torch")


def bundled_specs() -> list[Path]:
    """Every bundled spec file, in a fixed order."""
    return [path for pattern in SPEC_GLOBS for path in sorted(REPO.glob(pattern))]


def digest(spec: Path, target: str) -> str:
    """The sha256 of ``spec`` compiled for ``target``, or ``error: ...`` when it does not compile."""
    try:
        graph = api.load(spec)
        if target == "torch":
            data = api.torch_source(graph).encode()
        else:
            data = api.to_onnx(graph, target).SerializeToString()
    except NetdslError as err:
        return f"error: {err.diag.message}"
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="comma-separated targets")
    args = parser.parse_args(argv)
    for spec in bundled_specs():
        for target in args.targets.split(","):
            print(f"{digest(spec, target)}  {spec.relative_to(REPO)}  {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
