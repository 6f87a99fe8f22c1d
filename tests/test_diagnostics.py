"""Diagnostics for bad specs and bad flags, through ``netdsl check`` run in-process.

Each test asserts the exit status 2, the ``  --> file:line:col`` location, the key wording of the
``error:`` line, the source text under the carets where a span is meaningful, and that no Python
traceback is printed. Tests run in their temporary folder, so a spec written there is shown as
``t.net``; locations inside the bundled specs are looked up in the spec text, not hard-coded.
One job, hence one file past 600 lines: every user error of the front end, one section per kind.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# A helper block used by several tests: one declared tensor input, one int parameter (lines 1-4).
RELU_BLOCK = """block S(c: int) {
    input x: f32[N, c, H, W]
    output y = relu(x)
}
"""


def with_relu_block(model: str) -> str:
    """``RELU_BLOCK`` followed by ``model`` (dedented) from line 5 on."""
    return RELU_BLOCK + textwrap.dedent(model).strip() + "\n"


@dataclass
class Reported:
    """One rendered diagnostic, taken apart."""

    message: str
    location: str | None = None
    underlined: str | None = None
    notes: list[str] = field(default_factory=list)
    chain: list[str] = field(default_factory=list)
    help: str | None = None


def parse_report(stderr: str) -> Reported:
    """Split the text of :func:`netdsl.diagnostics.render` into its parts."""
    lines = stderr.rstrip("\n").splitlines()
    assert lines and lines[0].startswith("error: "), stderr
    rep = Reported(lines[0][len("error: "):])
    source: str | None = None
    for line in lines[1:]:
        if m := re.fullmatch(r"  --> (.+)", line):
            rep.location = m.group(1)
        elif m := re.fullmatch(r"\s*\d+ \| (.*)", line):
            source = m.group(1)
        elif (m := re.fullmatch(r"\s* \| ([ \t]*)(\^+)", line)) and source is not None:
            start = len(m.group(1))
            rep.underlined = source[start:start + len(m.group(2))]
        elif m := re.fullmatch(r"   = note: (.*)", line):
            rep.notes.append(m.group(1))
        elif m := re.fullmatch(r"   = in block (.*)", line):
            rep.chain.append(m.group(1))
        elif m := re.fullmatch(r"   = help: (.*)", line):
            rep.help = m.group(1)
    return rep


def locate(text: str, snippet: str) -> str:
    """``"line:col"`` (1-based) of the first occurrence of ``snippet`` in ``text``."""
    pos = text.index(snippet)
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"{line}:{col}"


CheckFails = Callable[..., Reported]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in the test's folder: spec paths are shown relative to the working folder."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def check_fails(run_cli) -> CheckFails:
    """``check_fails(spec, *flags)``: run ``netdsl check``, require a clean user error, return it parsed."""

    def run(spec: Path | str, *flags: str) -> Reported:
        code, out, err = run_cli(["check", str(spec), *flags])
        assert "Traceback" not in err and "internal error" not in err, err
        assert code == 2, err
        assert out == ""
        return parse_report(err)

    return run


@pytest.fixture
def acmix_copy(repo_root: Path, tmp_path: Path) -> Callable[[str, str], tuple[Path, str]]:
    """``acmix_copy(old, new)``: the bundled ACmix spec with one hand edit, as ``acmix.net``."""

    def edit(old: str, new: str) -> tuple[Path, str]:
        text = (repo_root / "specs" / "acmix.net").read_text()
        assert old in text, f"the ACmix spec no longer contains {old!r}"
        edited = text.replace(old, new, 1)
        path = tmp_path / "acmix.net"
        path.write_text(edited)
        return path, edited

    return edit


# ----------------------------------------------------------------------------- syntax errors


def test_missing_brace_at_end_of_file(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        block A(c: int = 4) {
            input x: f32[N=1, c, H=8, W=8]
            output y = relu(x)
        """))
    assert "syntax error" in r.message and "found the end of the file" in r.message
    assert r.location == "t.net:3:23"  # just after the last character of the file
    assert r.help == "a '{' was opened and never closed"


