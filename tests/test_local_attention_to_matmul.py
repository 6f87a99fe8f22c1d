"""``local_attention_to_matmul``: differential tests through ONNX Runtime.

Each graph runs in ONNX Runtime before the pass (the backend's own emission of ``local_attention``) and
after it (two batched matrix products over row bands); outputs must agree within 1e-5, the rewritten
graph holds exactly the ops the pass emits, and each new node carries the op's span and the rule.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pass_attention import (
    LOCAL_CASES,
    SPAN,
    assert_same_outputs,
    local_attention_graph,
    op_types,
    random_feeds,
    rewritten,
)

from netdsl.driver import load_graph
from netdsl.initializers import initial_weights
from netdsl.passes import local_attention_to_matmul
from netdsl.passes.pipeline import run_pipeline

EMITTED = {"mul", "add", "const", "reshape", "transpose", "pad", "slice", "concat", "matmul", "softmax"}


@pytest.mark.parametrize(("batch", "channels", "size", "heads", "kernel", "stride", "pos"), LOCAL_CASES)
def test_matmul_form_matches(batch: int, channels: int, size: tuple[int, int], heads: int, kernel: int, stride: int,
                             pos: str) -> None:
    before = local_attention_graph(batch, channels, size, heads, kernel, stride, pos)
    after = rewritten(before, local_attention_to_matmul.PASS)
    assert_same_outputs(before, after, initial_weights(before, seed=kernel), random_feeds(before, seed=channels))
    # The positional encoding is subtracted from the keys; a map of one tile needs no concat of tiles.
    kept = {n.op for n in before.nodes if n.op != "local_attention"}
    assert {"matmul", "softmax"} <= op_types(after) <= EMITTED | kept | {"sub"}
    assert ("sub" in op_types(after)) == (pos != "none")
    untouched = {o for n in before.nodes if n.op != "local_attention" for o in n.outputs}
    for node in after.nodes:
        if not untouched & set(node.outputs):
            assert node.provenance.span == SPAN
            assert node.provenance.rules == (local_attention_to_matmul.RULE,)


@settings(max_examples=15, deadline=None)
@given(heads=st.sampled_from([1, 2]), kernel=st.sampled_from([3, 5]), stride=st.sampled_from([1, 2]),
       h=st.integers(3, 7), w=st.integers(3, 7), pos=st.sampled_from(["none", "grid", "input"]))
def test_matmul_form_matches_any_geometry(heads: int, kernel: int, stride: int, h: int, w: int, pos: str) -> None:
    size = (max(h * stride, kernel), max(w * stride, kernel))
    before = local_attention_graph(1, 4 * heads, size, heads, kernel, stride, pos)
    after = rewritten(before, local_attention_to_matmul.PASS)
    assert_same_outputs(before, after, initial_weights(before, seed=h), random_feeds(before, seed=w))


@pytest.mark.parametrize("stride", [1, 2])
def test_acmix_block_on_the_onnx_target(repo_root: Path, stride: int) -> None:
    """The onnx pipeline takes this form: two matrix products, no window slot unrolled."""
    graph = load_graph(repo_root / "specs" / "acmix.net", entry="ACmix",
                       sets=["in_planes=16", "out_planes=16", f"stride={stride}"], inputs=["x=2x16x10x12"])
    weights = initial_weights(graph, seed=stride)
    lowered = run_pipeline(graph, "onnx", weights)
    assert sum(n.op == "matmul" for n in lowered.graph.nodes) == 2
    assert len(lowered.graph.nodes) < 80  # against about 510 with a node group per window slot
    assert_same_outputs(graph, lowered.graph, {**weights, **(lowered.weights or {})}, random_feeds(graph, seed=1))
