"""The op reference of docs/language.md is what scripts/generate_op_reference.py writes from the declarations."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "generate_op_reference.py"


def _generator():  # noqa: ANN202 - a module loaded from a path
    spec = importlib.util.spec_from_file_location("generate_op_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_checked_in_op_reference_is_current() -> None:
    gen = _generator()
    page = gen.PAGE.read_text(encoding="utf-8")
    assert gen.updated(page) == page, "docs/language.md is stale: run python scripts/generate_op_reference.py"


def test_the_reference_lists_each_declared_attribute_with_its_constraint() -> None:
    ref = _generator().reference()
    rotate = next(line for line in ref.splitlines() if line.startswith("| `rotate` | 1"))
    assert "`heads`: int (default 1, positive)" in rotate
    unfold = "| `unfold` | `unfold(x, kernel, stride=1, padding=0, dilation=1)` | `unfold` (arguments passed through) |"
    assert unfold in ref