def test_unexpected_token(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        block A(c: int = 4) {
            input x: f32[N=1, c, H=8, W=8]
            y = relu(x) )
            output y
        }
        """))
    assert r.message == "syntax error: expected a statement or '}', found ')'"
    assert r.location == "t.net:3:17"
    assert r.underlined == ")"


def test_bad_character(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        block A(c: int = 4) {
            input x: f32[N=1, c, H=8, W=8] $
        }
        """))
    assert r.message == "syntax error: unexpected character '$'"
    assert r.location == "t.net:2:36"
    assert r.underlined == "$"


def test_unterminated_string(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        block A(c: int = 4) {
            require c > 0, "c must be positive
        }
        """))
    assert "unterminated string" in r.message
    assert r.location == "t.net:2:20"
    assert r.underlined == '"'


def test_single_quoted_string(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        block A(c: int = 4) {
            require c > 0, 'c must be positive'
        }
        """))
    assert r.message == "syntax error: unexpected character \"'\""
    assert r.location == "t.net:2:20"
    assert r.help == "strings use double quotes"


def test_missing_closing_parenthesis(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        block A(c: int = 4) {
            input x: f32[N=1, c, H=8, W=8]
            output y = relu(x
        }
        """))
    assert "syntax error: expected" in r.message and "')'" in r.message and "found '}'" in r.message
    assert r.location == "t.net:4:1"
    assert r.underlined == "}"


def test_missing_colon_in_parameter_list(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        block A(c int) {
        }
        """))
    assert r.message == "syntax error: expected ':', found a name 'int'"
    assert r.location == "t.net:1:11"
    assert r.underlined == "int"


def test_dangling_operator(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        block A(c: int = 4) {
            input x: f32[N=1, c, H=8, W=8]
            y = x +* 2
            output y
        }
        """))
    assert r.message == "syntax error: expected an expression, found '*'"
    assert r.location == "t.net:3:12"


def test_def_instead_of_block(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        def A(c: int) {
        }
        """))
    assert "found a name 'def'" in r.message
    assert r.location == "t.net:1:1"
    assert r.underlined == "def"
    assert r.help == "blocks are declared with 'block NAME(params) { ... }'"


def test_keyword_used_as_assignment_target(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        model M() {
            input a: f32[2, 8, 4, 4]
            output = relu(a)
        }
        """))
    assert r.message == "syntax error: expected a name, found '='"
    assert r.location == "t.net:3:12"
    assert r.underlined == "="


def test_keyword_is_not_a_variable_name(check_fails, write_spec) -> None:
    # Keywords are reserved: 'let for = 3' must not define a variable called 'for'.
    r = check_fails(write_spec("""
        model M() {
            input a: f32[2, 8, 4, 4]
            let for = 3
            output y = relu(a)
        }
        """))
    assert r.message.startswith("syntax error") and "'for'" in r.message
    assert r.location == "t.net:3:9"
    assert r.underlined == "for"


# ----------------------------------------------------------------------------- names and did-you-mean


def test_unknown_name_did_you_mean(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        model M(channels: int = 4) {
            input x: f32[N=1, channels, H=8, W=8]
            output y = conv(x, chanels, kernel=1)
        }
        """))
    assert r.message == "unknown name 'chanels'"
    assert r.location == "t.net:3:24"
    assert r.underlined == "chanels"
    assert r.help == "did you mean 'channels'?"


