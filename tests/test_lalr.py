"""netdsl's LALR run time (netdsl.lalr) against lark's on the same tables: the same trees, positions and errors."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from netdsl import lalr
from netdsl.parser import TABLES_FILE, decode_tables

lark = pytest.importorskip("lark")

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*REPO.glob("specs/**/*.net"), *REPO.glob("examples/**/*.net"), *REPO.glob("tests/**/*.net")])


def tables() -> tuple[dict[str, Any], dict[int, Any]]:
    return decode_tables(json.loads((REPO / "netdsl" / TABLES_FILE).read_text(encoding="utf-8")))


OURS = lalr.LalrParser(*tables())
LARKS = lark.Lark._load_from_dict(*tables())
POSITIONS = ("line", "column", "end_line", "end_column", "start_pos", "end_pos")


def shape(node: Any) -> Any:
    """A comparable form of a tree of either parser: rule names, token types and texts, every position."""
    if node is None:
        return None
    if isinstance(node, (lalr.Token, lark.Token)):
        return ("token", node.type, str(node), *(getattr(node, p) for p in POSITIONS))
    meta = node.meta
    where = None if meta.empty else tuple(getattr(meta, p) for p in POSITIONS)
    return (node.data, where, [shape(c) for c in node.children])


def outcome(parse: Any, text: str) -> Any:
    """The tree, or the error as plain data (kind, where, what was found, what was expected)."""
    try:
        return shape(parse(text))
    except (lalr.UnexpectedToken, lark.exceptions.UnexpectedToken) as err:
        return ("token error", shape(err.token)[:3], err.token.line, err.token.column, set(err.expected))
    except (lalr.UnexpectedCharacters, lark.exceptions.UnexpectedCharacters) as err:
        return ("character error", err.pos_in_stream, err.line, err.column, set(err.allowed))


def test_there_are_sources_to_compare() -> None:
    assert len(SOURCES) >= 20


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_bundled_source_parses_as_lark_parses_it(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert outcome(OURS.parse, text) == outcome(LARKS.parse, text)


def mutations(text: str, rng: random.Random, count: int) -> list[str]:
    """``text`` with a character deleted, duplicated or replaced at random places, or cut short."""
    alphabet = "(){}[],.:=+-*/%<>!#'\"\n 0123456789aeinrstx_"
    found = []
    for _ in range(count):
        i = rng.randrange(len(text))
        kind = rng.randrange(4)
        if kind == 0:
            found.append(text[:i] + text[i + 1:])
        elif kind == 1:
            found.append(text[:i] + text[i] + text[i:])
        elif kind == 2:
            found.append(text[:i] + rng.choice(alphabet) + text[i + 1:])
        else:
            found.append(text[:i])
    return found


@pytest.mark.parametrize("name", ["specs/csa.net", "specs/acmix.net", "specs/blocks/vit.net"])
def test_damaged_sources_fail_or_parse_as_with_lark(name: str) -> None:
    text = (REPO / name).read_text(encoding="utf-8")
    rng = random.Random(name)
    for damaged in mutations(text, rng, 100):
        assert outcome(OURS.parse, damaged) == outcome(LARKS.parse, damaged), damaged


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment", "block", "block b() {", "block b() { x = 'a' }",
                                  "model m() { output y = x ** -2 ** 3 }", "import \"a.net\"\nimport",
                                  "block b() { if x { } else if y { } else { } }", "@", "block b(x: [[int]]) {}"])
def test_edge_sources_parse_or_fail_as_with_lark(text: str) -> None:
    assert outcome(OURS.parse, text) == outcome(LARKS.parse, text)


def test_parsing_imports_no_lark() -> None:
    code = ("import sys; sys.modules['lark'] = None; from netdsl.parser import parse_source; "
            f"print(len(parse_source(open({str(REPO / 'specs' / 'csa.net')!r}).read(), 'csa.net').blocks))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) >= 2
