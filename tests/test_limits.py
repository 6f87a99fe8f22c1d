"""Resource limits of the front end: every breach is a located error (exit 2) naming the limit.

Inputs are built to the edge of each limit: deep nesting, recursive blocks, long loops, huge
tensors, import cycles and chains, enormous files. Each run goes through the CLI in-process
with a deadline and a memory budget (:func:`fuzz.run_cli`), so a missing limit shows up as a
failed test rather than a hung or swapping test run. :class:`netdsl.elaborate.Limits` is
checked to be configurable.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fuzz import Outcome, first_line, run_cli

from netdsl.diagnostics import NetdslError
from netdsl.elaborate import Limits, elaborate_program
from netdsl.loader import MAX_IMPORT_DEPTH, load_program
from netdsl.parser import MAX_SOURCE_BYTES

DEFAULTS = Limits()
X = "  input x: f32[1, 4, 8, 8]\n"


def model(body: str, header: str = X) -> str:
    """A model ``m`` with input x: f32[1, 4, 8, 8] (unless ``header`` says otherwise) around ``body``."""
    return f"model m() {{\n{header}{body}  output y = x\n}}\n"


def check(folder: Path, source: str | bytes, name: str = "spec.net", deadline_s: float = 20.0) -> Outcome:
    """``netdsl check`` on ``source`` written to ``folder/name``."""
    path = folder / name
    path.write_bytes(source.encode() if isinstance(source, str) else source)
    return run_cli(["check", str(path)], deadline_s=deadline_s)


def assert_error(outcome: Outcome, message: str) -> None:
    """Exit 2, located, with exactly ``message`` as the first line's text."""
    assert outcome.code == 2, outcome.describe()
    assert first_line(outcome.stderr) == f"error: {message}", outcome.describe()
    assert not outcome.problems(), outcome.describe()


def assert_located_error(outcome: Outcome, *fragments: str) -> None:
    """Exit 2, located, and every fragment in the first line."""
    assert outcome.code == 2, outcome.describe()
    assert not outcome.problems(), outcome.describe()
    for fragment in fragments:
        assert fragment in first_line(outcome.stderr), outcome.describe()


def elaborate_text(folder: Path, source: str, limits: Limits | None) -> str:
    """Elaborate ``source`` with ``limits``: "ok", or the error message."""
    path = folder / "spec.net"
    path.write_text(source)
    try:
        elaborate_program(load_program(path), limits=limits)
    except NetdslError as err:
        return err.diag.message
    return "ok"


# ----------------------------------------------------------------------------- nesting


DEEP_EXPRESSIONS = {
    "10,000 nested parentheses": "(" * 10_000 + "1" + ")" * 10_000,
    "10,000 unary minuses": "-" * 10_000 + "1",
    "10,000 nested lists": "[" * 10_000 + "1" + "]" * 10_000,
    "a sum of 20,000 terms": "1" + " + 1" * 20_000,
}


@pytest.mark.parametrize("name", sorted(DEEP_EXPRESSIONS))
def test_deep_expression(tmp_path: Path, name: str) -> None:
    outcome = check(tmp_path, model(f"  let a = {DEEP_EXPRESSIONS[name]}\n"))
    assert_error(outcome, "expression nested too deeply to parse")


@pytest.mark.parametrize("keyword", ["if true", "for i in [1]"])
def test_deeply_nested_statement_bodies(tmp_path: Path, keyword: str) -> None:
    depth = 2_000
    outcome = check(tmp_path, model(f"  {keyword} {{\n" * depth + "  }\n" * depth))
    assert outcome.code == 2 and not outcome.problems(), outcome.describe()
    assert "nested too deeply" in first_line(outcome.stderr), outcome.describe()


def test_deep_expression_inside_deeply_nested_blocks(tmp_path: Path) -> None:
    """Parsing accepts the expression; the elaborator must still not run out of Python stack."""
    source = ("block R(n: int) {\n  input x: f32[1, 4, 8, 8]\n  if n > 0 {\n    output y = R(x, n - 1)\n"
              f"  }} else {{\n    let a = {'-' * 450}1\n    output y = x\n  }}\n}}\n"
              "model m() {\n  input x: f32[1, 4, 8, 8]\n  output y = R(x, 60)\n}\n")
    outcome = check(tmp_path, source)
    assert outcome.code in (0, 2) and not outcome.problems(), outcome.describe()