def test_misspelled_op(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        model M(c: int = 4) {
            input x: f32[N=1, c, H=8, W=8]
            output y = cnov(x, c, kernel=1)
        }
        """))
    assert r.message == "unknown op or block 'cnov'"
    assert r.location == "t.net:3:16"
    assert r.underlined == "cnov"
    assert r.help == "did you mean 'conv'?"


def test_misspelled_block(check_fails, write_spec) -> None:
    r = check_fails(write_spec(RELU_BLOCK.replace("block S(", "block Stem(") + """
        model M() {
            input a: f32[1, 4, 8, 8]
            output y = Stme(a, 4)
        }
        """))
    assert r.message == "unknown op or block 'Stme'"
    assert r.underlined == "Stme"
    assert r.help == "did you mean 'Stem'?"


def test_misspelled_block_keyword_argument(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        block Stem(c: int, width: int = 2) {
            input x: f32[N, c, H, W]
            output y = relu(x)
        }
        model M() {
            input a: f32[1, 4, 8, 8]
            output y = Stem(a, 4, widht=3)
        }
        """))
    assert r.message == "Stem has no parameter 'widht'"
    assert r.location == "t.net:7:27"
    assert r.underlined == "widht=3"
    assert r.help == "did you mean 'width'?"


def test_misspelled_op_keyword_argument(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        model M() {
            input a: f32[1, 4, 8, 8]
            output y = conv(a, 4, kernel=3, paddign=1)
        }
        """))
    assert r.message == "conv() has no argument 'paddign'"
    assert r.location == "t.net:3:37"
    assert r.underlined == "paddign=1"
    assert r.help == "did you mean 'padding'?"


def test_caret_under_a_tab_indented_line(check_fails, write_spec, run_cli) -> None:
    # The caret line repeats the source's tabs, so the caret lines up however wide a tab is shown.
    path = write_spec("model M() {\n\tinput a: f32[1, 4, 8, 8]\n\toutput y = relu(b)\n}\n")
    r = check_fails(path)
    assert r.location == "t.net:3:18"
    _, _, err = run_cli(["check", path])
    assert "  | \t" + " " * len("output y = relu(") + "^\n" in err + "\n"


def test_unknown_dtype(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        model M() {
            input a: f33[2, 8, 4, 4]
            output y = relu(a)
        }
        """))
    assert r.message == "unknown dtype 'f33'"
    assert r.location == "t.net:2:14"
    assert r.underlined == "f33"
    assert r.help == "did you mean 'f32'?"


# ----------------------------------------------------------------------------- argument types and counts


@pytest.mark.parametrize(("call", "message", "col", "underlined"), [
    ("conv(a, 4, kernel=3, stride=1.5)", "argument 'stride' of conv() must be an int or [h, w], found float 1.5",
     44, "1.5"),
    ("conv(a, [4, 4], kernel=3)", "argument 'out' of conv() must be an int, found [int] [4, 4]", 24, "[4, 4]"),
    ("conv(a, a, kernel=3)", "argument 'out' of conv() must be an int, found a tensor", 24, "a"),
    ("S(a, 4.0)", "parameter 'c' of S expects int, found float 4.0", 21, "4.0"),
    ("S(a, c=a)", "parameter 'c' of S expects int, found tensor", 21, "c=a"),
], ids=["float-for-int", "list-for-int", "tensor-for-int", "block-float-for-int", "block-tensor-keyword"])
def test_wrong_argument_type(check_fails, write_spec, call: str, message: str, col: int, underlined: str) -> None:
    r = check_fails(write_spec(with_relu_block(f"""
        model M() {{
            input a: f32[1, 4, 8, 8]
            output y = {call}
        }}
        """)))
    assert r.message == message
    assert r.location == f"t.net:7:{col}"
    assert r.underlined == underlined


def test_tensor_for_int_positional_block_argument(check_fails, write_spec) -> None:
    # S declares one tensor input; a second tensor where the int 'c' goes is a type error at that argument.
    r = check_fails(write_spec(with_relu_block("""
        model M() {
            input a: f32[1, 4, 8, 8]
            output y = S(a, a)
        }
        """)))
    assert "found tensor" in r.message and "missing" not in r.message
    assert r.location == "t.net:7:21"
    assert r.underlined == "a"


