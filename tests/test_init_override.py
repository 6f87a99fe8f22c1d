"""``with init(...)`` clauses: the drawn weights of the bundled models, nesting order, untouched
declarations, determinism, the printed provenance, and the located error of each misuse."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from netdsl.backends.torch_backend import build_module
from netdsl.driver import load_graph
from netdsl.initializers import initial_value, initial_weights
from netdsl.ir import Graph

MODELS = Path(__file__).resolve().parents[1] / "specs" / "models"
SMALL_CSA = ["depths=1,1,1,1", "dims=16,24,32,48", "num_heads=1,1,2,2"]
SMALL_SWIN = ["embed_dim=16", "depths=2,2,2", "num_heads=1,2,4", "window_size=4", "num_classes=10"]


def drawn(graph: Graph, suffix: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded values of the parameters whose name ends with ``suffix``."""
    found = {n: initial_value(p, seed) for n, p in graph.params.items() if n.endswith(suffix)}
    assert found, f"no parameter ends with {suffix!r}"
    return found


def locate(text: str, snippet: str) -> str:
    """``"line:col"`` (1-based) of the first occurrence of ``snippet`` in ``text``."""
    pos = text.index(snippet)
    return f"{text.count(chr(10), 0, pos) + 1}:{pos - (text.rfind(chr(10), 0, pos) + 1) + 1}"


