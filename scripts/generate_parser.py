"""Regenerate ``netdsl/grammar/netdsl.tables.json``, the parser's LALR tables as plain data.

    python scripts/generate_parser.py           # rewrite the module from the grammar
    python scripts/generate_parser.py --check   # exit 1 if the module is not what the grammar gives

netdsl never builds or caches parse tables at run time: the tables are generated here from
``netdsl/grammar/netdsl.lark``, checked in, and loaded by :mod:`netdsl.parser` as JSON (no
pickle, no cache folder). Run this after every grammar change; the test suite
fails while the checked-in tables and the grammar disagree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from netdsl.lalr import SHIFT

ROOT = Path(__file__).resolve().parents[1]
GRAMMAR = ROOT / "netdsl" / "grammar" / "netdsl.lark"
TABLES = ROOT / "netdsl" / "grammar" / "netdsl.tables.json"
# A regex's unbounded match width as the tables record it. Python's regex parser reports that width as
# 2**32 - 1 before 3.11.5 (its repeat limit) and as 2**64 from then on; both mean "unbounded", so any
# width from 2**32 - 1 up is written as 2**64 and the tables do not depend on the Python patch release.
UNBOUNDED_WIDTH = 2**64

def canonical_table(table: dict[str, Any]) -> dict[str, Any]:
    """lark's serialised LALR table with symbols numbered by name and states in breadth-first order.

    lark numbers states and symbols in the order it meets them while walking sets of grammar items,
    an order that follows string hashes and object addresses, so two runs give different numbers.
    States are visited from the start states (by start symbol name), following shifts and gotos
    in symbol name order, so the numbering depends on the grammar only, not on the order in which
    lark happened to build the states.
    """
    names = sorted(table["tokens"].values())
    symbol = {old: names.index(name) for old, name in table["tokens"].items()}
    order: list[int] = [table["start_states"][start] for start in sorted(table["start_states"])]
    number = {old: new for new, old in enumerate(order)}
    for old in order:  # grows while it is walked: a breadth-first search
        row = table["states"][old]
        for _, (action, arg) in sorted(row.items(), key=lambda item: symbol[item[0]]):
            if action == SHIFT and arg not in number:
                number[arg] = len(order)
                order.append(arg)
    if len(order) != len(table["states"]):
        raise ValueError(f"{len(table['states']) - len(order)} parse states cannot be reached from a start state")
    states = {
        number[old]: {symbol[s]: (action, number[arg] if action == SHIFT else arg)
                      for s, (action, arg) in sorted(table["states"][old].items(), key=lambda item: symbol[item[0]])}
        for old in order
    }
    return {
        "tokens": dict(enumerate(names)),
        "states": states,
        "start_states": {k: number[v] for k, v in table["start_states"].items()},
        "end_states": {k: number[v] for k, v in table["end_states"].items()},
    }


def canonical_widths(memo: dict[Any, Any]) -> dict[Any, Any]:
    """The serialised terminals with every unbounded regex width written as :data:`UNBOUNDED_WIDTH`.

    Widths only order the lexer's terminals (longest first), and all unbounded ones compare equal
    either way, so the rewrite cannot change what the parser does.
    """
    for entry in memo.values():
        width = entry.get("pattern", {}).get("_width")
        if width is not None:
            entry["pattern"]["_width"] = [UNBOUNDED_WIDTH if w >= 2**32 - 1 else w for w in width]
    return memo


def render() -> str:
    """The text of the tables file for the current grammar: lark's serialised parser, as JSON.

    JSON has no integer keys and no tuples; :func:`netdsl.parser.decode_tables` restores both.
    """
    import lark
    from lark import Lark
    from lark.grammar import Rule
    from lark.lexer import TerminalDef

    from netdsl.parser import LARK_OPTIONS

    grammar = GRAMMAR.read_text(encoding="utf-8")
    data, memo = Lark(grammar, **LARK_OPTIONS).memo_serialize([TerminalDef, Rule])
    data["parser"]["parser"] = canonical_table(data["parser"]["parser"])
    tables = {
        "generator": "scripts/generate_parser.py",
        "grammar_sha256": hashlib.sha256(grammar.encode("utf-8")).hexdigest(),
        "lark_version": lark.__version__,
        "data": data,
        "memo": canonical_widths(memo),
    }
    return json.dumps(tables, indent=0, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        same = TABLES.exists() and TABLES.read_text(encoding="utf-8") == text
        verdict = "up to date" if same else "out of date: run scripts/generate_parser.py"
        print(f"{TABLES.relative_to(ROOT)} is {verdict}")
        return 0 if same else 1
    TABLES.write_text(text, encoding="utf-8")
    print(f"wrote {TABLES.relative_to(ROOT)} ({len(text)} characters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