def test_too_many_positional_op_arguments(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        model M() {
            input a: f32[1, 4, 8, 8]
            output y = relu(a, 3)
        }
        """))
    assert "relu() takes at most 1" in r.message and "found 2" in r.message
    assert r.location == "t.net:3:24"
    assert r.underlined == "3"
    assert r.help == "signature: relu(x)"


def test_too_many_positional_block_arguments(check_fails, write_spec) -> None:
    r = check_fails(write_spec(with_relu_block("""
        model M() {
            input a: f32[1, 4, 8, 8]
            output y = S(a, 4, 5)
        }
        """)))
    assert "S takes 1 parameter, found 2 positional arguments" in r.message
    assert r.location == "t.net:7:24"
    assert r.underlined == "5"


def test_missing_required_block_parameter(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        block S(c: int, k: int) {
            input x: f32[N, c, H, W]
            output y = relu(x)
        }
        model M() {
            input a: f32[1, 4, 8, 8]
            output y = S(a, 4)
        }
        """))
    assert r.message == "missing parameter 'k: int' of S"
    assert r.location == "t.net:7:16"
    assert r.underlined == "S(a, 4)"
    assert r.help == "S takes: c: int, k: int"


def test_missing_required_op_argument(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        model M() {
            input a: f32[1, 4, 8, 8]
            output y = conv(a)
        }
        """))
    assert r.message == "conv() is missing its argument 'out'"
    assert r.underlined == "conv(a)"
    assert r.help is not None and r.help.startswith("signature: conv(x, out, kernel, stride=1")


def test_missing_tensor_input(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        block Add(c: int) {
            input x: f32[N, c, H, W]
            input z: f32[N, c, H, W]
            output y = x + z
        }
        model M() {
            input a: f32[1, 4, 8, 8]
            output y = Add(a, 4)
        }
        """))
    assert r.message == "input 'z' of Add expects a tensor, found int 4"
    assert r.location == "t.net:8:23"
    assert r.underlined == "4"


# ----------------------------------------------------------------------------- shapes, dtypes, channels


def test_add_shape_mismatch_names_both_shapes(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        model M() {
            input a: f32[2, 64, 14, 14]
            input b: f32[2, 32, 14, 14]
            output y = a + b
        }
        """))
    assert "[2, 64, 14, 14] and [2, 32, 14, 14] do not broadcast" in r.message
    assert "64 vs 32" in r.message
    assert r.location == "t.net:4:20"
    assert r.underlined == "b"


def test_conv_input_channels_of_a_block(check_fails, write_spec, repo_root: Path) -> None:
    # ACmix(in_planes=32) applied to a 64-channel map: its declared input f32[B, in_planes, H, W] does not match.
    r = check_fails(write_spec("""
        import "acmix.net"
        model M() {
            input a: f32[1, 64, 14, 14]
            output y = ACmix(a, 32, 64)
        }
        """), "--lib", str(repo_root / "specs"))
    assert "shape mismatch for input 'x'" in r.message
    assert "in_planes = 32" in r.message and "f32[1,64,14,14]" in r.message
    assert r.location == "t.net:4:22"
    assert r.underlined == "a"


def test_entry_input_shape_against_parameters(check_fails, repo_root: Path, monkeypatch) -> None:
    monkeypatch.chdir(repo_root)
    text = (repo_root / "specs" / "acmix.net").read_text()
    r = check_fails("specs/acmix.net", "--entry", "ACmix", "--set", "in_planes=32", "--set", "out_planes=64",
                    "--input", "x=2x64x14x14")
    assert "shape mismatch for input 'x'" in r.message and "in_planes = 32" in r.message
    assert r.location == "specs/acmix.net:" + locate(text, "in_planes, H, W]")
    assert r.underlined == "in_planes"


def test_dtype_mismatch(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        model M() {
            input a: f32[2, 8, 4, 4]
            input b: f16[2, 8, 4, 4]
            output y = a * b
        }
        """))
    assert r.message == "dtype mismatch: expected f32, found f16 (f16[2,8,4,4])"
    assert r.location == "t.net:4:20"
    assert r.underlined == "b"


