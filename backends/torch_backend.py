"""The PyTorch backend: trainable ``nn.Module``s from IR graphs, as source files or live objects.

:func:`generate_source` (see :mod:`netdsl.backends.torch_codegen`) writes a standalone module
that imports only torch; :func:`write_source` saves it; :func:`build_module` executes it and
returns the module, optionally with weights loaded (e.g. from
:func:`netdsl.initializers.initial_weights`, so ONNX and PyTorch hold the same numbers).
"""

from __future__ import annotations

import hashlib
import linecache
import os
import types

import numpy as np
import torch
from torch import nn

from netdsl.atomic_write import atomic_write_text
from netdsl.backends.torch_codegen import class_name_for, generate_source
from netdsl.backends.torch_literals import sanitise
from netdsl.ir import Graph

__all__ = ["build_module", "generate_source", "write_source"]


def build_module(
    graph: Graph, weights: dict[str, np.ndarray] | None = None, class_name: str | None = None
) -> nn.Module:
    """The ``nn.Module`` that :func:`generate_source` describes, constructed and ready to use.

    The source runs in a fresh module namespace (tracebacks show its lines). ``weights``, if
    given, must name every parameter and buffer of the graph (``load_state_dict(strict=True)``).
    Like any new ``nn.Module`` the result is in training mode: call ``.eval()`` for inference,
    where batch norms use their running statistics.
    """
    source = generate_source(graph, class_name)
    namespace = types.ModuleType(f"netdsl_generated_{sanitise(graph.name)}")
    # Registering the source lets tracebacks and debuggers show the generated lines; the digest
    # keeps two different graphs of the same name apart.
    filename = f"<netdsl generated {graph.name} {hashlib.sha256(source.encode()).hexdigest()[:12]}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    exec(compile(source, filename, "exec"), namespace.__dict__)
    module: nn.Module = getattr(namespace, class_name_for(graph, class_name))()
    if weights is not None:
        module.load_state_dict({name: torch.as_tensor(np.array(value)) for name, value in weights.items()}, strict=True)
    return module


def write_source(graph: Graph, path: str | os.PathLike[str], class_name: str | None = None) -> None:
    """Write :func:`generate_source`'s module to ``path`` atomically (never a half-written file)."""
    atomic_write_text(path, generate_source(graph, class_name))