def test_recursive_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    source = "block R() {\n" + X + "  output y = R(x)\n}\n" + "model m() {\n" + X + "  output y = R(x)\n}\n"
    outcome = check(tmp_path, source)
    assert_error(outcome, f"blocks nested deeper than the limit of {DEFAULTS.max_depth} (is 'R' recursive?)")
    assert "\n  --> spec.net:3:14\n" in outcome.stderr


def test_mutually_recursive_blocks(tmp_path: Path) -> None:
    source = ("block A() {\n" + X + "  output y = B(x)\n}\n" + "block B() {\n" + X + "  output y = A(x)\n}\n"
              + "model m() {\n" + X + "  output y = A(x)\n}\n")
    # The model instantiates A at depth 0, so depth 64 (even) is an instance of A again.
    assert_error(check(tmp_path, source), "blocks nested deeper than the limit of 64 (is 'A' recursive?)")


def block_chain(length: int) -> str:
    """Blocks B0 -> B1 -> ... -> B<length-1>, each calling the next, and a model calling B0."""
    blocks = [f"block B{i}() {{\n{X}  output y = {f'B{i + 1}(x)' if i + 1 < length else 'relu(x)'}\n}}\n"
              for i in range(length)]
    return "".join(blocks) + "model m() {\n" + X + "  output y = B0(x)\n}\n"


def test_block_nesting_at_the_limit_is_allowed(tmp_path: Path) -> None:
    outcome = check(tmp_path, block_chain(DEFAULTS.max_depth))
    assert outcome.code == 0, outcome.describe()


def test_block_nesting_one_past_the_limit(tmp_path: Path) -> None:
    outcome = check(tmp_path, block_chain(DEFAULTS.max_depth + 1))
    assert_error(outcome, "blocks nested deeper than the limit of 64 (is 'B64' recursive?)")


# ----------------------------------------------------------------------------- loops and growth


def test_range_at_the_limit_is_allowed(tmp_path: Path) -> None:
    outcome = check(tmp_path, model(f"  for i in range({DEFAULTS.max_loop_iterations}) {{\n  }}\n"))
    assert outcome.code == 0, outcome.describe()


def test_range_over_the_limit(tmp_path: Path) -> None:
    n = DEFAULTS.max_loop_iterations + 1
    outcome = check(tmp_path, model(f"  for i in range({n}) {{\n  }}\n"))
    assert_error(outcome, f"range of {n} items exceeds the limit of {DEFAULTS.max_loop_iterations}")


def test_astronomical_range(tmp_path: Path) -> None:
    """len() of such a range would overflow a C ssize_t; the integer limit stops it first."""
    outcome = check(tmp_path, model("  let t = 10 ** 30\n  for i in range(0, t, 1) {\n  }\n"))
    assert_error(outcome, f"integer result exceeds the limit of {DEFAULTS.max_int_bits} bits")


def test_range_longer_than_ssize_t(tmp_path: Path) -> None:
    """A range of 2^63 items (64-bit bounds) is refused by its length, computed without len()."""
    outcome = check(tmp_path, model("  let t = 4611686018427387904\n  for i in range(0 - t, t, 1) {\n  }\n"))
    assert_error(outcome, f"range of {2**63} items exceeds the limit of {DEFAULTS.max_loop_iterations}")


def test_nested_loops_multiplying_past_the_limit(tmp_path: Path) -> None:
    """Each loop is under the limit; together they would run 10^12 iterations."""
    body = "".join(f"{'  ' * d}  for i{d} in range(10000) {{\n" for d in range(3)) + "  }\n" * 3
    outcome = check(tmp_path, model(body), deadline_s=15.0)
    assert_located_error(outcome, "limit")


def test_list_doubling(tmp_path: Path) -> None:
    """A list that doubles 64 times must hit a limit, not exhaust memory."""
    outcome = check(tmp_path, model("  let l = [1]\n  for i in range(64) {\n    let l = l + l\n  }\n"))
    assert_located_error(outcome)


def test_integer_squaring(tmp_path: Path) -> None:
    """An int squared 64 times has 2^64 bits: it must hit a limit, not exhaust memory or time."""
    outcome = check(tmp_path, model("  let a = 3\n  for i in range(64) {\n    let a = a * a\n  }\n"))
    assert_located_error(outcome)