def test_dtype_mismatch_at_block_input(check_fails, write_spec) -> None:
    r = check_fails(write_spec(with_relu_block("""
        model M() {
            input a: f16[1, 4, 8, 8]
            output y = S(a, 4)
        }
        """)))
    assert r.message == "input 'x' of S expects f32 with 4 dims, found f16[1,4,8,8]"
    assert r.location == "t.net:7:18"
    assert r.underlined == "a"


def test_groups_must_divide_channels(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        model M() {
            input a: f32[2, 12, 4, 4]
            output y = conv(a, 12, kernel=3, padding=1, groups=5)
        }
        """))
    assert "conv groups (5) must divide the input channels (12)" in r.message
    assert r.location == "t.net:3:56"
    assert r.underlined == "5"


def test_groupnorm_groups_of_one_value(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        model M() {
            input a: f32[1, 3, 1, 1]
            output y = groupnorm(a, 3)
        }
        """))
    assert r.message == "groupnorm groups of one value (3 channels in 3 groups, map 1x1) normalise every value to 0"
    assert r.location == "t.net:3:29"
    assert r.underlined == "3"


def test_reshape_element_count(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        model M() {
            input a: f32[2, 8, 4, 4]
            output y = reshape(a, [2, 8, 15])
        }
        """))
    assert r.message == "cannot reshape f32[2,8,4,4] (256 elements) to [2, 8, 15] (240 elements)"
    assert r.underlined == "[2, 8, 15]"


def test_split_sizes_must_sum_to_the_axis(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        model M() {
            input a: f32[2, 8, 4, 4]
            p, q = split(a, [3, 4])
            output y = p
        }
        """))
    assert r.message == "split sizes [3, 4] do not add up to 8 (axis 1 of f32[2,8,4,4])"
    assert r.location == "t.net:3:21"
    assert r.underlined == "[3, 4]"


def test_reflect_padding_too_large(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        model M() {
            input a: f32[2, 8, 4, 4]
            output y = pad(a, 4, mode="reflect")
        }
        """))
    assert "reflection padding 4,4,4,4 must be smaller than the map 4x4" in r.message
    assert r.underlined == "4"


# ----------------------------------------------------------------------------- compile-time evaluation


def test_failed_require_shows_the_message_with_values(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        model M(k: int = 2) {
            input a: f32[2, 8, 4, 4]
            require k > 3, "k is {k}, the map is {a}, its dims {a.shape}, half of k {k / 4}"
            output y = a
        }
        """))
    assert r.message == "constraint failed: k is 2, the map is f32[2,8,4,4], its dims [2, 8, 4, 4], half of k 0.5"
    assert r.location == "t.net:3:13"
    assert r.underlined == "k > 3"
    assert r.notes == ["2 > 3 is false"]


def test_bad_placeholder_in_require_message_is_located_in_the_spec(check_fails, run_cli, write_spec) -> None:
    path = write_spec("""
        model M(k: int = 2) {
            input a: f32[2, 8, 4, 4]
            require k > 3, "k is {k} but {nope}"
            output y = a
        }
        """)
    r = check_fails(path)
    assert r.message == "in the message's {nope}: unknown name 'nope'"
    assert r.location is not None and r.location.startswith("t.net:3:")
    _, _, err = run_cli(["check", str(path)])
    assert "__msg" not in err and "<message>" not in err


def test_list_index_out_of_range(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        model M(ds: [int] = [1, 2, 3]) {
            input a: f32[2, 8, 4, 4]
            let d = ds[3]
            output y = relu(a)
        }
        """))
    assert r.message == "index 3 out of range for a list of length 3"
    assert r.location == "t.net:3:16"
    assert r.underlined == "3"


def test_division_by_zero(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        model M(k: int = 0) {
            input a: f32[2, 8, 4, 4]
            let d = 8 // k
            output y = relu(a)
        }
        """))
    assert r.message == "division by zero"
    assert r.location == "t.net:3:18"
    assert r.underlined == "k"


