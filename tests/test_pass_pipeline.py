"""Per-target pipelines on the bundled specs, the pass registry, pipeline errors and ``netdsl explain``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pass_support import TOL, at, builder_with_input, op_counts, random_feeds, run_ort

from netdsl.cost import graph_cost, node_macs
from netdsl.diagnostics import NetdslError
from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.ir import Graph, Init, TensorType
from netdsl.passes import registry
from netdsl.passes.base import PHASES, Pass, WeightedPass
from netdsl.passes.pipeline import PIPELINES, PassFailure, pipeline_passes, run_pipeline
from netdsl.printer import format_graph

SPECS = ("csa.net", "acmix.net")
# IR ops that map to layers the trt-restricted profile allows (conv, elementwise, shuffle, concat,
# slice, softmax, resize by scales) -- what the restricted pipelines may leave behind.
RESTRICTED_IR_OPS = {"conv", "add", "sub", "mul", "div", "relu", "sigmoid", "silu", "reshape", "transpose", "rotate",
                     "concat", "slice", "split", "softmax", "resize", "const", "identity", "avgpool"}


def spec_graph(repo_root: Path, name: str) -> tuple[Graph, dict[str, np.ndarray]]:
    """The spec's default model with seeded weights and random batch-norm statistics (so folding matters)."""
    graph = load_graph(repo_root / "specs" / name)
    weights = initial_weights(graph, seed=3)
    rng = np.random.default_rng(5)
    for node in graph.nodes:
        if node.op == "batchnorm":
            for stat in node.inputs[1:]:
                weights[stat] = (rng.uniform(0.5, 1.5, weights[stat].shape)
                                 if stat.endswith("running_var") else rng.normal(0, 0.3, weights[stat].shape))
                weights[stat] = weights[stat].astype(np.float32)
    return graph, weights


@pytest.mark.parametrize("target", sorted(PIPELINES))
@pytest.mark.parametrize("spec", SPECS)
def test_every_target_pipeline_keeps_the_outputs(repo_root: Path, spec: str, target: str) -> None:
    graph, weights = spec_graph(repo_root, spec)
    snapshot, kept_weights = format_graph(graph), dict(weights)
    result = run_pipeline(graph, target, weights=weights)
    assert format_graph(graph) == snapshot and weights.keys() == kept_weights.keys()  # the caller's data is untouched
    assert result.weights is not None and list(result.weights) == list(result.graph.params)
    feeds = random_feeds(graph)
    for want, got in zip(run_ort(graph, weights, feeds), run_ort(result.graph, result.weights, feeds), strict=True):
        np.testing.assert_allclose(got, want, **TOL)
    ops = set(op_counts(result.graph))
    if target.startswith("trt-"):
        assert ops <= RESTRICTED_IR_OPS, ops - RESTRICTED_IR_OPS
    if target == "torch":
        assert result.graph.params.keys() == graph.params.keys()  # checkpoints keep loading by name
    if target != "onnx" and target != "torch":
        assert "batchnorm" not in ops


@pytest.mark.slow
@pytest.mark.parametrize("target", ["trt-restricted", "trt-dla"])
def test_restricted_pipelines_lower_a_small_resnet_acmix(repo_root: Path, target: str) -> None:
    graph = load_graph(repo_root / "specs" / "models" / "resnet_acmix.net", sets=["layers=1,1,1,1", "num_classes=10"],
                       inputs=["x=1x3x64x64"])
    weights = initial_weights(graph, seed=1)
    result = run_pipeline(graph, target, weights=weights)
    ops = set(op_counts(result.graph))
    # The stem's max pool, the global mean and the classifier are lowered too; the batch norms
    # after ACmix (a sum, not a conv) stay, as the profiles allow with constant statistics.
    assert ops <= RESTRICTED_IR_OPS | {"batchnorm", "maxpool"} and "linear" not in ops
    assert ("maxpool" in ops) == (target == "trt-dla")
    feeds = random_feeds(graph)
    np.testing.assert_allclose(run_ort(result.graph, result.weights, feeds)[0], run_ort(graph, weights, feeds)[0],
                               **TOL)


