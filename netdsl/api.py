"""The Python API: load and check a spec, compile it, build the PyTorch module, read and write weights.

The library pipeline, one function per stage: spec -> checked graph (:func:`load`) -> lowered graph
(:func:`lower`, or both at once with :func:`compile_spec`) -> ONNX (:func:`emit_onnx`,
:func:`emit_onnx_parts`) or PyTorch (:func:`build_module`, :func:`torch_source`).

Every function takes plain Python values (paths, dicts, strings) and raises
:class:`netdsl.diagnostics.NetdslError` for a user error, whose ``diag`` renders like the command
line's messages (:func:`netdsl.diagnostics.render`). The commands, the benchmarks and the examples
are built on these functions.

The core (``netdsl``) imports no framework; the functions that produce ONNX or PyTorch objects
import their backend when called, so ``import netdsl.api`` works without torch installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netdsl.diagnostics import Diagnostic, NetdslError
from netdsl.elaborate import elaborate_program
from netdsl.ir import Graph
from netdsl.loader import load_program
from netdsl.resolve import resolve_program

if TYPE_CHECKING:
    import numpy as np
    import onnx
    from torch import nn

    from netdsl.coverage.report import CoverageReport
    from netdsl.passes.pipeline import PipelineResult

TARGETS = ("onnx", "torch", "trt", "trt-restricted", "trt-dla")

Weights = dict[str, "np.ndarray"]


def load(spec: str | os.PathLike[str], entry: str | None = None, params: dict[str, Any] | None = None,
         inputs: dict[str, tuple[int, ...]] | None = None, lib: list[str | os.PathLike[str]] | None = None) -> Graph:
    """Parse ``spec`` and its imports, resolve the names of every block, and elaborate and type-check
    ``entry`` (default: the file's last model) into a typed graph.

    ``params`` sets the entry's parameters (``{"dim": 32}``); ``inputs`` gives input shapes
    (``{"x": (2, 64, 14, 14)}``); ``lib`` adds folders to search for imports."""
    program = load_program(spec, [Path(p) for p in lib or []])
    graph = elaborate_program(program, entry, params or {}, inputs or {})
    resolve_program(program)
    return graph


def initial_weights(graph: Graph, seed: int = 0) -> Weights:
    """The seeded default initialisation of every parameter and buffer, by name (numpy arrays)."""
    from netdsl.initializers import initial_weights as draw

    return draw(graph, seed)


def read_weights(path: str | os.PathLike[str], graph: Graph) -> Weights:
    """Weights for ``graph`` from a ``.safetensors``, ``.npz``, ``.pt`` or ``.pth`` file, matched by name and
    checked (shape, dtype, finiteness, nothing missing or extra)."""
    from netdsl.backends.weights_io import WeightsError, load_weights

    try:
        return load_weights(path, graph)
    except WeightsError as err:
        raise NetdslError(Diagnostic(str(err))) from None


def write_weights(weights: Weights | nn.Module, path: str | os.PathLike[str]) -> None:
    """Save weights (a name -> array dict, or a module's ``state_dict``) as ``.safetensors``, atomically."""
    import numpy as np

    from netdsl.backends.weights_io import save_safetensors

    if hasattr(weights, "state_dict"):
        weights = {k: v.detach().cpu().numpy() for k, v in weights.state_dict().items()}
    save_safetensors({k: np.asarray(v) for k, v in weights.items()}, path)


def lower(graph: Graph, target: str = "onnx", weights: Weights | str | os.PathLike[str] | None = None, seed: int = 0,
          passes: list[str] | None = None, print_after: str | None = None,
          consume_weights: bool = False) -> PipelineResult:
    """Run ``target``'s pass pipeline (or the named ``passes``) on a copy of ``graph``, carrying ``weights``
    through the rewrites: a name -> array dict, a weights file (:func:`read_weights`), or None for the
    seeded initialisation. ``result.graph`` and ``result.weights`` are the lowered graph and its weights;
    ``print_after`` prints the IR after the pass of that name.

    Weights read or drawn here are handed over to the pipeline, which frees each weight a pass replaces,
    so peak memory stays near one copy of the model; ``consume_weights`` does the same with a caller's
    dict (updated in place)."""
    from netdsl.passes.pipeline import run_pipeline

    if target not in TARGETS:
        raise NetdslError(Diagnostic(f"unknown target '{target}'; expected one of {', '.join(TARGETS)}"))
    if not isinstance(weights, dict):
        weights = initial_weights(graph, seed) if weights is None else read_weights(weights, graph)
        consume_weights = True  # nobody else holds them
    return run_pipeline(graph, target, weights=weights, passes=passes, print_after=print_after,
                        consume_weights=consume_weights)


def compile_spec(spec: str | os.PathLike[str], target: str = "onnx", *, entry: str | None = None,
                 params: dict[str, Any] | None = None, inputs: dict[str, tuple[int, ...]] | None = None,
                 lib: list[str | os.PathLike[str]] | None = None,
                 weights: Weights | str | os.PathLike[str] | None = None, seed: int = 0,
                 passes: list[str] | None = None, print_after: str | None = None) -> PipelineResult:
    """:func:`load` then :func:`lower`: the spec file checked and lowered for ``target`` in one call."""
    graph = load(spec, entry, params, inputs, lib)
    return lower(graph, target, weights, seed, passes, print_after)


def emit_onnx_parts(result: PipelineResult, target: str = "onnx", opset: int = 17,
                    held_float16: bool = False) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The ONNX model of a lowered graph with its large initializers left empty, and their arrays by name
    (see :func:`netdsl.backends.onnx_backend.to_onnx_parts`): each weight is held once. The ``onnx``
    target lays resizes out channels-last for ONNX Runtime; the TensorRT targets keep single Resize layers.
    ``held_float16``: the weights are held for a float16 model (:mod:`netdsl.float16_weights`)."""
    from netdsl.backends.onnx_backend import to_onnx_parts

    return to_onnx_parts(result.graph, result.weights, opset=opset, channels_last_resize=_channels_last(target),
                         held_float16=held_float16)


def emit_onnx(result: PipelineResult, target: str = "onnx", opset: int = 17) -> onnx.ModelProto:
    """The self-contained ONNX model of a lowered graph (as :func:`emit_onnx_parts` lays it out)."""
    from netdsl.backends.onnx_backend import to_onnx

    return to_onnx(result.graph, result.weights, opset=opset, channels_last_resize=_channels_last(target))


def _channels_last(target: str) -> bool:
    """Whether ``target`` gets channels-last resizes: ONNX Runtime runs them faster, while TensorRT profiles
    count each Resize as one layer."""
    return target == "onnx"


def to_onnx(graph: Graph, target: str = "onnx", weights: Weights | None = None, seed: int = 0,
            opset: int = 17) -> onnx.ModelProto:
    """The ONNX model of ``graph`` lowered for ``target`` (``onnx`` or a TensorRT target), with ``weights``
    (default: the seeded initialisation) as initializers. It is not checked against a TensorRT profile:
    see :func:`coverage`."""
    if target == "torch":
        raise NetdslError(Diagnostic("to_onnx() emits ONNX; for the torch target use build_module()"))
    return emit_onnx(lower(graph, target, weights, seed), target, opset)


def coverage(model: onnx.ModelProto, profile: str | os.PathLike[str] = "trt-restricted") -> CoverageReport:
    """Check every node of an ONNX model against a TensorRT profile (a bundled name or a TOML file)."""
    from netdsl.coverage.checker import check_coverage
    from netdsl.coverage.profile import ProfileError, load_profile

    try:
        return check_coverage(model, load_profile(profile))
    except ProfileError as err:
        raise NetdslError(Diagnostic(str(err))) from None


def build_module(graph: Graph, weights: Weights | None = None, seed: int = 0) -> nn.Module:
    """A trainable ``torch.nn.Module`` computing ``graph`` (lowered for the ``torch`` target), with
    ``weights`` (default: the seeded initialisation, the same numbers :func:`to_onnx` uses) loaded.
    Its ``state_dict`` names are the spec's parameter names. Needs ``pip install "netdsl[torch]"``."""
    from netdsl.backends.torch_backend import build_module as build

    result = lower(graph, "torch", weights, seed)
    return build(result.graph, result.weights)


def torch_source(graph: Graph) -> str:
    """The standalone Python source of :func:`build_module`'s module (imports only torch)."""
    from netdsl.backends.torch_codegen import generate_source

    return generate_source(lower(graph, "torch").graph)
