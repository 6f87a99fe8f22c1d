"""DLA coverage of every bundled spec: each model of each ``specs/**/*.net`` compiled for ``trt-dla``.

Per model: the ONNX node count, how many nodes the ``trt-dla`` profile covers, and the refused
ONNX ops with the limit each one breaks (a count per op and reason). Prints a table; ``--json
OUT`` writes the rows. Every bundled model is built with its defaults. The table in
docs/restricted.md ("DLA shaping") came from

    python benchmarks/dla_coverage.py [--specs specs/models/swin_tiny.net,...] [--json OUT] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from netdsl import api
from netdsl.atomic_write import atomic_write_text
from netdsl.diagnostics import NetdslError

REPO = Path(__file__).resolve().parents[1]
MODEL_LINE = re.compile(r"^model\s+(\w+)", re.MULTILINE)
SMOKE = ("specs/baselines.net", "specs/blocks/cbam.net")
DIGITS = re.compile(r"'[^']*'|\d+")


def models_of(spec: Path) -> list[str]:
    """The names of the models a spec file defines, in file order."""
    return MODEL_LINE.findall(spec.read_text())


def survey(spec: Path, model: str) -> dict[str, Any]:
    """The ``trt-dla`` coverage row of ``model`` in ``spec`` (an ``error`` entry when it does not compile)."""
    row: dict[str, Any] = {"spec": str(spec.relative_to(REPO)), "model": model}
    try:
        graph = api.load(spec, entry=model)
        report = api.coverage(api.to_onnx(graph, "trt-dla"), "trt-dla")
    except NetdslError as err:
        row["error"] = err.diag.message
        return row
    # numbers stripped from the reasons: one count per op and kind of limit, not per tensor
    refused = Counter(f"{n.op} ({DIGITS.sub('#', n.reasons[0]) if n.reasons else 'unlisted'})"
                      for n in report.violations())
    row.update(covered=report.covered_count, total=report.total, refused=dict(refused))
    return row


def table(rows: list[dict[str, Any]]) -> Table:
    """The rows as a rich table: spec, model, covered/total, refused ops."""
    t = Table(title="trt-dla coverage of the bundled specs")
    for column in ("spec", "model", "covered/total", "refused (op, limit: count)"):
        t.add_column(column)
    for row in rows:
        done = row.get("error") or f"{row['covered']}/{row['total']}"
        refused = "; ".join(f"{k}: {v}" for k, v in row.get("refused", {}).items())
        t.add_row(row["spec"], row["model"], done, refused)
    return t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--specs", help="comma-separated spec files (default: every specs/**/*.net)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the rows as JSON")
    p.add_argument("--smoke", action="store_true", help=f"only {', '.join(SMOKE)}")
    args = p.parse_args(argv)
    names = SMOKE if args.smoke else args.specs.split(",") if args.specs else None
    specs = [REPO / s for s in names] if names else sorted((REPO / "specs").rglob("*.net"))
    rows = [survey(spec, model) for spec in specs for model in models_of(spec)]
    Console(width=160).print(table(rows))
    if args.json:
        config = {"profile": "trt-dla", "specs": [str(s.relative_to(REPO)) for s in specs]}
        atomic_write_text(args.json, json.dumps({"config": config, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