def shift_kernels(shape: tuple[int, ...], k: int) -> np.ndarray:
    """ACmix's shift initialisation: in-group channel j has a single one at (j // k, j % k)."""
    out = np.zeros(shape, np.float32)
    for j in range(shape[1]):
        out[:, j, j // k, j % k] = 1
    return out


# ----------------------------------------------------------------------------- the bundled models


@pytest.fixture(scope="module")
def csa_graph() -> Graph:
    return load_graph(MODELS / "convselfattn.net", "convselfattn", SMALL_CSA, [])


def test_every_conv_of_the_csa_backbone_is_trunc_normal_with_zero_bias(csa_graph: Graph) -> None:
    convs = [n[:-len(".weight")] for n, p in csa_graph.params.items() if n.endswith(".weight") and p.type.rank == 4]
    inner = [c for c in convs if c.startswith("stages.")]
    assert {c.rsplit(".", 1)[1] for c in inner} == {"v", "q", "qk", "qkv", "mlp"}  # the CSA block's own convs
    for conv in convs:
        w = initial_value(csa_graph.params[f"{conv}.weight"])
        b = initial_value(csa_graph.params[f"{conv}.bias"])
        assert np.all(b == 0), conv
        assert np.abs(w).max() < 0.02 * 6, conv  # no uniform_fan_in(1/sqrt(fan_in)) draw is left
    inner_weights = np.concatenate([initial_value(csa_graph.params[f"{c}.weight"]).ravel() for c in inner])
    assert inner_weights.size > 10_000
    assert inner_weights.std() == pytest.approx(0.02, rel=0.03)
    assert abs(inner_weights.mean()) < 0.001


def test_csa_batch_norms_and_head_keep_their_initialisers(csa_graph: Graph) -> None:
    for name, v in drawn(csa_graph, "act_v.0.weight").items():
        assert np.all(v == 1), name
    head = csa_graph.params["head.weight"]
    assert head.init.kind == "trunc_normal" and not head.provenance.rules


@pytest.fixture(scope="module")
def resnet_acmix_graph() -> Graph:
    return load_graph(MODELS / "resnet_acmix.net", None, ["layers=1,1,1,1"], [])


def test_resnet_acmix_dep_conv_is_kaiming_fan_out_not_shift(resnet_acmix_graph: Graph) -> None:
    deps = drawn(resnet_acmix_graph, "conv2.dep_conv.weight")
    assert len(deps) == 4
    for name, w in deps.items():
        out, _, kh, kw = w.shape
        assert not np.array_equal(w, shift_kernels(w.shape, 3)), name
        assert w.std() == pytest.approx(np.sqrt(2 / (out * kh * kw)), rel=0.05), name
    for name, w in drawn(resnet_acmix_graph, "conv2.fc.weight").items():  # fan-out of a 1x1 conv: its out count
        assert w.std() == pytest.approx(np.sqrt(2 / w.shape[0]), rel=0.15), name


def test_resnet_acmix_keeps_conv_biases_rates_and_the_classifier(resnet_acmix_graph: Graph) -> None:
    for name, b in drawn(resnet_acmix_graph, "conv2.conv1.bias").items():
        fan_in = resnet_acmix_graph.params[name].init.arg("fan_in")
        assert np.abs(b).max() <= fan_in ** -0.5 and b.std() > 0, name  # PyTorch's default, not zeroed
    for name, r in drawn(resnet_acmix_graph, ".rate1").items():
        assert np.all(r == 0.5), name
    fc = resnet_acmix_graph.params["fc.weight"]
    assert fc.init.kind == "uniform_fan_in" and not fc.provenance.rules


def assert_swin_linears_reinitialised(graph: Graph, some_linear: str, bias_suffix: str) -> None:
    """Every linear weight (``head``, ``qkv``, ``some_linear`` among them) drawn with std 0.02; biases
    ending in ``bias_suffix`` zero."""
    linears = [n for n, p in graph.params.items() if n.endswith(".weight") and p.type.rank == 2]
    assert {"head.weight", "layers.0.blocks.0.attn.qkv.weight", some_linear} <= set(linears)
    values = np.concatenate([initial_value(graph.params[n]).ravel() for n in linears])
    assert values.std() == pytest.approx(0.02, rel=0.03)
    for name, b in drawn(graph, bias_suffix).items():
        assert np.all(b == 0), name


def test_swin_acmix_keeps_dep_conv_shift_and_reinitialises_linears() -> None:
    graph = load_graph(MODELS / "swin_acmix_tiny.net", None, SMALL_SWIN, ["x=1x3x64x64"])
    for name, w in drawn(graph, "attn.dep_conv.weight").items():
        assert np.array_equal(w, shift_kernels(w.shape, 3)), name
    for name in drawn(graph, "attn.fc.weight"):
        assert graph.params[name].init.kind == "uniform_fan_in", name
    assert_swin_linears_reinitialised(graph, "layers.0.blocks.0.mlp.fc1.weight", "mlp.fc2.bias")
    assert graph.params["layers.0.blocks.0.attn.relative_position_bias_table"].provenance.rules == ()


# ----------------------------------------------------------------------------- semantics on small specs

NESTED = """
block Inner(c: int) {
    input x: f32[N, c, H, W]
    param g: f32[1] = 0.5
    output y = g * conv(x, c, kernel=3, padding=1) as conv
}

block Outer(c: int) {
    input x: f32[N, c, H, W]
    y = Inner(x, c) as inner with init(conv.weight = normal(std=0.5), conv.bias = ones())
    output y = batchnorm(conv(y, c, kernel=1) as proj) as bn
}

model m(c: int = 8) {
    input x: f32[N=1, c, H=8, W=8]
    a = Outer(x, c) as a
    b = Outer(x, c) as b with init(conv.weight = trunc_normal(std=0.01), batchnorm.running_var = zeros())
    output y = a + b
}
"""


def spec_graph(tmp_path: Path, text: str) -> Graph:
    path = tmp_path / "t.net"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return load_graph(path, None, [], [])


def test_inner_clause_applies_where_no_outer_one_selects(tmp_path: Path) -> None:
    graph = spec_graph(tmp_path, NESTED)
    weights = initial_weights(graph)
    assert weights["a.inner.conv.weight"].std() == pytest.approx(0.5, rel=0.2)
    assert np.all(weights["a.inner.conv.bias"] == 1)
    assert graph.params["a.proj.weight"].init.kind == "uniform_fan_in"  # outside the inner clause


def test_outer_clause_wins_as_pytorch_apply_runs_last(tmp_path: Path) -> None:
    graph = spec_graph(tmp_path, NESTED)
    weights = initial_weights(graph)
    for name in ("b.inner.conv.weight", "b.proj.weight"):
        assert graph.params[name].init.kind == "trunc_normal"
        assert weights[name].std() == pytest.approx(0.01, rel=0.3), name
    assert np.all(weights["b.inner.conv.bias"] == 1)  # the outer clause does not select biases
    assert np.all(weights["b.bn.running_var"] == 0) and np.all(weights["a.bn.running_var"] == 1)
    (rule,) = graph.params["b.inner.conv.weight"].provenance.rules
    where = locate(textwrap.dedent(NESTED).lstrip("\n"), "conv.weight = trunc")
    assert rule == f"with init(conv.weight = trunc_normal(std=0.01)) at {tmp_path / 't.net'}:{where}"


def test_declared_params_are_untouched(tmp_path: Path) -> None:
    graph = spec_graph(tmp_path, NESTED)
    for name in ("a.inner.g", "b.inner.g"):
        assert graph.params[name].init.kind == "fill" and not graph.params[name].provenance.rules
        assert initial_value(graph.params[name]).tolist() == [0.5]


def test_overrides_are_deterministic_and_leave_other_streams_alone(tmp_path: Path) -> None:
    first = initial_weights(spec_graph(tmp_path, NESTED), seed=3)
    again = initial_weights(spec_graph(tmp_path, NESTED), seed=3)
    assert first.keys() == again.keys()
    assert all(np.array_equal(first[k], again[k]) for k in first)
    plain = initial_weights(spec_graph(tmp_path, NESTED.replace(
        " with init(conv.weight = trunc_normal(std=0.01), batchnorm.running_var = zeros())", "")), seed=3)
    assert np.array_equal(first["a.proj.weight"], plain["a.proj.weight"])
    assert not np.array_equal(first["b.proj.weight"], plain["b.proj.weight"])


def test_the_generated_torch_module_initialises_with_the_overrides(tmp_path: Path) -> None:
    graph = spec_graph(tmp_path, NESTED)
    torch.manual_seed(0)
    state = build_module(graph).state_dict()
    assert torch.all(state["b.bn.running_var"] == 0) and torch.all(state["a.inner.conv.bias"] == 1)
    assert float(state["a.inner.conv.weight"].std()) == pytest.approx(0.5, rel=0.2)
    assert float(state["b.inner.conv.weight"].abs().max()) < 0.06


def test_show_ir_prints_the_effective_init_and_the_clause(run_cli, write_spec, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_spec(NESTED)
    code, out, err = run_cli(["show", str(path), "--ir"])
    assert (code, err) == (0, "")
    line = next(x for x in out.splitlines() if x.startswith("  param @b.inner.conv.weight"))
    where = locate(path.read_text(), "conv.weight = trunc")
    assert line == ("  param @b.inner.conv.weight: f32[8,8,3,3] = trunc_normal(std=0.01)  "
                    f"# via with init(conv.weight = trunc_normal(std=0.01)) at t.net:{where}")
    code, out, _ = run_cli(["show", str(path), "--ir", "--no-locations"])
    assert code == 0 and "  param @b.inner.conv.weight: f32[8,8,3,3] = trunc_normal(std=0.01)\n" in out


def test_kaiming_normal_in_a_param_declaration(tmp_path: Path) -> None:
    graph = spec_graph(tmp_path, """
        model m() {
            input x: f32[N=1, 4, H=2, W=2]
            param w: f32[64, 4, 3, 3] = kaiming_normal(mode="fan_out")
            output y = x + 0
        }
        """)
    assert str(graph.params["w"].init) == "kaiming_normal_fan_out(fan_out=576)"
    assert initial_value(graph.params["w"]).std() == pytest.approx(np.sqrt(2 / 576), rel=0.05)


# ----------------------------------------------------------------------------- located errors

BASE = """model m() {{
    input x: f32[N=1, 4, H=8, W=8]
    y = relu(batchnorm(conv(x, 4, kernel=3, padding=1, bias=false) as c) as bn) {clause}
    output y
}}
"""


def check_error(run_cli, write_spec, text: str) -> tuple[str, str, str]:
    """Run ``netdsl check`` on ``text``; require exit 2 and no traceback; return (message, location, caret line)."""
    code, out, err = run_cli(["check", str(write_spec(text))])
    assert code == 2 and out == "" and "Traceback" not in err, err
    lines = err.splitlines()
    assert lines[0].startswith("error: ")
    return lines[0][len("error: "):], lines[1].strip(), err


def underlined(err: str) -> str:
    """The source text under the carets of a rendered diagnostic."""
    lines = err.splitlines()
    caret = next(i for i, x in enumerate(lines) if x.strip().startswith("|") and "^" in x)
    source = lines[caret - 1].split("| ", 1)[1]
    marks = lines[caret].split("| ", 1)[1]
    start = len(marks) - len(marks.lstrip())
    return source[start:start + marks.count("^")]


CASES = [
    pytest.param("with init(convv.weight = zeros())", "unknown op 'convv' in init selector 'convv.weight'",
                 "convv", "convv", "help: did you mean 'conv'?", id="unknown-op"),
    pytest.param("with init(relu.weight = zeros())", "relu() creates no parameters, so 'relu.weight' selects nothing",
                 "relu.", "relu",
                 "help: ops that create parameters: batchnorm, conv, groupnorm, instancenorm, layernorm, linear",
                 id="op-without-parameters"),
    pytest.param("with init(conv.wieght = zeros())", "conv creates no parameter 'wieght'", "wieght", "wieght",
                 "help: did you mean 'weight'?", id="unknown-role"),
    pytest.param("with init(conv.weight = trunc_norml(std=0.02))", "unknown initialiser 'trunc_norml'", "trunc_norml",
                 "trunc_norml", "help: did you mean 'trunc_normal'?", id="unknown-initialiser"),
    pytest.param("with init(conv.weight = 3)",
                 "'conv.weight' needs an initialiser call such as trunc_normal(std=0.02), found int 3", "3)", "3",
                 "help: initialisers: kaiming_normal, normal, ones, relative_position_index, shift_kernels, "
                 "trunc_normal, uniform_fan_in, zeros", id="not-a-call"),
    pytest.param("with init(conv.bias = zeros())", "init selector 'conv.bias' matches no parameter created by this "
                 "statement", "conv.bias", "conv.bias",
                 "help: the statement creates batchnorm.bias, batchnorm.num_batches_tracked, batchnorm.running_mean, "
                 "batchnorm.running_var, batchnorm.weight, conv.weight", id="matches-nothing"),
    pytest.param("with init(conv.weight = ones(), conv.weight = zeros())",
                 "init selector 'conv.weight' is given twice", "conv.weight = zeros", "conv.weight", None,
                 id="given-twice"),
    pytest.param("with init(conv.weight = trunc_normal(stdd=0.02))", "trunc_normal() has no argument 'stdd'",
                 "stdd", "stdd=0.02", "help: did you mean 'std'?", id="unknown-argument"),
    pytest.param("with init(conv.weight = normal(std=\"big\"))",
                 "argument 'std' of normal() must be a number, found str \"big\"", "\"big", "\"big\"", None,
                 id="argument-type"),
    pytest.param("with init(conv.weight = kaiming_normal(mode=\"fan_in\"))",
                 "argument 'mode' of kaiming_normal() must be one of 'fan_out', found \"fan_in\"", "\"fan_in",
                 "\"fan_in\"", None, id="kaiming-mode"),
    pytest.param("with init(bn.weight = ones())", "unknown op 'bn' in init selector 'bn.weight'", "bn.weight", "bn",
                 "help: ops that create parameters: batchnorm, conv, groupnorm, instancenorm, layernorm, linear",
                 id="layer-name-is-not-an-op"),
]


@pytest.mark.parametrize(("clause", "message", "at", "under", "help_line"), CASES)
def test_clause_errors_are_located(run_cli, write_spec, monkeypatch, tmp_path, clause: str, message: str,
                                   at: str, under: str, help_line: str | None) -> None:
    """``at``: the text the location points at (its first occurrence in the spec)."""
    monkeypatch.chdir(tmp_path)
    text = BASE.format(clause=clause)
    got, location, err = check_error(run_cli, write_spec, text)
    assert got == message
    assert location == f"--> t.net:{locate(text, at)}"
    assert underlined(err) == under
    if help_line:
        assert f"= {help_line}" in err


def test_an_initialiser_that_does_not_fit_names_the_parameter(run_cli, write_spec, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    text = """block B(c: int) {
    input x: f32[N, c, H, W]
    output y = conv(x, c, kernel=1) as proj
}
model m() {
    input x: f32[N=1, 4, H=8, W=8]
    y = B(x, 4) as blk with init(conv.bias = kaiming_normal(mode="fan_out"))
    output y
}
"""
    got, location, err = check_error(run_cli, write_spec, text)
    assert got == ("kaiming_normal() cannot initialise 'blk.proj.bias' (f32[4]): its fan-out is read from a weight "
                   "shape [out, in, ...], which needs rank 2 or more")
    assert location == f"--> t.net:{locate(text, 'kaiming')}"
    assert underlined(err) == 'kaiming_normal(mode="fan_out")'
    assert f"= note: 'blk.proj.bias' is created at t.net:{locate(text, 'conv(x')}" in err


def test_unknown_clause_and_with_as_a_name_are_syntax_errors(run_cli, write_spec, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    text = BASE.format(clause="with precision(conv.weight = ones())")
    got, location, err = check_error(run_cli, write_spec, text)
    assert (got, location, underlined(err)) == ("unknown clause 'with precision'",
                                                f"--> t.net:{locate(text, 'precision')}", "precision")
    text = "model m() {\n    input x: f32[N=1, 4, H=8, W=8]\n    with = relu(x)\n    output y = with\n}\n"
    got, location, _ = check_error(run_cli, write_spec, text)
    assert got.startswith("syntax error: expected a statement") and got.endswith("found 'with'")
    assert location == "--> t.net:3:5"


def test_swin_t_reinitialises_every_linear_like_its_reference() -> None:
    graph = load_graph(MODELS / "swin_tiny.net", None, SMALL_SWIN, ["x=1x3x64x64"])
    assert_swin_linears_reinitialised(graph, "layers.0.downsample.reduction.weight", "attn.proj.bias")