def test_if_condition_must_be_bool(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        model M(k: int = 2) {
            input a: f32[2, 8, 4, 4]
            if k { a = relu(a) }
            output y = a
        }
        """))
    assert r.message == "if needs a bool condition, found int"
    assert r.location == "t.net:3:8"
    assert r.underlined == "k"


# ----------------------------------------------------------------------------- imports and definitions


def test_missing_import(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        import "parts/nothere.net"
        model M() {
            input a: f32[2, 8, 4, 4]
            output y = relu(a)
        }
        """))
    assert "imported file 'parts/nothere.net' not found" in r.message
    assert r.location == "t.net:1:1"
    assert r.underlined == 'import "parts/nothere.net"'


def test_import_cycle(check_fails, write_spec) -> None:
    write_spec('import "a.net"\nblock B() {\n}\n', "b.net")
    a = write_spec('import "b.net"\nmodel A() {\n    input x: f32[1]\n    output y = relu(x)\n}\n', "a.net")
    r = check_fails(a)
    assert r.message == "import cycle: a.net -> b.net -> a.net"
    assert r.location == "b.net:1:1"
    assert r.underlined == 'import "a.net"'


def test_absolute_import_refused(check_fails, write_spec) -> None:
    target = write_spec("block P() {\n}\n", "parts.net")
    r = check_fails(write_spec(f"""
        import "{target}"
        model M() {{
            input a: f32[2, 8, 4, 4]
            output y = relu(a)
        }}
        """))
    assert r.message == f"import of an absolute path '{target}' is not allowed"
    assert r.location == "t.net:1:1"
    assert r.help is not None and "--lib" in r.help


def test_syntax_error_in_imported_file_is_located_there(check_fails, write_spec) -> None:
    write_spec("block Bad( {\n}\n", "parts/bad.net")
    r = check_fails(write_spec("""
        import "parts/bad.net"
        model M() {
            input a: f32[2, 8, 4, 4]
            output y = relu(a)
        }
        """))
    assert r.message == "syntax error: expected ')' or a name, found '{'"
    assert r.location == "parts/bad.net:1:12"


def test_duplicate_block_definition(check_fails, write_spec) -> None:
    r = check_fails(write_spec(RELU_BLOCK + RELU_BLOCK))
    assert r.message == "block 'S' is defined twice"
    assert r.location == "t.net:5:7"
    assert r.underlined == "S"
    assert r.notes == ["first defined at t.net:1:7"]


def test_duplicate_parameter_name(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        model M() {
            input a: f32[2, 8, 4, 4]
            w = conv(a, 16, kernel=1) as c1
            output y = conv(w, 16, kernel=1) as c1
        }
        """))
    assert r.message == "parameter 'c1.weight' is already defined"
    assert r.location == "t.net:4:41"
    assert r.underlined == "c1"


def test_parameter_named_like_an_input(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        model M() {
            input x: f32[1, 4, 8, 8]
            param x: f32[4] = 0.0
            output y = x
        }
        """))
    assert r.message == ("parameter 'x' has the name of a value already defined (an input or an op's result)")
    assert r.location == "t.net:3:5"
    assert r.underlined == "param x: f32[4] = 0.0"


def test_error_three_blocks_deep_shows_the_instantiation_chain(check_fails, write_spec) -> None:
    r = check_fails(write_spec("""
        block Inner(c: int) {
            input x: f32[N, C, H, W]
            output y = conv(x, c, kernel=3, padding=1, groups=3)
        }
        block Middle(c: int) {
            input x: f32[N, C, H, W]
            output y = Inner(x, c) as inner
        }
        block Outer(c: int) {
            input x: f32[N, C, H, W]
            for i in range(2) {
                x = Middle(x, c) as mid.{i}
            }
            output y = x
        }
        model M() {
            input a: f32[2, 8, 4, 4]
            output y = Outer(a, 8) as outer
        }
        """))
    assert "conv groups (3) must divide the input channels (8)" in r.message
    assert r.location == "t.net:3:55"
    assert r.chain == [
        "Inner 'outer.mid.0.inner' instantiated at t.net:7:16",
        "Middle 'outer.mid.0' instantiated at t.net:12:13",
        "Outer 'outer' instantiated at t.net:18:16",
    ]


