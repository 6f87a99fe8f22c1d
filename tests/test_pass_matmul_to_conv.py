"""``matmul_to_conv`` and the chunked contraction it shares with ``lower_attention``: differential tests.

Each graph runs in ONNX Runtime before the pass (MatMul / the backend's attention) and after it
(restricted ops only), on the same random inputs; the pieces of every product are checked against
the contraction budget.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pass_support import add_param, at, check_rewrite, f32, op_counts

from netdsl.builder import GraphBuilder
from netdsl.ir import Graph
from netdsl.passes import contraction, lower_attention, matmul_to_conv
from netdsl.passes.base import Pass, RewriteLog


def matmul_graph(a_shape: tuple[int, ...], b_shape: tuple[int, ...], const: str = "") -> tuple[Graph, dict]:
    """``a @ b`` with ``a``/``b`` graph inputs, or a parameter for the one named by ``const`` ("a" or "b")."""
    b = GraphBuilder("mm")
    weights = {}
    names = []
    for name, shape in (("a", a_shape), ("b", b_shape)):
        if name == const:
            value = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)
            names.append(add_param(b, f"{name}.weight", value))
            weights[f"{name}.weight"] = value
        else:
            names.append(b.input(name, f32(*shape)))
    b.output(b.op("matmul", names, at(4)))
    return b.graph, weights


def lowered(p: Pass, graph: Graph) -> Graph:
    return p.run(copy.deepcopy(graph), RewriteLog())


def largest_product(graph: Graph) -> int:
    """Elements of the largest Mul output: the pieces of the broadcast products."""
    return max(graph.values[n.outputs[0]].numel for n in graph.nodes if n.op == "mul")


@pytest.fixture
def small_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """No 4 MiB floor: pieces of at most the largest operand or output, so that small cases get chunked."""
    monkeypatch.setattr(contraction, "MIN_BUDGET", 0)


ACTIVATION_CASES = [
    # a shape, b shape
    ((5, 7), (7, 3)),
    ((2, 3, 6, 4), (2, 3, 4, 9)),
    ((2, 1, 6, 4), (3, 4, 5)),      # leading axes broadcast: a is expanded
    ((1, 6, 4), (2, 3, 4, 5)),      # a's leading axes all 1: the Mul broadcasts it
    ((4, 2, 40), (4, 40, 3)),       # K larger than the output
]


@pytest.mark.parametrize(("a_shape", "b_shape"), ACTIVATION_CASES)
def test_activation_matmul_lowers_within_budget_and_matches(small_budget: None, a_shape: tuple[int, ...],
                                                            b_shape: tuple[int, ...]) -> None:
    graph, _ = matmul_graph(a_shape, b_shape)
    after, _ = check_rewrite(matmul_to_conv.PASS, graph, op_counts(lowered(matmul_to_conv.PASS, graph)))
    counts = op_counts(after)
    assert counts["conv"] >= 1 and counts["mul"] >= 1 and counts["matmul"] == 0
    (m, k), n = a_shape[-2:], b_shape[-1]
    p = math.prod(graph.values[graph.outputs[0]].shape[:-2])
    assert largest_product(after) <= max(p * m * n, p * k * m, p * k * n)
    batch = graph.values[graph.outputs[0]].shape[:-2]
    expanded = sum(shape[:-2] != batch and math.prod(shape[:-2]) > 1 for shape in (a_shape, b_shape))
    # No blocks of K (added up): one row of the product is the size of an operand, within the budget.
    assert counts["add"] == expanded


def conv_groups(graph: Graph) -> list[tuple[int, int]]:
    """(input channels, groups) of every conv of ``graph``."""
    return [(graph.values[n.inputs[0]].shape[1], n.attrs["groups"]) for n in graph.nodes if n.op == "conv"]


def test_global_product_is_cut_into_row_groups_and_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """[1, 96, 8] x [1, 8, 96], a budget of the output: two row blocks of 48 stacked on the channels, each conv
    summing 8 channels per group, in 8 chunks of 6 rows."""
    graph, _ = matmul_graph((1, 96, 8), (1, 8, 96))
    plan = contraction.plan_contraction(1, 8, 96, 96, budget=96 * 96)
    assert (plan.grouping, plan.groups, plan.axis, plan.chunk, plan.kblock, plan.largest) == (
        contraction.ROW_GROUPS, 2, contraction.ROWS, 6, 8, 96 * 96)
    assert plan.bytes_moved >= 2 * 4 * 8 * 96 * 96  # the product is written and read at least once
    whole = contraction.plan_contraction(1, 8, 96, 96, budget=8 * 96 * 96)
    assert (whole.chunk, whole.nodes) == (48, 4)  # Mul, Conv, the transpose stacking a, the concat tiling b
    monkeypatch.setattr(contraction, "MIN_BUDGET", 96 * 96)
    monkeypatch.setattr(contraction, "BUDGET_FACTOR", 0.0)
    after, _ = check_rewrite(matmul_to_conv.PASS, graph, op_counts(lowered(matmul_to_conv.PASS, graph)))
    assert conv_groups(after) == [(16, 2)] * 8
    assert op_counts(after)["mul"] == 8 and largest_product(after) == 2 * 8 * 6 * 96


def test_long_contraction_into_a_small_output_sums_groups_of_k() -> None:
    """[1, 6, 96] x [1, 96, 64]: each half of K summed into its own channel, the two channels added by a last conv."""
    graph, _ = matmul_graph((1, 6, 96), (1, 96, 64))
    plan = contraction.plan_contraction(1, 96, 6, 64)
    assert (plan.grouping, plan.groups, plan.chunk) == (contraction.CONTRACTED_GROUPS, 2, 6)
    after, _ = check_rewrite(matmul_to_conv.PASS, graph, op_counts(lowered(matmul_to_conv.PASS, graph)))
    assert conv_groups(after) == [(96, 2), (2, 1)]


def test_an_ungrouped_sum_is_charged_the_blocked_reorder() -> None:
    """The same [1, 7, k] x [1, k, 7] product (7 rows: no row groups): 8 channels pay a second pass over the product,
    7 do not."""
    blocked, plain = contraction.plan_contraction(1, 8, 7, 7), contraction.plan_contraction(1, 7, 7, 7)
    assert (blocked.grouping, plain.grouping) == (contraction.UNGROUPED, contraction.UNGROUPED)
    product = 4 * 7 * 7
    assert blocked.bytes_moved - plain.bytes_moved == 2 * product * 8 - 2 * product * 7 + 2 * product * 8


def test_chunks_keep_the_muls_last_axis_long() -> None:
    """The non-local block's logits, [1, 784, 32] x [1, 32, 784], under a 2^17-element budget: chunks of 2 rows of
    each row group, not 157 chunks of 5 columns, whose 5-wide runs of the Mul output cost ~25 ns each."""
    plan = contraction.plan_contraction(1, 32, 784, 784, budget=1 << 17)
    assert (plan.axis, plan.chunk, plan.runs) == (contraction.ROWS, 2, 32 * 784)
    columns = contraction._costed(contraction.COLUMNS, 5, 32, contraction.ROW_GROUPS, 2, (1, 32, 784, 784), 4,
                                  (32 * 784, 32 * 784))
    assert columns.runs == 32 * 784 * 157 and columns.cost > plan.cost


def test_constant_right_operand_becomes_a_linear_map() -> None:
    graph, weights = matmul_graph((2, 5, 6), (6, 4), const="b")
    check_rewrite(matmul_to_conv.PASS, graph, {"linear": 1, "transpose": 1}, weights=weights)


def test_constant_left_operand_becomes_a_conv_of_the_right() -> None:
    graph, weights = matmul_graph((3, 6), (2, 6, 5), const="a")
    check_rewrite(matmul_to_conv.PASS, graph, {"conv": 1, "reshape": 3}, weights=weights)


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 3), st.integers(1, 12), st.integers(1, 24), st.integers(1, 12), st.integers(0, 4000))
def test_contraction_matches_matmul_for_any_shape_and_budget(p: int, m: int, k: int, n: int, budget: int) -> None:
    """Any budget (0 = the finest cut) gives the product, with no piece above the budget when one fits."""
    graph, _ = matmul_graph((p, m, k), (p, k, n))
    plan = contraction.plan_contraction(p, k, m, n, budget=budget)
    assert plan.largest <= max(budget, p * min(m, n))
    saved = contraction.MIN_BUDGET, contraction.BUDGET_FACTOR
    contraction.MIN_BUDGET, contraction.BUDGET_FACTOR = budget, 0.0
    try:
        after, _ = check_rewrite(matmul_to_conv.PASS, graph, op_counts(lowered(matmul_to_conv.PASS, graph)))
    finally:
        contraction.MIN_BUDGET, contraction.BUDGET_FACTOR = saved
    assert largest_product(after) <= max(budget, p * min(m, n))


def test_attention_products_are_chunked_to_the_attention_matrix(small_budget: None) -> None:
    """Global attention over 64 positions, head width 16: no piece larger than the [2, 2, 64, 64] weights."""
    b = GraphBuilder("attn")
    q, k, v = (b.input(name, f32(2, 2, 64, 16)) for name in "qkv")
    bias = b.input("bias", f32(1, 2, 64, 64))
    b.output(b.op("attention", [q, k, v, bias], at(3), scale=0.25))
    after, _ = check_rewrite(lower_attention.PASS, b.graph, op_counts(lowered(lower_attention.PASS, b.graph)))
    assert largest_product(after) <= 2 * 2 * 64 * 64
    chunk_concats = [n for n in after.nodes if n.op == "concat" and n.attrs["axis"] in (2, 3)]
    assert len(chunk_concats) == 2  # both products in chunks (a concat on the channels tiles an operand)
    assert {n.op for n in after.nodes} <= {"transpose", "reshape", "slice", "mul", "conv", "const", "concat", "add",
                                           "softmax"}
