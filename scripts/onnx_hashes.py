"""Print the sha256 of the ONNX of every bundled spec for every ONNX target.

Each spec's default entry (its last model) is compiled with the seeded default weights; the
output, one ``sha256  target  spec`` line per model, is compared before and after a change
that must not change behaviour (``diff`` the two outputs).

Usage: python scripts/onnx_hashes.py [SPEC ...]   (default: specs/*.net, specs/blocks/*.net, specs/models/*.net)
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from netdsl import api

TARGETS = ("onnx", "trt-restricted", "trt-dla")


def bundled_specs(root: Path) -> list[Path]:
    """The specs whose entry models are compiled: every .net file of specs/, specs/blocks/ and specs/models/."""
    return sorted(p for d in ("specs", "specs/blocks", "specs/models") for p in (root / d).glob("*.net"))


def main(argv: list[str]) -> None:
    """Print one hash line per spec and target, in a stable order."""
    root = Path(__file__).resolve().parent.parent
    specs = [Path(a) for a in argv] or [p.relative_to(root) for p in bundled_specs(root)]
    for spec in specs:
        graph = api.load(spec if spec.is_absolute() else root / spec)
        for target in TARGETS:
            model = api.to_onnx(graph, target)
            digest = hashlib.sha256(model.SerializeToString()).hexdigest()
            print(f"{digest}  {target:14}  {spec}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