# ----------------------------------------------------------------------------- command-line flags


def test_set_of_an_unknown_parameter(check_fails, repo_root: Path) -> None:
    r = check_fails(repo_root / "specs" / "acmix.net", "--set", "plnes=3")
    assert r.message == "model acmix_demo has no parameter 'plnes' (from --set)"
    assert r.underlined == "acmix_demo"
    assert r.help == "did you mean 'planes'?"


def test_set_with_a_value_of_the_wrong_type(check_fails, repo_root: Path) -> None:
    r = check_fails(repo_root / "specs" / "acmix.net", "--set", "planes=1.5")
    assert r.message == "parameter 'planes' of acmix_demo expects int, found float 1.5"
    assert r.underlined == "acmix_demo"


@pytest.mark.parametrize("flag", ["x=2by64", "x", "=2x64x14x14", "x=2x0x14x14"])
def test_bad_input_syntax(check_fails, repo_root: Path, flag: str) -> None:
    r = check_fails(repo_root / "specs" / "acmix.net", "--input", flag)
    assert r.message == f"--input expects NAME=SHAPE like x=2x64x14x14, found '{flag}'"
    assert r.location is None  # a flag has no place in a file


def test_input_of_an_unknown_input(check_fails, repo_root: Path) -> None:
    r = check_fails(repo_root / "specs" / "acmix.net", "--input", "z=2x64x14x14")
    assert r.message == "acmix_demo has no input 'z' (from --input)"
    assert r.underlined == "acmix_demo"


def test_input_of_the_wrong_rank(check_fails, repo_root: Path) -> None:
    r = check_fails(repo_root / "specs" / "acmix.net", "--input", "x=2x64")
    assert r.message == "--input x has rank 2, but 'x' is declared with 4 dims"
    assert r.underlined is not None and r.underlined.startswith("input x: f32[")


def test_symbolic_dim_without_value(check_fails, repo_root: Path) -> None:
    r = check_fails(repo_root / "specs" / "acmix.net", "--entry", "ACmix", "--set", "in_planes=64",
                    "--set", "out_planes=64")
    assert r.message == "input 'x' has a symbolic dim 'B' with no value"
    assert r.underlined == "B"
    assert r.help is not None and "--input x=" in r.help


# ----------------------------------------------------------------------------- the bundled CSA and ACmix specs


def test_csa_resize_round_trip_at_29x29(check_fails, repo_root: Path, monkeypatch) -> None:
    monkeypatch.chdir(repo_root)
    text = (repo_root / "specs" / "csa.net").read_text()
    r = check_fails("specs/csa.net", "--entry", "CSA", "--set", "dim=32", "--set", "sr_to=14",
                    "--input", "x=2x32x29x29")
    assert r.message.startswith("constraint failed: ")
    assert "gives 28x28, not the input's 29x29" in r.message
    assert r.location == "specs/csa.net:" + locate(text, "r.shape[2] == H and")


def _acmix_require(check_fails, repo_root: Path, monkeypatch, snippet: str, *flags: str) -> Reported:
    monkeypatch.chdir(repo_root)
    text = (repo_root / "specs" / "acmix.net").read_text()
    r = check_fails("specs/acmix.net", "--entry", "ACmix", *flags)
    assert r.location == "specs/acmix.net:" + locate(text, snippet)
    assert r.underlined == snippet
    return r


def test_acmix_out_planes_not_divisible_by_head(check_fails, repo_root: Path, monkeypatch) -> None:
    r = _acmix_require(check_fails, repo_root, monkeypatch, "out_planes % head == 0", "--set", "in_planes=64",
                       "--set", "out_planes=66", "--input", "x=2x64x14x14")
    assert r.message == "constraint failed: out_planes (66) must be divisible by head (4)"
    assert r.notes == ["2 == 0 is false"]


