"""The coverage report's suggested rewrites lead somewhere: which target lowers a refused op, from data.

The note is derived from the ONNX ops each IR op's emission declares and the passes whose
postconditions remove IR ops (:mod:`netdsl.coverage.lowering_hints`); these tests check the
declarations against what the emitter really emits, the wording of the note, and that no hint in
a bundled profile sends the user to an op or pass the profile's own target cannot deliver.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
from test_models import SMALL_CSA
from test_restricted_models import RUNS, SMALL, SPECS, Case

from netdsl.backends.onnx_backend import emitted_ops, supported_ops, to_onnx
from netdsl.backends.onnx_builder import Lowering, OnnxGraphBuilder
from netdsl.coverage.checker import check_coverage
from netdsl.coverage.lowering_hints import lowering_note, lowering_targets_of
from netdsl.coverage.profile import BUNDLED_PROFILES, load_profile
from netdsl.initializers import initial_weights
from netdsl.ir import Node
from netdsl.passes.pipeline import ONNX_FORMS, PIPELINES, run_pipeline

ONNX_OPS = {schema.name for schema in onnx.defs.get_all_schemas()}
LIBRARY = [*SMALL.values(), Case("models/convselfattn.net", sets={**SMALL_CSA, "num_classes": 10}),
           Case("models/swin_acmix_tiny.net", sets={"embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2],
                                                    "window_size": 4, "num_classes": 10}, shape=(1, 3, 32, 32)),
           Case("acmix.net", "ACmix", {"in_planes": 8, "out_planes": 8, "head": 2, "stride": 2}, (1, 8, 10, 10))]


def test_every_lowering_declares_the_onnx_ops_it_emits(monkeypatch: pytest.MonkeyPatch) -> None:
    emitted: dict[str, set[str]] = defaultdict(set)
    lower = OnnxGraphBuilder.lower

    def recording(em: OnnxGraphBuilder, index: int, node: Node, lowering: Lowering) -> None:
        first = len(em.nodes)
        lower(em, index, node, lowering)
        emitted[node.op].update(n.op for n in em.nodes[first:])

    monkeypatch.setattr(OnnxGraphBuilder, "lower", recording)
    for case in LIBRARY:
        graph = case.graph()
        weights = initial_weights(graph)
        # "torch" keeps every op as written, so the emitter meets the ops the other pipelines lower; the ops
        # it has no one-op form of are decomposed on that path too.
        for target in ("torch", "onnx", "trt-restricted", "trt-dla"):
            passes = [*PIPELINES["torch"], *ONNX_FORMS] if target == "torch" else None
            result = run_pipeline(graph, target, weights=weights, passes=passes)
            to_onnx(result.graph, result.weights)
    assert {"layernorm", "linear", "matmul", "reduce_max", "softmax"} <= set(emitted)
    assert sorted(op for op in supported_ops() if not emitted_ops(op)) == []
    undeclared = {op: sorted(ops - emitted_ops(op)) for op, ops in emitted.items() if ops - emitted_ops(op)}
    assert undeclared == {}


def test_a_refused_op_names_the_target_that_lowers_it(run_cli: Callable, tmp_path: Path) -> None:
    case = SMALL["cbam"]
    out = tmp_path / "cbam.onnx"
    code, _, err = run_cli(["compile", SPECS / case.spec, "--target", "onnx", "-o", out, *case.flags()])
    assert code == 0, err
    report = check_coverage(onnx.load(str(out)), load_profile("trt-restricted"))
    (reduce_max, *_) = [n for n in report.violations() if n.op == "ReduceMax"]
    assert reduce_max.rewrite.startswith(
        "netdsl lowers ReduceMax for --target trt-restricted (from `reduce_max` by reduce_max_to_elementwise)")
    code, _, err = run_cli(["compile", SPECS / case.spec, "--target", "trt-restricted", "-o", out, *case.flags()])
    assert code == 0, err
    assert "ReduceMax" not in {n.op_type for n in onnx.load(str(out)).graph.node}


def test_the_note_names_every_source_and_those_no_target_lowers() -> None:
    note = lowering_note("MatMul")
    assert note == "netdsl lowers MatMul for --target trt-restricted and trt-dla (from `matmul` by matmul_to_conv)"
    note = lowering_note("Gemm")
    assert note == "netdsl lowers Gemm for --target trt-restricted and trt-dla (from `linear` by linear_to_conv)"
    assert lowering_note("Conv") is None


def _hints(profile_name: str) -> list[tuple[str, str]]:
    """(op, hint) for every suggested rewrite a bundled profile writes, on its op rules and their limits."""
    profile = load_profile(profile_name)
    return [(op, hint) for op, rule in profile.ops.items()
            for hint in [rule.rewrite, *(limit.rewrite for limit in rule.limits)] if hint]


@pytest.mark.parametrize("profile_name", BUNDLED_PROFILES)
def test_no_suggested_rewrite_is_a_dead_end(profile_name: str) -> None:
    profile = load_profile(profile_name)
    dead = []
    for op, hint in _hints(profile_name):
        for word in set(re.findall(r"\b[A-Z][A-Za-z]+\b", hint)) & ONNX_OPS:
            rule = profile.rule_for(word)
            if not (rule is not None and rule.allowed) and profile_name not in lowering_targets_of(word):
                dead.append(f"{op}: '{hint}' suggests {word}, refused under --target {profile_name}")
        for name in re.findall(r"`([a-z_0-9]+)`", hint):
            if name not in PIPELINES[profile_name]:
                dead.append(f"{op}: '{hint}' names pass {name}, not in the {profile_name} pipeline")
    assert dead == []


@pytest.mark.parametrize(("name", "target"), RUNS, ids=[f"{n}-{t}" for n, t in RUNS])
def test_every_node_the_onnx_target_leaves_refused_names_the_restricted_target(name: str, target: str) -> None:
    graph = SMALL[name].graph()
    result = run_pipeline(graph, "onnx", weights=initial_weights(graph))
    profile = load_profile(target)
    report = check_coverage(to_onnx(result.graph, result.weights), profile)
    refused = {n.op for n in report.violations() if (rule := profile.rule_for(n.op)) is None or not rule.allowed}
    assert refused, "the onnx target keeps ops the restricted profile refuses"
    assert sorted(op for op in refused if target not in lowering_targets_of(op)) == []


@pytest.mark.parametrize("profile_name", BUNDLED_PROFILES)
def test_profile_hints_leave_the_target_to_the_derived_note(profile_name: str) -> None:
    assert [hint for _, hint in _hints(profile_name) if "--target" in hint or "netdsl lowers" in hint] == []
