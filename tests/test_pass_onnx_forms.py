"""The passes of the ONNX forms (``ONNX_FORMS``): differential tests against the interpreter, and what they leave.

Each decomposes an op the ONNX emitter has no one-op form of into IR ops it has; the shared rule
checks of :func:`pass_support.check_rewrite` (interpreter outputs, provenance, postcondition) apply.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from pass_support import add_param, at, builder_with_input, check_rewrite, random_feeds

from netdsl.ir import Graph
from netdsl.passes.attention_to_matmul import PASS as ATTENTION
from netdsl.passes.base import RewriteLog
from netdsl.passes.gelu_to_erf import PASS as GELU
from netdsl.passes.groupnorm_to_instancenorm import PASS as GROUPNORM
from netdsl.passes.silu_to_sigmoid import PASS as SILU


@pytest.mark.parametrize("with_bias", [True, False])
def test_attention_becomes_two_matmuls_around_a_softmax(with_bias: bool) -> None:
    b, x = builder_with_input(2, 3, 5, 4)
    k = b.op("mul", [x, b.op("const", [], at(2), value=np.float32(0.5), dtype="f32")], at(2))
    weights = {"bias": np.random.default_rng(3).standard_normal((1, 3, 5, 5)).astype(np.float32)} if with_bias else {}
    bias = [add_param(b, "bias", weights["bias"])] if with_bias else []
    b.output(b.op("attention", [x, k, x, *bias], at(3), scale=0.7))
    extra = {"add": 1} if with_bias else {}
    check_rewrite(ATTENTION, b.graph, {"const": 2, "mul": 2, "transpose": 1, "matmul": 2, "softmax": 1, **extra},
                  weights)


def _groupnorm(shape: tuple[int, ...], groups: int, affine: bool) -> tuple[Graph, dict[str, np.ndarray]]:
    b, x = builder_with_input(*shape)
    rng = np.random.default_rng(4)
    names = ("gn.weight", "gn.bias") if affine else ()
    weights = {name: rng.standard_normal(shape[1]).astype(np.float32) for name in names}
    params = [add_param(b, name, value) for name, value in weights.items()]
    b.output(b.op("groupnorm", [x, *params], at(4), groups=groups, eps=1e-5))
    return b.graph, weights


@pytest.mark.parametrize("shape, groups, affine", [
    ((2, 6, 4, 5), 3, True),  # a map
    ((2, 8, 3), 2, False),  # a sequence, no affine map
    ((2, 8), 4, True),  # no spatial axes: the grouped view gives the instance norm its axis
])
def test_a_groupnorm_of_fewer_groups_becomes_an_instance_norm_of_a_view(shape: tuple[int, ...], groups: int,
                                                                         affine: bool) -> None:
    graph, weights = _groupnorm(shape, groups, affine)
    after, _ = check_rewrite(GROUPNORM, graph, {"reshape": 4 if affine else 2, "groupnorm": 1,
                                                **({"mul": 1, "add": 1} if affine else {})}, weights)
    (norm,) = [n for n in after.nodes if n.op == "groupnorm"]
    assert after.type_of(norm.inputs[0]).shape == (shape[0], groups, int(np.prod(shape[1:])) // groups)
    assert norm.attrs["groups"] == groups and len(norm.inputs) == 1


def test_an_instance_norm_is_left_as_it_is() -> None:
    graph, _ = _groupnorm((2, 4, 3, 3), 4, True)
    log = RewriteLog()
    after = GROUPNORM.run(copy.deepcopy(graph), log)
    assert not log.entries and [n.op for n in after.nodes] == ["groupnorm"] and GROUPNORM.post(after) == []


def test_gelu_becomes_its_erf_form_in_the_order_onnx_runtime_fuses() -> None:
    b, x = builder_with_input(2, 3, 7)
    b.output(b.op("gelu", [x], at(2)))
    after, _ = check_rewrite(GELU, b.graph, {"const": 3, "div": 1, "erf": 1, "mul": 2, "add": 1},
                             feeds=random_feeds(b.graph, scale=4.0))
    assert [n.op for n in after.nodes if n.op != "const"] == ["div", "erf", "mul", "add", "mul"]


def test_silu_becomes_sigmoid_and_mul() -> None:
    b, x = builder_with_input(2, 3, 7)
    b.output(b.op("silu", [x], at(2)))
    check_rewrite(SILU, b.graph, {"sigmoid": 1, "mul": 1}, feeds=random_feeds(b.graph, scale=4.0))