def test_acmix_stride_2_on_an_odd_map(check_fails, repo_root: Path, monkeypatch) -> None:
    r = _acmix_require(check_fails, repo_root, monkeypatch, "H % stride == 0 and W % stride == 0",
                       "--set", "in_planes=64", "--set", "out_planes=64", "--set", "stride=2",
                       "--input", "x=2x64x15x15")
    assert r.message == "constraint failed: the map 15x15 must be divisible by the stride 2"


# The "must show": hand edits of specs/acmix.net give located errors (exit 2, no traceback).


def _demo_call(text: str) -> str:
    """Where acmix_demo instantiates ACmix (the chain line of errors inside the block)."""
    return "acmix.net:" + locate(text, "ACmix(x, planes")


def test_acmix_edit_channel_count(check_fails, acmix_copy) -> None:
    path, text = acmix_copy("c = conv(f, out_planes, kernel=kernel_conv",
                            "c = conv(f, out_planes // 2, kernel=kernel_conv")
    r = check_fails(path)
    assert "[1, 64, 14, 14] and [1, 32, 14, 14] do not broadcast" in r.message
    assert r.location == "acmix.net:" + locate(text, "rate2 * c")
    assert r.underlined == "rate2 * c"
    assert r.chain == [f"ACmix instantiated at {_demo_call(text)}"]


def test_acmix_edit_value_channels_points_at_the_value(check_fails, acmix_copy) -> None:
    path, text = acmix_copy("v = conv(x, out_planes, kernel=1)", "v = conv(x, out_planes // 2, kernel=1)")
    r = check_fails(path)
    assert "value f32[1,32,14,14] must have the query's shape [1, 64, 14, 14]" in r.message
    assert r.location == "acmix.net:" + locate(text, "v, heads=head")
    assert r.underlined == "v"


def test_acmix_edit_misspelled_op(check_fails, acmix_copy) -> None:
    path, text = acmix_copy("k = conv(x, out_planes", "k = cnov(x, out_planes")
    r = check_fails(path)
    assert r.message == "unknown op or block 'cnov'"
    assert r.location == "acmix.net:" + locate(text, "cnov")
    assert r.underlined == "cnov"
    assert r.help == "did you mean 'conv'?"
    assert r.chain == [f"ACmix instantiated at {_demo_call(text)}"]


def test_acmix_edit_deleted_let(check_fails, acmix_copy) -> None:
    original = "    let d = out_planes // head"
    path, text = acmix_copy(original, "   ")
    r = check_fails(path)
    assert r.message == "unknown name 'd'"
    assert r.location == "acmix.net:" + locate(text, "d, kernel=1) as conv_p")
    assert r.underlined == "d"


def test_acmix_edit_deleted_output(check_fails, acmix_copy) -> None:
    path, text = acmix_copy("output y = rate1 * att + rate2 * c", "")
    r = check_fails(path)
    assert r.message == "block ACmix has no output"
    assert r.location == "acmix.net:" + locate(text, "ACmix(in_planes")
    assert r.underlined == "ACmix"


@pytest.mark.parametrize("value, dtype, message", [
    ("7.0e16", "f16", "the constant 7e+16 does not fit a f16 tensor"),
    ("1.0e39", "f32", "the constant 1e+39 does not fit a f32 tensor"),
    ("2.5", "i64", "cannot combine a i64 tensor with the non-integer 2.5"),
])
def test_constant_that_its_dtype_cannot_hold(check_fails, write_spec, value: str, dtype: str, message: str) -> None:
    r = check_fails(write_spec(f"""
        model m() {{
            input x: f32[N=1, 4, H=2, W=2]
            output y = constant({value}, shape=[1], dtype="{dtype}")
        }}
        """))
    assert r.message == message
    assert r.location == "t.net:3:25"
    assert r.underlined == value