def test_many_reassignments_take_linear_time(tmp_path: Path) -> None:
    """10,000 ops (far below the node limit) must elaborate in seconds, not quadratic minutes."""
    outcome = check(tmp_path, model("  y = x\n  for i in range(10000) {\n    y = relu(y)\n  }\n  output z = y\n"),
                    deadline_s=10.0)
    assert outcome.code == 0, outcome.describe()


# ----------------------------------------------------------------------------- tensor sizes


def over_limit(type_text: str, numel: int, itemsize: int = 4) -> str:
    return (f"tensor {type_text} needs {numel * itemsize} bytes, over the limit of {DEFAULTS.max_tensor_bytes} "
            "bytes")


def test_input_over_the_byte_limit(tmp_path: Path) -> None:
    outcome = check(tmp_path, model("", header="  input x: f32[1, 4, 100000000, 100000000]\n"))
    assert_error(outcome, over_limit("f32[1,4,100000000,100000000]", 4 * 10**16))


def test_dims_beyond_int64(tmp_path: Path) -> None:
    big = 2**63 + 1
    outcome = check(tmp_path, model("", header=f"  input x: f64[{big}, {big}]\n"))
    assert_error(outcome, over_limit(f"f64[{big},{big}]", big * big, itemsize=8))


def test_parameter_over_the_byte_limit(tmp_path: Path) -> None:
    outcome = check(tmp_path, model("  param w: f32[100000000, 100000000] = 0\n"))
    assert_error(outcome, over_limit("f32[100000000,100000000]", 10**16))


def test_op_output_over_the_byte_limit(tmp_path: Path) -> None:
    """No weights, huge output: an upsampling resize."""
    outcome = check(tmp_path, model("  z = resize(x, scale=[100000.0, 100000.0])\n"))
    assert_error(outcome, over_limit("f32[1,4,800000,800000]", 4 * 64 * 10**10))


def test_layer_weight_checked_before_its_output(tmp_path: Path) -> None:
    outcome = check(tmp_path, model("  z = conv(x, 1000000000000, kernel=1)\n"))
    assert_error(outcome, over_limit("f32[1000000000000,4,1,1]", 4 * 10**12))


def test_layer_weight_over_the_byte_limit(tmp_path: Path) -> None:
    """A linear layer's 4 TiB weight is over the limit even though its output is small."""
    outcome = check(tmp_path, model("  z = linear(x, 67108864)\n", header="  input x: f32[1, 16384]\n"))
    assert_error(outcome, over_limit("f32[67108864,16384]", 2**40))


def test_constant_over_the_byte_limit(tmp_path: Path) -> None:
    """The constant must be refused before its data is allocated."""
    outcome = check(tmp_path, model("  z = constant(1.0, [100000, 100000, 100000])\n"))
    assert_located_error(outcome, "over the limit of")


# ----------------------------------------------------------------------------- files and imports


def write_chain(folder: Path, length: int) -> Path:
    """f0.net imports f1.net ... imports f<length-1>.net, which defines the block the model uses."""
    for i in range(length - 1):
        (folder / f"f{i}.net").write_text(f'import "f{i + 1}.net"\n')
    (folder / f"f{length - 1}.net").write_text("block last() {\n  input x: f32[1]\n  output y = x\n}\n")
    with open(folder / "f0.net", "a") as f:
        f.write("model m() {\n  input x: f32[1]\n  output y = last(x)\n}\n")
    return folder / "f0.net"


def test_import_chain_at_the_limit_is_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    outcome = run_cli(["check", str(write_chain(tmp_path, MAX_IMPORT_DEPTH))])
    assert outcome.code == 0, outcome.describe()


@pytest.mark.parametrize("length", [MAX_IMPORT_DEPTH + 1, MAX_IMPORT_DEPTH + 8])
def test_import_chain_over_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, length: int) -> None:
    monkeypatch.chdir(tmp_path)
    outcome = run_cli(["check", str(write_chain(tmp_path, length))])
    assert_error(outcome, f"imports nested deeper than the limit of {MAX_IMPORT_DEPTH} files")


def test_import_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "b.net").write_text('import "a.net"\n')
    outcome = check(tmp_path, 'import "b.net"\n' + model(""), name="a.net")
    assert_error(outcome, "import cycle: a.net -> b.net -> a.net")
    assert "--> b.net:1:1" in outcome.stderr