def test_restricted_lowering_names_its_rules_in_the_provenance(repo_root: Path) -> None:
    graph, weights = spec_graph(repo_root, "acmix.net")
    result = run_pipeline(graph, "trt-restricted", weights=weights)
    spans = {str(n.provenance.span) for n in graph.nodes}
    lowered = [n for n in result.graph.nodes if "lower_local_attention" in n.provenance.rules]
    assert lowered and all(str(n.provenance.span) in spans for n in lowered)
    assert {rule for rule, *_ in result.log.entries} >= {"lower_local_attention", "fold_params"}


def test_user_passes_replace_the_pipeline_and_run_by_phase() -> None:
    assert pipeline_passes("onnx", ["dce", "shift_to_conv", "cse"]) == ["shift_to_conv", "cse", "dce"]
    b, x = builder_with_input(1, 4, 3, 3)
    b.output(b.op("shift", [x], at(2), offsets=((0, 1), (1, 0))))
    result = run_pipeline(b.graph, "onnx", passes=["shift_to_conv"])
    assert op_counts(result.graph) == {"const": 1, "conv": 1} and result.weights is None


def test_unknown_pass_is_a_user_error_with_a_suggestion() -> None:
    b, x = builder_with_input(1, 4, 3, 3)
    b.output(b.op("relu", [x], at(2)))
    with pytest.raises(NetdslError) as err:
        run_pipeline(b.graph, "onnx", passes=["cse", "shift_to_cnv"])
    assert "unknown pass 'shift_to_cnv'" in str(err.value) and err.value.diag.help == "did you mean 'shift_to_conv'?"
    with pytest.raises(NetdslError, match="unknown target 'trt-restrcted'"):
        run_pipeline(b.graph, "trt-restrcted")


def test_print_after_shows_the_ir_after_that_pass() -> None:
    b, x = builder_with_input(1, 4, 3, 3)
    b.output(b.op("roll", [x], at(2), shifts=(1,), axes=(3,)))
    printed: list[str] = []
    run_pipeline(b.graph, "onnx", passes=["roll_to_slice_concat", "dce"], print_after="roll_to_slice_concat",
                 printer=printed.append)
    assert len(printed) == 1 and printed[0].startswith("# IR after roll_to_slice_concat")
    assert "concat(" in printed[0] and "roll(" not in printed[0]
    with pytest.raises(NetdslError, match="--print-after 'cse' is not one of the passes run"):
        run_pipeline(b.graph, "onnx", passes=["dce"], print_after="cse")


def test_weighted_passes_need_the_weights(repo_root: Path) -> None:
    graph, _ = spec_graph(repo_root, "csa.net")
    with pytest.raises(ValueError, match="fold_batchnorm"):
        run_pipeline(graph, "trt")
    with pytest.raises(ValueError, match="weights miss parameters"):
        run_pipeline(graph, "trt", weights={})


def test_a_pass_that_breaks_the_ir_is_an_internal_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def corrupt(graph: Graph, log: object) -> Graph:
        graph.values[graph.nodes[0].outputs[0]] = TensorType("f32", (1,))
        return graph

    passes, _ = registry._load()
    monkeypatch.setitem(passes, "corrupt", Pass("corrupt", "optimize", corrupt, "breaks the recorded types"))
    b, x = builder_with_input(1, 4, 3, 3)
    b.output(b.op("relu", [x], at(2)))
    with pytest.raises(PassFailure, match="pass 'corrupt' failed"):
        run_pipeline(b.graph, "onnx", passes=["corrupt"])


