"""The parser's tables ship as generated JSON: no pickle, no cache, nothing written outside the outputs."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from netdsl import parser as netdsl_parser

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "specs" / "csa.net"

# Runs the CLI with every pickle entry point replaced by one that stops the process with exit 97
# (a BaseException: no `except Exception` on the way can swallow it).
NO_PICKLE_RUNNER = """
import pickle, sys

class PickleUsed(BaseException):
    pass

def refuse(*args, **kwargs):
    raise PickleUsed("pickle used")

pickle.load = pickle.loads = refuse
pickle.Unpickler = refuse
from netdsl.cli import main
try:
    code = main(sys.argv[1:])
except PickleUsed:
    print("pickle used", file=sys.stderr)
    code = 97
sys.exit(code)
"""


def _generator():
    spec = importlib.util.spec_from_file_location("generate_parser", REPO / "scripts" / "generate_parser.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regenerating_the_tables_gives_the_checked_in_file():
    generator = _generator()
    assert generator.TABLES.read_text(encoding="utf-8") == generator.render(), (
        "netdsl/grammar/netdsl.tables.json is out of date: run python scripts/generate_parser.py")


def test_tables_record_the_grammar_they_were_built_from():
    import hashlib

    generator = _generator()
    tables = json.loads(generator.TABLES.read_text(encoding="utf-8"))
    assert tables["grammar_sha256"] == hashlib.sha256(generator.GRAMMAR.read_bytes()).hexdigest()
    assert tables["data"]["options"]["parser"] == netdsl_parser.LARK_OPTIONS["parser"]


def test_canonical_numbering_does_not_depend_on_lark_build_order():
    generator = _generator()
    table = {"tokens": {0: "B", 1: "A", 2: "start"}, "start_states": {"start": 5}, "end_states": {"start": 9},
             "states": {5: {0: (0, 9), 1: (0, 7)}, 7: {0: (1, {"@": 3})}, 9: {2: (1, {"@": 4})}}}
    # the same automaton, its states and symbols numbered differently
    renamed = {"tokens": {0: "start", 1: "A", 2: "B"}, "start_states": {"start": 1}, "end_states": {"start": 0},
               "states": {1: {2: (0, 0), 1: (0, 2)}, 2: {2: (1, {"@": 3})}, 0: {0: (1, {"@": 4})}}}
    canonical = generator.canonical_table(table)
    assert canonical == generator.canonical_table(renamed)
    assert canonical["tokens"] == {0: "A", 1: "B", 2: "start"}
    assert canonical["states"] == {0: {0: (0, 1), 1: (0, 2)}, 1: {1: (1, {"@": 3})}, 2: {2: (1, {"@": 4})}}


def test_package_source_never_unpickles():
    pattern = re.compile(r"\bpickle\.loads?\(|\bUnpickler\b|\bcPickle\b|allow_pickle=True|weights_only=False")
    sources = [*(REPO / "netdsl").rglob("*.py"), *(REPO / "backends").rglob("*.py")]
    offenders = [f"{p.relative_to(REPO)}:{i}" for p in sources
                 for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert sources and offenders == []


def _snapshot(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def sealed_home(tmp_path: Path):
    """An environment whose HOME and XDG_CACHE_HOME are empty folders without write permission."""
    home, cache = tmp_path / "home", tmp_path / "cache"
    for folder in (home, cache):
        folder.mkdir()
        folder.chmod(0o555)
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(cache)}
    yield env, (home, cache)
    for folder in (home, cache):
        folder.chmod(0o755)


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", NO_PICKLE_RUNNER, *argv], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_check_writes_nothing_and_never_unpickles(sealed_home, tmp_path: Path):
    env, folders = sealed_home
    work = tmp_path / "work"
    work.mkdir()
    done = _run(["check", str(SPEC)], env, work)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: csa_demo")
    assert [_snapshot(f) for f in (*folders, work)] == [[], [], []]


def test_compile_writes_only_its_output(sealed_home, tmp_path: Path):
    env, folders = sealed_home
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    done = _run(["compile", str(SPEC), "--target", "onnx", "-o", "out/csa.onnx"], env, work)
    assert done.returncode == 0, done.stderr
    assert [_snapshot(f) for f in (*folders, work)] == [[], [], ["out", "out/csa.onnx"]]