def test_self_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    outcome = check(tmp_path, 'import "a.net"\n' + model(""), name="a.net")
    assert_error(outcome, "import cycle: a.net -> a.net")


def padded(source: str, size: int) -> str:
    """``source`` followed by a comment line making it exactly ``size`` bytes."""
    return source + "#" * (size - len(source.encode()) - 1) + "\n"


def test_file_at_the_size_limit_is_allowed(tmp_path: Path) -> None:
    outcome = check(tmp_path, padded(model(""), MAX_SOURCE_BYTES))
    assert outcome.code == 0, outcome.describe()


def test_file_over_the_size_limit(tmp_path: Path) -> None:
    outcome = check(tmp_path, padded(model(""), MAX_SOURCE_BYTES + 1))
    assert_error(outcome, f"file is larger than the limit of {MAX_SOURCE_BYTES} bytes")


def test_imported_file_over_the_size_limit(tmp_path: Path) -> None:
    (tmp_path / "big.net").write_text(padded("", MAX_SOURCE_BYTES + 1))
    outcome = check(tmp_path, 'import "big.net"\n' + model(""))
    assert_error(outcome, f"file is larger than the limit of {MAX_SOURCE_BYTES} bytes")
    assert "big.net:1:1" in outcome.stderr


def test_enormous_file_is_not_read_whole(tmp_path: Path) -> None:
    """A 16 GiB (sparse) file must be refused by its size, within the 2 GiB memory budget."""
    path = tmp_path / "huge.net"
    with open(path, "wb") as f:
        f.truncate(16 << 30)
    outcome = run_cli(["check", str(path)])
    assert_error(outcome, f"file is larger than the limit of {MAX_SOURCE_BYTES} bytes")


def test_source_limit_can_be_raised_from_the_environment(tmp_path: Path) -> None:
    """The over-the-limit message says NETDSL_MAX_SOURCE_BYTES raises the limit: it must."""
    path = tmp_path / "spec.net"
    path.write_text(padded(model(""), MAX_SOURCE_BYTES + 1024))
    env = {**os.environ, "NETDSL_MAX_SOURCE_BYTES": str(2 * MAX_SOURCE_BYTES)}
    proc = subprocess.run([sys.executable, "-m", "netdsl.cli", "check", str(path)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: m:")


# ----------------------------------------------------------------------------- configurable limits


def test_limits_max_nodes(tmp_path: Path) -> None:
    source = model("  z = relu(relu(relu(relu(x))))\n")
    assert elaborate_text(tmp_path, source, None) == "ok"
    assert elaborate_text(tmp_path, source, Limits(max_nodes=3)) == "the graph exceeds the limit of 3 ops"


def test_limits_max_depth(tmp_path: Path) -> None:
    source = block_chain(3)
    assert elaborate_text(tmp_path, source, Limits(max_depth=3)) == "ok"
    assert (elaborate_text(tmp_path, source, Limits(max_depth=2))
            == "blocks nested deeper than the limit of 2 (is 'B2' recursive?)")


def test_limits_max_loop_iterations(tmp_path: Path) -> None:
    ranged = model("  for i in range(11) {\n  }\n")
    listed = model(f"  for i in [{', '.join(['1'] * 11)}] {{\n  }}\n")
    assert elaborate_text(tmp_path, ranged, Limits(max_loop_iterations=11)) == "ok"
    assert (elaborate_text(tmp_path, ranged, Limits(max_loop_iterations=10))
            == "range of 11 items exceeds the limit of 10")
    assert (elaborate_text(tmp_path, listed, Limits(max_loop_iterations=10))
            == "loop of 11 iterations exceeds the limit of 10")


def test_limits_max_tensor_bytes(tmp_path: Path) -> None:
    fits = model("", header="  input x: f32[1, 4, 8, 8]\n")  # 1024 bytes
    too_big = model("", header="  input x: f32[1, 4, 8, 9]\n")  # 1152 bytes
    assert elaborate_text(tmp_path, fits, Limits(max_tensor_bytes=1024)) == "ok"
    assert (elaborate_text(tmp_path, too_big, Limits(max_tensor_bytes=1024))
            == "tensor f32[1,4,8,9] needs 1152 bytes, over the limit of 1024 bytes")
    assert elaborate_text(tmp_path, too_big, None) == "ok"
