"""``netdsl check`` reads every block of a file and of its imports, used by the entry or not.

The mutation sweep misspells each called name of the bundled specs in turn (every op, block,
builtin and initialiser call, in every block) and requires a located error with exit status 2.
One test per kind of unresolved name checks the message, the location and the help.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_diagnostics import Reported, parse_report

from netdsl import ast
from netdsl.elaborate import BUILTIN_FUNCS
from netdsl.init_funcs import INIT_FUNCS
from netdsl.parser import parse_source
from netdsl.surface_ops import SURFACE_OPS

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "specs").rglob("*.net"))
# Files whose entries are whole ImageNet models: their sweep elaborates a large graph per mutant.
LARGE = {"convnext_tiny.net", "convselfattn.net", "cvt13.net", "resnet50.net", "resnet_acmix.net",
         "swin_acmix_tiny.net", "swin_tiny.net"}


def calls(node: object) -> Iterator[ast.Call]:
    """Every call in an AST (sub)tree, in source order."""
    if isinstance(node, ast.Call):
        yield node
    if isinstance(node, list):
        for item in node:
            yield from calls(item)
    elif dataclasses.is_dataclass(node) and not isinstance(node, ast.SourceFile):
        for f in dataclasses.fields(node):
            yield from calls(getattr(node, f.name))


def misspell(name: str, known: set[str]) -> str:
    """A misspelling of ``name`` that names nothing: the last letter dropped, else a letter added."""
    wrong = name[:-1]
    return wrong if len(wrong) > 1 and wrong not in known else name + "q"


def mutants(spec: Path) -> list[tuple[str, int, int, str]]:
    """``(relative path, line, column, misspelt name)`` for every call of ``spec``."""
    source = parse_source(spec.read_text(encoding="utf-8"), str(spec))
    known = set(SURFACE_OPS) | set(BUILTIN_FUNCS) | set(INIT_FUNCS) | {b.name for b in source.blocks}
    rel = str(spec.relative_to(REPO / "specs"))
    return [(rel, c.func_span.line, c.func_span.col, misspell(c.func, known)) for c in calls(source.blocks)]


def sweep(files: list[Path]) -> list[tuple[str, int, int, str]]:
    return [m for spec in files for m in mutants(spec)]


@pytest.fixture(scope="module")
def spec_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of specs/ (imports resolve relative to each file) that each mutant edits and restores."""
    root = tmp_path_factory.mktemp("specs")
    shutil.copytree(REPO / "specs", root, dirs_exist_ok=True)
    return root


def check_mutant(run_cli, root: Path, rel: str, line: int, col: int, wrong: str) -> None:
    path = root / rel
    original = path.read_text(encoding="utf-8")
    lines = original.split("\n")
    text = lines[line - 1]
    end = col - 1
    while end < len(text) and (text[end].isalnum() or text[end] == "_"):
        end += 1
    lines[line - 1] = text[: col - 1] + wrong + text[end:]
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        code, out, err = run_cli(["check", path])
    finally:
        path.write_text(original, encoding="utf-8")
    assert code == 2 and out == "", f"{rel}:{line}:{col} '{wrong}' passed: {out}"
    assert "Traceback" not in err and "internal error" not in err, err
    first = err.splitlines()[0]
    assert first in (f"error: unknown op or block '{wrong}'", f"error: unknown initialiser '{wrong}'"), err
    assert f"--> {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}:{line}:{col}" in err, err


@pytest.mark.parametrize("rel,line,col,wrong", sweep([s for s in SPECS if s.name not in LARGE]))
def test_misspelt_call_in_any_block_is_located(run_cli, spec_copy: Path, rel: str, line: int, col: int,
                                              wrong: str) -> None:
    check_mutant(run_cli, spec_copy, rel, line, col, wrong)


@pytest.mark.slow
@pytest.mark.parametrize("rel,line,col,wrong", sweep([s for s in SPECS if s.name in LARGE]))
def test_misspelt_call_in_model_files_is_located(run_cli, spec_copy: Path, rel: str, line: int, col: int,
                                                wrong: str) -> None:
    check_mutant(run_cli, spec_copy, rel, line, col, wrong)


def test_the_sweep_reaches_unused_blocks() -> None:
    """The sweep includes calls in blocks no default entry instantiates (the case elaboration alone misses)."""
    acmix = mutants(REPO / "specs" / "acmix.net")
    text = (REPO / "specs" / "acmix.net").read_text().split("\n")
    unused_start = next(i for i, t in enumerate(text) if t.startswith("block WindowAttentionACmix")) + 1
    assert any(line > unused_start for _, line, _, _ in acmix)


# ----------------------------------------------------------------------------- one test per kind

UNUSED = """
model M(c: int = 4) {{
    input x: f32[N=1, c, H=8, W=8]
    output y = relu(x)
}}

block Unused(c: int) {{
    input x: f32[B, c, H, W]
{body}
}}
"""


@pytest.fixture
def located(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], Reported]:
    """``located(spec)``: ``netdsl check`` run in the test's folder (so a spec there shows as ``t.net``); requires
    exit status 2 and a clean report, and returns it parsed."""
    monkeypatch.chdir(tmp_path)

    def run(spec: Path) -> Reported:
        code, out, err = run_cli(["check", spec])
        assert code == 2 and out == "" and "Traceback" not in err and "internal error" not in err, err
        return parse_report(err)

    return run


