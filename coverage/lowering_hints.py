"""Which netdsl target lowers an ONNX op a TensorRT profile refuses, derived from the passes and the emitter.

A refused node must not be a dead end: where netdsl can rewrite the op away, the coverage report
says which ``--target`` does it. Nothing here is written per op. The answer is read from data:

* an ONNX op comes from the IR ops whose ONNX lowering may emit it
  (:func:`netdsl.backends.onnx_backend.emitted_ops`, declared beside each lowering);
* an IR op is removed by the passes whose postcondition says so (``ops_absent``), and a pass
  applies under the targets whose pipeline lists it (:func:`netdsl.passes.pipeline.lowering_targets`).

So a new lowering pass, once listed in a target's pipeline, shows up in every report by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from netdsl.backends.onnx_backend import emitted_ops, supported_ops
from netdsl.passes.pipeline import lowering_targets


@dataclass(frozen=True)
class Lowering:
    """IR op ``source`` (which emits the ONNX op) is removed by pass ``rule`` under ``targets`` (``when`` it
    meets that condition, if any)."""

    source: str
    rule: str
    targets: tuple[str, ...]
    when: str = ""

    def text(self) -> str:
        """E.g. "`gather` by gather_to_slice when its indices are constants"."""
        return f"`{self.source}` by {self.rule}" + (f" when {self.when}" if self.when else "")


@cache
def _sources(onnx_op: str) -> tuple[str, ...]:
    """The IR ops whose ONNX lowering may emit ``onnx_op``, sorted."""
    return tuple(sorted(op for op in supported_ops() if onnx_op in emitted_ops(op)))


@cache
def lowerings(onnx_op: str) -> tuple[tuple[Lowering, ...], tuple[str, ...]]:
    """(how netdsl lowers the IR ops that emit ``onnx_op``, the IR ops that emit it and no target lowers)."""
    found, unlowered = [], []
    for source in _sources(onnx_op):
        rules = lowering_targets(source)
        found += [Lowering(source, rule, tuple(targets), when) for rule, (targets, when) in sorted(rules.items())]
        if not rules:
            unlowered.append(source)
    return tuple(found), tuple(unlowered)


def lowering_targets_of(onnx_op: str) -> set[str]:
    """Every target whose pipeline lowers some IR op that emits ``onnx_op``."""
    return {t for lowering in lowerings(onnx_op)[0] for t in lowering.targets}


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def lowering_note(onnx_op: str) -> str | None:
    """``netdsl lowers Erf for --target trt-restricted and trt-dla (from `gelu` by gelu_decompose)``; None
    when no target lowers any IR op that emits ``onnx_op``."""
    found, unlowered = lowerings(onnx_op)
    if not found:
        return None
    by_targets: dict[tuple[str, ...], list[str]] = {}
    for lowering in found:
        by_targets.setdefault(lowering.targets, []).append(lowering.text())
    parts = [f"for --target {_and(list(targets))} (from {', '.join(how)})" for targets, how in by_targets.items()]
    note = f"netdsl lowers {onnx_op} " + "; ".join(parts)
    if unlowered:
        note += f"; no target lowers it from {_and([f'`{op}`' for op in unlowered])}"
    return note