def test_registry_holds_every_pipeline_pass_with_a_phase_and_a_docstring() -> None:
    passes = registry.all_passes()
    assert registry.unavailable_passes() == {}
    for name in {n for names in PIPELINES.values() for n in names}:
        assert name in passes
    for name, p in passes.items():
        assert p.name == name and p.phase in PHASES and len(p.doc) > 80
        assert isinstance(p, (Pass, WeightedPass))


def test_each_pass_module_holds_one_pass_named_like_it() -> None:
    # One pass per file, named like the file: lookup() finds it by importing that module alone.
    passes = registry.all_passes()
    assert sorted(passes) == sorted(registry.PASS_MODULES)
    for name in registry.PASS_MODULES:
        assert registry._own_module_pass(name) is passes[name]
    assert registry._own_module_pass("not_a_pass") is None


def test_a_pass_whose_module_is_missing_is_unavailable_not_skipped() -> None:
    code = ("import sys; sys.modules['netdsl.passes.dce'] = None; from netdsl.passes import registry; "
            "print(registry.unavailable_passes())\n"
            "try:\n    registry.lookup('dce')\nexcept Exception as err:\n    print(err)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    why = "module netdsl.passes.dce is not part of this build"
    assert proc.stdout.splitlines() == [str({"dce": why}), f"pass 'dce' is not available: {why}"]


def test_cost_model_counts_macs_params_and_activation_bytes() -> None:
    b, x = builder_with_input(2, 4, 6, 6)
    w = b.param("c.weight", TensorType("f32", (8, 2, 3, 3)), Init("zeros"))
    y = b.op("conv", [x, w], at(2), stride=(2, 2), pads=(1, 1, 1, 1), dilation=(1, 1), groups=2)
    b.output(b.op("relu", [y], at(3)))
    cost = graph_cost(b.graph)
    assert node_macs(b.graph, b.graph.nodes[0]) == 2 * 8 * 3 * 3 * 2 * 3 * 3
    assert cost.macs == 2 * 8 * 3 * 3 * 2 * 3 * 3 and cost.params == 8 * 2 * 3 * 3
    assert cost.activation_bytes == 2 * (2 * 8 * 3 * 3 * 4) and cost.ops == {"conv": 1, "relu": 1}


def test_explain_prints_rewrites_and_costs(repo_root: Path, run_cli) -> None:
    code, out, err = run_cli(["explain", repo_root / "specs" / "csa.net", "--target", "trt"])
    assert code == 0, err
    assert "fold_batchnorm" in out and "specs/csa.net:24:14" in out and "batchnorm(v) as act_v.0" in out
    for row in ("MACs", "parameters (elements)", "activation bytes", "Ops by type"):
        assert row in out
    macs = graph_cost(load_graph(repo_root / "specs" / "csa.net")).macs
    assert f"{macs:,}" in out


def test_explain_rejects_an_unknown_pass(repo_root: Path, run_cli) -> None:
    code, out, err = run_cli(["explain", repo_root / "specs" / "acmix.net", "--passes", "cse,dse"])
    assert code == 2 and "unknown pass 'dse'" in err and "did you mean 'dce'?" in err and "Traceback" not in err


def test_a_pass_is_skipped_while_the_graph_has_none_of_the_ops_it_rewrites(
        repo_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graph, weights = spec_graph(repo_root, "csa.net")
    assert "maxpool" not in {n.op for n in graph.nodes} and "silu" in {n.op for n in graph.nodes}
    verified: list[int] = []
    monkeypatch.setattr("netdsl.passes.pipeline.verify", lambda g: verified.append(len(g.nodes)))
    skipped = run_pipeline(graph, "trt-restricted", weights, passes=["maxpool_to_elementwise"])
    assert verified == [] and format_graph(skipped.graph) == format_graph(graph)
    lowered = run_pipeline(graph, "trt-restricted", weights, passes=["maxpool_to_elementwise", "silu_to_sigmoid"])
    assert len(verified) == 1 and "silu" not in {n.op for n in lowered.graph.nodes}