def report(located, write_spec, body: str) -> Reported:
    return located(write_spec(UNUSED.format(body=body)))


def test_unknown_op_in_an_unused_block(located, write_spec) -> None:
    r = report(located, write_spec, "    output y = sigmod(x)")
    assert r.message == "unknown op or block 'sigmod'" and r.help == "did you mean 'sigmoid'?"
    assert r.location == "t.net:8:16" and r.underlined == "sigmod"


def test_unknown_block_in_an_unused_block(located, write_spec) -> None:
    r = report(located, write_spec, "    output y = Unusd(x, c)")
    assert r.message == "unknown op or block 'Unusd'" and r.help == "did you mean 'Unused'?"
    assert r.location == "t.net:8:16" and r.underlined == "Unusd"


def test_unknown_name_in_an_unused_block(located, write_spec) -> None:
    r = report(located, write_spec, "    output y = conv(x, cc, kernel=1)")
    assert r.message == "unknown name 'cc'" and r.help == "did you mean 'c'?"
    assert r.location == "t.net:8:24" and r.underlined == "cc"


def test_unknown_op_argument_in_an_unused_block(located, write_spec) -> None:
    r = report(located, write_spec, "    output y = conv(x, c, kernal=1)")
    assert r.message == "conv() has no argument 'kernal'" and r.help == "did you mean 'kernel'?"
    assert r.location == "t.net:8:27"


def test_unknown_block_parameter_in_an_unused_block(located, write_spec) -> None:
    r = report(located, write_spec, "    output y = Unused(x, cc=c)")
    assert r.message == "Unused has no parameter 'cc'" and r.help == "did you mean 'c'?"


def test_unknown_initialiser_in_an_unused_block(located, write_spec) -> None:
    r = report(located, write_spec, "    param g: f32[1, c, 1, 1] = trunc_norml(std=0.02)\n    output y = g * x")
    assert r.message == "unknown initialiser 'trunc_norml'" and r.help == "did you mean 'trunc_normal'?"
    assert r.location == "t.net:8:32" and r.underlined == "trunc_norml"


def test_unknown_name_in_a_require_message(located, write_spec) -> None:
    r = report(located, write_spec, '    require c > 0, "c is {cc}, H is {H}"\n    output y = relu(x)')
    assert r.message == "in the message's {cc}: unknown name 'cc'" and r.help == "did you mean 'c'?"
    assert r.location == "t.net:8:26" and r.underlined == "{cc}"


def test_unknown_tensor_attribute_in_an_unused_block(located, write_spec) -> None:
    r = report(located, write_spec, "    let n = x.shap[1]\n    output y = relu(x)")
    assert r.message == "tensor has no attribute 'shap'" and r.help == "did you mean 'shape'?"


def test_names_bound_in_branches_loops_and_dims_resolve(run_cli, write_spec) -> None:
    path = write_spec(UNUSED.format(body="""
    let v = 1
    if c > 2 { let w = 2 } else { let w = 3 }
    for i in range(w) { z = conv(x, c, kernel=1) as convs.{i} }
    require H % 2 == 0, "H ({H}) and v {v} and {x.shape[1]}"
    output y = z * float(v)"""))
    code, out, err = run_cli(["check", path])
    assert code == 0 and "2 blocks resolved, 1 type-checked" in out, err


def test_defaulted_blocks_are_type_checked(located, write_spec) -> None:
    """A block whose parameters all have defaults (and whose inputs have default dims) is elaborated too."""
    r = located(write_spec("""
        model M(c: int = 4) {
            input x: f32[N=1, c, H=8, W=8]
            output y = relu(x)
        }

        model Other(c: int = 4) {
            input x: f32[N=1, c, H=8, W=8]
            output y = x + conv(x, 2 * c, kernel=1)
        }
        """))
    assert r.message.startswith("shapes [1, 4, 8, 8] and [1, 8, 8, 8] do not broadcast")
    assert r.location == "t.net:8:20" and r.underlined == "conv(x, 2 * c, kernel=1)"


def test_a_library_of_blocks_checks_without_an_entry(run_cli, repo_root: Path) -> None:
    code, out, err = run_cli(["check", repo_root / "specs" / "models" / "common.net"])
    assert code == 0, err
    code, out, err = run_cli(["check", repo_root / "specs" / "csa.net", "--entry", "CSA", "--input", "x=1x16x14x14",
                              "--set", "dim=16", "--set", "sr_to=7", "--set", "num_heads=1"])
    assert code == 0 and out.startswith("ok: CSA: "), err


def test_compile_refuses_a_typo_in_an_unused_block(run_cli, write_spec, tmp_path: Path) -> None:
    path = write_spec(UNUSED.format(body="    output y = sigmod(x)"))
    out_file = tmp_path / "m.onnx"
    code, _, err = run_cli(["compile", path, "--target", "onnx", "-o", out_file])
    assert code == 2 and "unknown op or block 'sigmod'" in err and not out_file.exists()
