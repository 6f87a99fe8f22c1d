"""Language features of .net specs, checked on the typed graphs they elaborate to.

Values computed at compile time are observed through what they become in the graph: parameter
shapes and initial values, value types, and hierarchical parameter names.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from netdsl.diagnostics import NetdslError
from netdsl.driver import load_graph
from netdsl.ir import Graph, Init, TensorType

REPO_SPECS = sorted((Path(__file__).resolve().parents[1] / "specs").glob("**/*.net"))


def build(path: Path, entry: str | None = None, sets: tuple[str, ...] = (), inputs: tuple[str, ...] = (),
          lib: tuple[Path, ...] = ()) -> Graph:
    """Elaborate ``path`` with command-line style ``--set``/``--input`` strings."""
    return load_graph(path, entry, list(sets), list(inputs), list(lib))


def param_types(graph: Graph) -> dict[str, TensorType]:
    return {name: p.type for name, p in graph.params.items()}


def output_types(graph: Graph) -> list[TensorType]:
    return [graph.values[o] for o in graph.outputs]


# ----------------------------------------------------------------------------- parameters of blocks and models


CONV_MODEL = """
model M(c: int = 4, k: int = 3) {
    input x: f32[N=1, c, H=8, W=8]
    output y = conv(x, 2 * c, kernel=k, padding=k // 2) as proj
}
"""


def test_defaults_and_overrides(write_spec) -> None:
    path = write_spec(CONV_MODEL)
    assert param_types(build(path))["proj.weight"] == TensorType("f32", (8, 4, 3, 3))
    g = build(path, sets=("k=5", "c=6"), inputs=("x=1x6x8x8",))
    assert param_types(g)["proj.weight"] == TensorType("f32", (12, 6, 5, 5))
    assert output_types(g) == [TensorType("f32", (1, 12, 8, 8))]


def test_float_parameters_accept_ints(write_spec) -> None:
    path = write_spec("""
        model M(scale: float = 0.25) {
            input x: f32[1, 4]
            param gamma: f32[4] = scale
            output y = gamma * x
        }
        """)
    assert build(path).params["gamma"].init == Init("fill", (("value", 0.25),))
    value = build(path, sets=("scale=2",)).params["gamma"].init.arg("value")
    assert value == 2.0 and isinstance(value, float)


STAGES_MODEL = """
model M(depths: [int] = [3, 4, 6, 3]) {
    input x: f32[N=1, 4, H=8, W=8]
    for s in range(len(depths)) {
        for i in range(depths[s]) {
            x = conv(x, 4, kernel=1) as stages.{s}.{i}
        }
    }
    output y = x
}
"""


def _blocks_per_stage(graph: Graph) -> list[int]:
    counts: dict[int, int] = {}
    for name in graph.params:
        m = re.fullmatch(r"stages\.(\d+)\.(\d+)\.weight", name)
        if m:
            counts[int(m.group(1))] = counts.get(int(m.group(1)), 0) + 1
    return [counts[s] for s in sorted(counts)]


def test_list_parameter_default_and_set(write_spec) -> None:
    path = write_spec(STAGES_MODEL)
    assert _blocks_per_stage(build(path)) == [3, 4, 6, 3]
    assert _blocks_per_stage(build(path, sets=("depths=1,1,1,1",))) == [1, 1, 1, 1]
    assert _blocks_per_stage(build(path, sets=("depths=[2]",))) == [2]


def test_list_parameter_set_through_the_cli(write_spec, run_cli) -> None:
    path = write_spec(STAGES_MODEL)
    code, out, err = run_cli(["check", path, "--set", "depths=1,1,1,1"])
    assert (code, err) == (0, "")
    assert "4 ops" in out


# ----------------------------------------------------------------------------- imports


def test_imports_resolve_relative_to_the_importing_file(write_spec, tmp_path: Path, monkeypatch) -> None:
    write_spec("""
        block Scale(c: int) {
            input x: f32[N, c, H, W]
            param gamma: f32[1, c, 1, 1] = 2
            output y = gamma * x
        }
        """, "proj/lib/scale.net")
    write_spec("""
        import "scale.net"
        block Stem(c: int) {
            input x: f32[N, c, H, W]
            output y = Scale(conv(x, c, kernel=1) as conv, c) as scale
        }
        """, "proj/lib/stem.net")
    main = write_spec("""
        import "lib/stem.net"
        model Net() {
            input x: f32[N=1, 4, H=8, W=8]
            output y = Stem(x, 4) as stem
        }
        """, "proj/net.net")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # imports must not depend on the working folder
    g = build(main)
    assert set(g.params) == {"stem.conv.weight", "stem.conv.bias", "stem.scale.gamma"}


def test_import_through_the_search_path(write_spec) -> None:
    write_spec("block Id(c: int) {\n    input x: f32[N, c]\n    output y = identity(x)\n}\n", "shared/id.net")
    main = write_spec("""
        import "id.net"
        model M() {
            input x: f32[2, 3]
            output y = Id(x, 3)
        }
        """, "app/m.net")
    assert output_types(build(main, lib=(main.parent.parent / "shared",))) == [TensorType("f32", (2, 3))]


# ----------------------------------------------------------------------------- control flow and compile-time values


def test_for_loops_over_range(write_spec) -> None:
    g = build(write_spec("""
        model M() {
            input x: f32[N=1, 4, H=8, W=8]
            for i in range(1, 7, 2) {
                x = conv(x, 4, kernel=1, bias=false) as layer.{i}
            }
            for c in [5, 6] {
                x = conv(x, c, kernel=1, bias=false) as widen.{c}
            }
            output y = x
        }
        """))
    assert list(g.params) == ["layer.1.weight", "layer.3.weight", "layer.5.weight", "widen.5.weight", "widen.6.weight"]
    assert output_types(g) == [TensorType("f32", (1, 6, 8, 8))]


@pytest.mark.parametrize(("mode", "op"), [(0, "relu"), (1, "sigmoid"), (2, "tanh")])
def test_if_else_chain(write_spec, mode: int, op: str) -> None:
    path = write_spec("""
        model M(mode: int = 0) {
            input x: f32[2, 3]
            if mode == 0 {
                y = relu(x)
            } else if mode == 1 {
                y = sigmoid(x)
            } else {
                y = tanh(x)
            }
            output y
        }
        """)
    ops = [n.op for n in build(path, sets=(f"mode={mode}",)).nodes]
    assert [o for o in ops if o != "identity"] == [op]


def test_output_of_an_assigned_value_keeps_its_name(write_spec) -> None:
    g = build(write_spec("""
        model M() {
            input x: f32[2, 3]
            y = relu(x)
            output y
        }
        """))
    assert g.outputs == ["y"]
    assert [n.op for n in g.nodes] == ["relu"]


def test_let_arithmetic(write_spec) -> None:
    g = build(write_spec("""
        model M() {
            input x: f32[2, 3]
            let half = 7 // 2
            let rest = -7 % 3
            let floor = -7 // 2 + 10
            let cube = 2 ** 3
            let mixed = 2 + 3 * 4 ** 2 - (1 + 1) * 3
            param dims: f32[half, rest, floor, cube] = 7 / 2
            param big: f32[mixed] = 0
            output y = x
        }
        """))
    # Python semantics: floor division and a modulo with the sign of the divisor.
    assert param_types(g)["dims"] == TensorType("f32", (3, 2, 6, 8))
    assert param_types(g)["big"] == TensorType("f32", (44,))
    assert g.params["dims"].init == Init("fill", (("value", 3.5),))


def test_sqrt_of_a_number_is_the_builtin_and_of_a_tensor_the_op(write_spec) -> None:
    g = build(write_spec("""
        model M(dim: int = 16) {
            input x: f32[2, 3]
            let fill = sqrt(2.25)
            param p: f32[int(sqrt(dim))] = fill
            output y = sqrt(x) * sqrt(dim)
        }
        """))
    assert param_types(g)["p"] == TensorType("f32", (4,))
    assert g.params["p"].init == Init("fill", (("value", 1.5),))
    assert [n.op for n in g.nodes].count("sqrt") == 1  # sqrt(dim) is a number, folded into a constant
    for arg, message in (("[1, 2]", "argument 'x' of sqrt() must be a tensor or a number, found [int]"),
                         ("-4", "sqrt() of a negative number (-4)"),
                         ("9, range=[1, 2]", "range= applies to a tensor's square root, not to a number's")):
        path = write_spec(f"""
            model M() {{
                input x: f32[2, 3]
                output y = x * sqrt({arg})
            }}
            """)
        with pytest.raises(NetdslError) as err:
            build(path)
        assert err.value.diag.message == message
        assert err.value.diag.span.line == 3


def test_true_division_gives_a_float(write_spec) -> None:
    path = write_spec("""
        model M() {
            input x: f32[2, 3]
            let h = 6 / 3
            param p: f32[h] = 0
            output y = x
        }
        """)
    with pytest.raises(NetdslError) as err:
        build(path)
    assert err.value.diag.message == "expected an int, found float 2.0"
    assert err.value.diag.help == "use // for integer division"


def test_require_and_boolean_logic(write_spec) -> None:
    path = write_spec("""
        model M(c: int = 8, strict: bool = false) {
            input x: f32[1, c]
            require c % 4 == 0 and (not strict or c > 16), "c ({c}) must be a multiple of 4"
            output y = x
        }
        """)
    assert output_types(build(path)) == [TensorType("f32", (1, 8))]
    with pytest.raises(NetdslError) as err:
        build(path, sets=("c=6",), inputs=("x=1x6",))
    assert err.value.diag.message == "constraint failed: c (6) must be a multiple of 4"
    with pytest.raises(NetdslError):
        build(path, sets=("strict=true",))


# ----------------------------------------------------------------------------- naming


ATTN_SPEC = """
block Attn(c: int) {
    input x: f32[N, c, H, W]
    output y = conv(x, c, kernel=1) as conv1
}
block Block(c: int) {
    input x: f32[N, c, H, W]
    output y = x + Attn(x, c) as attn
}
model Net(depths: [int] = [1, 2]) {
    input x: f32[N=1, 4, H=8, W=8]
    for s in range(len(depths)) {
        for i in range(depths[s]) {
            x = Block(x, 4) as stages.{s}.{i}
        }
    }
    output y = x
}
"""


def test_as_names_with_loop_segments_are_hierarchical(write_spec) -> None:
    g = build(write_spec(ATTN_SPEC))
    assert list(g.params) == [f"stages.{s}.{i}.attn.conv1.{w}" for s, i in [(0, 0), (1, 0), (1, 1)]
                              for w in ("weight", "bias")]
    assert "stages.0.1.attn.conv1.weight" in build(write_spec(ATTN_SPEC), sets=("depths=[2]",)).params


def test_named_and_inline_sub_blocks(write_spec) -> None:
    g = build(write_spec("""
        block Proj(c: int) {
            input x: f32[N, c, H, W]
            param scale: f32[1] = 1
            output y = scale * conv(x, c, kernel=1) as conv
        }
        model M() {
            input x: f32[N=1, 4, H=8, W=8]
            a = Proj(x, 4) as named
            output y = Proj(a, 4)
        }
        """))
    # A named instance prefixes its parameters; an inline one adds them to the caller's namespace.
    assert sorted(g.params) == ["conv.bias", "conv.weight", "named.conv.bias", "named.conv.weight",
                                "named.scale", "scale"]


def test_param_and_buffer_declarations(write_spec) -> None:
    g = build(write_spec("""
        model M(c: int = 4) {
            input x: f32[N=1, c, H=2, W=2]
            param gamma: f32[1, c, 1, 1] = 0.5
            param table: f32[3, c] = trunc_normal(0.02)
            buffer index: i64[c] = zeros()
            output y = gamma * x
        }
        """))
    assert {n: (p.kind, p.type, p.init) for n, p in g.params.items()} == {
        "gamma": ("param", TensorType("f32", (1, 4, 1, 1)), Init("fill", (("value", 0.5),))),
        "table": ("param", TensorType("f32", (3, 4)), Init("trunc_normal", (("std", 0.02),))),
        "index": ("buffer", TensorType("i64", (4,)), Init("zeros")),
    }


# ----------------------------------------------------------------------------- outputs, destructuring, comments


def test_multiple_outputs_and_split_destructuring(write_spec) -> None:
    g = build(write_spec("""
        block Halves(c: int) {
            input x: f32[N, c, H, W]
            lo, hi = split(x, [c // 2, c - c // 2])
            output lo
            output hi = relu(hi)
        }
        model M() {
            input x: f32[N=2, 6, H=4, W=4]
            a, b, c = split(x, [1, 2, 3])
            lo, hi = Halves(c, 3) as halves
            output lo
            output hi
            output a
        }
        """))
    assert g.outputs == ["lo", "hi", "a"]
    assert output_types(g) == [TensorType("f32", (2, 1, 4, 4)), TensorType("f32", (2, 2, 4, 4)),
                               TensorType("f32", (2, 1, 4, 4))]
    assert [n.op for n in g.nodes] == ["split", "split", "relu"]


def test_comments_anywhere(write_spec) -> None:
    g = build(write_spec("""
        # a file comment
        model M(c: int = 4,  # the width
                k: int = 1   # the kernel
                ) {  # after the brace
            # a whole-line comment
            input x: f32[N=1, c, H=4, W=4]  # the input
            output y = conv(x, c, kernel=k) as p  # the layer; "quotes" and {braces} are fine here
        }
        # the end
        """))
    assert list(g.params) == ["p.weight", "p.bias"]


# ----------------------------------------------------------------------------- symbolic dims and .shape


def test_symbolic_dims_with_defaults_and_input_flag(write_spec) -> None:
    path = write_spec("""
        model M(c: int = 4) {
            input x: f32[N=1, c, H=6, H + 2]
            require x.rank == 4 and x.dtype == "f32"
            let flat = x.shape[1] * x.shape[2] * x.shape[3]
            output y = reshape(x, [N, flat])
        }
        """)
    assert output_types(build(path)) == [TensorType("f32", (1, 4 * 6 * 8))]
    g = build(path, inputs=("x=3x4x5x7",))  # binds N and H; the last dim is checked against H + 2
    assert g.values["x"] == TensorType("f32", (3, 4, 5, 7))
    assert output_types(g) == [TensorType("f32", (3, 4 * 5 * 7))]


def test_block_binds_symbolic_dims_from_its_argument(write_spec) -> None:
    g = build(write_spec("""
        block Pool(c: int) {
            input x: f32[B, c, H, W]
            output y = avgpool(x, kernel=[H // 2, W // 2])
        }
        model M() {
            input x: f32[2, 3, 8, 6]
            output y = Pool(x, 3)
        }
        """))
    assert output_types(g) == [TensorType("f32", (2, 3, 2, 2))]


# ----------------------------------------------------------------------------- the bundled specs


NODE_LINE = re.compile(r"  (%\S+(?:, %\S+)*) = (\w+)\(.*?\)(?: \{.*\})? : (.+?)(?:  # .*)?")
TYPE = r"(?:f32|f16|f64|i64|i32|bool)\[\d+(?:,\d+)*\]"


def _show_acmix(run_cli, repo_root: Path, *extra: str) -> str:
    code, out, err = run_cli(["show", repo_root / "specs" / "acmix.net", "--entry", "ACmix",
                              "--set", "in_planes=64", "--set", "out_planes=64", "--input", "x=2x64x14x14",
                              *extra, "--ir"])
    assert (code, err) == (0, "")
    return out


def test_show_acmix_prints_every_value_with_a_concrete_type(run_cli, repo_root: Path) -> None:
    out = _show_acmix(run_cli, repo_root)
    lines = out.splitlines()
    assert lines[0] == "graph ACmix(%x: f32[2,64,14,14]) -> (%y: f32[2,64,14,14])"
    graph = build(repo_root / "specs" / "acmix.net", "ACmix", ("in_planes=64", "out_planes=64"), ("x=2x64x14x14",))
    node_lines = [ln for ln in lines if ln.startswith("  %")]
    assert len(node_lines) == len(graph.nodes)
    for line, node in zip(node_lines, graph.nodes):
        m = NODE_LINE.fullmatch(line)
        assert m, line
        types = m.group(3).split(", ")
        assert all(re.fullmatch(TYPE, t) for t in types), line
        assert types == [str(graph.values[o]) for o in node.outputs]
    assert lines[-1] == "  return %y"


def test_show_acmix_with_stride_2_halves_the_map(run_cli, repo_root: Path) -> None:
    out = _show_acmix(run_cli, repo_root, "--set", "stride=2")
    assert out.splitlines()[0] == "graph ACmix(%x: f32[2,64,14,14]) -> (%y: f32[2,64,7,7])"


@pytest.mark.parametrize("spec", REPO_SPECS, ids=[p.name for p in REPO_SPECS])
def test_every_bundled_spec_checks(run_cli, spec: Path) -> None:
    code, out, err = run_cli(["check", spec])
    assert (code, err) == (0, ""), err
    assert out.startswith("ok: ")
