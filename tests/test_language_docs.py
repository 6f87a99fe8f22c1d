"""docs/language.md documents every op of the catalogue, every built-in, initialiser and keyword,
and every op the bundled specs call."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_check_every_block import calls

from netdsl.elaborate import BUILTIN_FUNCS
from netdsl.init_funcs import INIT_FUNCS
from netdsl.opdefs import OPS
from netdsl.parser import parse_source
from netdsl.surface_ops import SURFACE_OPS

REPO = Path(__file__).resolve().parents[1]
PAGE = (REPO / "docs" / "language.md").read_text(encoding="utf-8")


def table_entries(heading: str) -> set[str]:
    """The back-quoted names in the first cell of each row of the tables under ``## heading`` (to the next ``## ``)."""
    section = PAGE.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for row in re.findall(r"^\| (.+?) \|", section, re.MULTILINE):
        names.update(re.findall(r"`([A-Za-z_]\w*)", row))
    return names


def keywords() -> set[str]:
    grammar = (REPO / "netdsl" / "grammar" / "netdsl.lark").read_text()
    reserved = re.search(r"^NAME: /\(\?!\(([^)]*)\)", grammar, re.MULTILINE).group(1)
    return set(reserved.split("|"))


@pytest.mark.parametrize("op", sorted(set(OPS) | set(SURFACE_OPS)))
def test_every_op_has_an_entry(op: str) -> None:
    assert op in table_entries("Ops"), f"docs/language.md has no entry for op '{op}'"


@pytest.mark.parametrize("name", sorted(BUILTIN_FUNCS))
def test_every_builtin_has_an_entry(name: str) -> None:
    assert name in table_entries("Built-in functions")


@pytest.mark.parametrize("name", sorted(INIT_FUNCS))
def test_every_initialiser_has_an_entry(name: str) -> None:
    assert name in table_entries("Initialisers")


def test_every_keyword_has_an_entry() -> None:
    assert keywords() - table_entries("Keywords") == set()


def test_every_op_the_bundled_specs_call_is_documented() -> None:
    called = {c.func for spec in (REPO / "specs").rglob("*.net")
              for c in calls(parse_source(spec.read_text(), str(spec)).blocks)}
    blocks = {b.name for spec in (REPO / "specs").rglob("*.net") for b in parse_source(spec.read_text(), "x").blocks}
    documented = table_entries("Ops") | table_entries("Built-in functions") | table_entries("Initialisers")
    assert called - blocks - documented == set()
