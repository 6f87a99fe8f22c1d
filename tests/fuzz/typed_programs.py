"""Well-typed random models for translation validation of the pass pipelines.

:func:`typed_models` draws a model over one NCHW input as a chain of surface ops whose arguments
are chosen from the shapes tracked here, so that (almost) every draw type-checks: convolutions of
every kind, batch norm, activations, pools, resizes, padding, rolls, shifts, unfolds, softmax,
channel concat, squeeze-excitation style gating, CSA's rotation, ACmix-style local attention,
layer and group norms, transposes, linear maps over the last axis, channel-max centring, and sums
and products with earlier values. The pipelines must then keep every output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

ACTIVATIONS = ("relu", "sigmoid", "silu", "tanh", "hardswish", "gelu")


@dataclass
class Program:
    """Lines of a model body and the shape of every named NCHW value in it."""

    lines: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name -> (C, H, W)

    def add(self, expr: str, shape: tuple[int, int, int]) -> str:
        name = f"t{len(self.shapes)}"
        self.lines.append(f"    {name} = {expr}")
        self.shapes[name] = shape
        return name


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def _step(draw: st.DrawFn, p: Program, x: str) -> str:
    """One op on ``x`` (or on ``x`` and an earlier value); returns the new value's name."""
    c, h, w = p.shapes[x]
    kind = draw(st.sampled_from(("conv", "conv", "batchnorm", "act", "pool", "resize", "pad", "roll", "shift",
                                 "unfold", "softmax", "concat", "gate", "rotate", "attention", "binary", "norm",
                                 "transpose", "linear", "centre", "padpool")))
    if kind == "conv":
        k = draw(st.sampled_from((1, 3) if min(h, w) >= 3 else (1,)))
        stride = draw(st.sampled_from((1, 2) if min(h, w) >= 4 else (1,)))
        pad = draw(st.sampled_from((0, k // 2)))
        groups = draw(st.sampled_from(_divisors(c)))
        out = groups * draw(st.integers(1, max(1, 8 // groups)))
        ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        return p.add(f"conv({x}, {out}, kernel={k}, stride={stride}, padding={pad}, groups={groups})", (out, ho, wo))
    if kind == "batchnorm":
        return p.add(f"batchnorm({x})", (c, h, w))
    if kind == "act":
        return p.add(f"{draw(st.sampled_from(ACTIVATIONS))}({x})", (c, h, w))
    if kind == "padpool":
        # a zero pad straight into a pool (ONNX Runtime would fuse the two if it could)
        x = p.add(f'pad({x}, [1, 1, 1, 1], mode="zero")', (c, h + 2, w + 2))
        c, h, w = p.shapes[x]
        kind = "pool"
    if kind == "pool" and min(h, w) >= 2:
        k = draw(st.sampled_from((2, 3) if min(h, w) >= 3 else (2,)))
        stride = draw(st.sampled_from((1, 2, k)))
        pad = draw(st.integers(0, k // 2))
        op = draw(st.sampled_from(("avgpool", "maxpool")))
        ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        return p.add(f"{op}({x}, {k}, stride={stride}, padding={pad})", (c, ho, wo))
    if kind == "resize":
        ho, wo = draw(st.sampled_from(((2 * h, 2 * w), (max(1, h // 2), max(1, w // 2)), (h + 1, w + 1),
                                       (max(2, h - 1), max(2, w - 1)))))
        mode = draw(st.sampled_from(("linear", "nearest"))) if (ho, wo) == (2 * h, 2 * w) else "linear"
        return p.add(f'resize({x}, size=[{ho}, {wo}], mode="{mode}")', (c, ho, wo))
    if kind == "pad":
        t, left = draw(st.integers(0, 2)), draw(st.integers(0, 2))
        mode = draw(st.sampled_from(("zero", "edge", "reflect") if min(h, w) > 2 else ("zero", "edge")))
        return p.add(f'pad({x}, [{t}, {left}, {t}, {left}], mode="{mode}")', (c, h + 2 * t, w + 2 * left))
    if kind == "roll":
        return p.add(f"roll({x}, [{draw(st.integers(-2, 2))}, {draw(st.integers(-2, 2))}], [2, 3])", (c, h, w))
    if kind == "shift" and c % 2 == 0:
        dy, dx = draw(st.integers(-1, 1)), draw(st.integers(-1, 1))
        return p.add(f"shift({x}, [[{dy}, {dx}], [{-dx}, {dy}]])", (c, h, w))
    if kind == "unfold" and c <= 4 and min(h, w) >= 2:
        return p.add(f"unfold({x}, 2, stride=2)", (c * 4, h // 2, w // 2))
    if kind == "softmax":
        return p.add(f"softmax({x}, axis={draw(st.sampled_from((1, -1)))})", (c, h, w))
    if kind == "concat":
        same = [v for v, s in p.shapes.items() if s[1:] == (h, w)]
        other = draw(st.sampled_from(same))
        return p.add(f"concat([{x}, {other}], axis=1)", (c + p.shapes[other][0], h, w))
    if kind == "gate":
        # squeeze-excitation: global mean -> 1x1 conv -> sigmoid -> channel gate
        pooled = p.add(f"conv(global_avgpool({x}), {c}, kernel=1)", (c, 1, 1))
        return p.add(f"{x} * sigmoid({pooled})", (c, h, w))
    if kind == "rotate" and h * w <= 16:
        heads = draw(st.sampled_from((1, 2)))
        q = p.add(f"conv({x}, {heads * h * w}, kernel=1)", (heads * h * w, h, w))
        return p.add(f"{q} * rotate({q}, heads={heads})", (heads * h * w, h, w))
    if kind == "attention" and min(h, w) >= 3:
        heads = draw(st.sampled_from([d for d in _divisors(c) if d <= 2]))
        return p.add(f"local_attention({x}, {x}, {x}, heads={heads}, kernel=3)", (c, h, w))
    if kind == "binary":
        same = [v for v, s in p.shapes.items() if s == (c, h, w)]
        other = draw(st.sampled_from(same))
        return p.add(f"{x} {draw(st.sampled_from(('+', '-', '*')))} {other}", (c, h, w))
    if kind == "norm":
        # groups of one value are a type error (see test_diagnostics); keep more than one per group
        groups = draw(st.sampled_from([g for g in _divisors(c) if c // g * h * w > 1] or [0]))
        norms = (f"layernorm({x}, axis=1)",) + ((f"groupnorm({x}, {groups})",) if groups else ())
        return p.add(draw(st.sampled_from(norms)), (c, h, w))
    if kind == "transpose":
        return p.add(f"transpose({x}, [0, 1, 3, 2])", (c, w, h))
    if kind == "linear":
        out = draw(st.integers(2, 8))
        return p.add(f"linear({x}, {out})", (c, h, out))
    if kind == "centre":
        # subtract the channel maximum (the first step of a stable softmax over channels)
        return p.add(f"{x} - reduce_max({x}, [1], keepdims=true)", (c, h, w))
    return p.add(f"batchnorm({x})", (c, h, w))


@st.composite
def typed_models(draw: st.DrawFn, max_steps: int = 6) -> str:
    """A model ``fz`` over ``x: f32[N=1, C, H, W]`` with 1..``max_steps`` ops, as spec text."""
    c, h, w = draw(st.sampled_from((2, 3, 4))), draw(st.integers(3, 8)), draw(st.integers(3, 8))
    p = Program(shapes={"x": (c, h, w)})
    value = "x"
    for _ in range(draw(st.integers(1, max_steps))):
        value = draw(_step(p, value))
    body = "\n".join(p.lines)
    return f"model fz() {{\n    input x: f32[N=1, {c}, {h}, {w}]\n{body}\n    output y = {value}\n}}\n"
