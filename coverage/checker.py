"""TensorRT layer-coverage validator: checks every node of an ONNX model against a profile.

For each node it reports the ONNX op, the TensorRT layer the parser maps it to, whether the
profile allows it, every violated limit with the measured values (``Conv kernel 9x9 exceeds limit
1..8``), the spec location when the node carries netdsl provenance (node ``metadata_props``
``netdsl.span`` / ``netdsl.block``, else its ``doc_string``) and the suggested rewrite. Whole-model
rules (static shapes, no run-time INT64, dtypes, rank, volume, dimension bounds) are checked on
the tensors after ONNX shape inference and blamed on the node that produces the offending tensor,
or reported at graph level for graph inputs.

Works on any ONNX model, including ones exported by ``torch.onnx.export``; local functions are
inlined first. Subgraphs of control-flow nodes (If/Loop/Scan) are not descended into: the
control-flow node itself is checked.
"""

from __future__ import annotations

import math
from typing import Any

import onnx
from onnx import TensorProto

from netdsl.coverage.checks import evaluate_limit
from netdsl.coverage.lowering_hints import lowering_note
from netdsl.coverage.node_view import BLOCK_KEY, RULES_KEY, SPAN_KEY, ModelFacts, NodeView, TensorInfo, dtype_name
from netdsl.coverage.profile import OpRule, Profile
from netdsl.coverage.report import CoverageReport, GraphViolation, NodeCoverage

# --------------------------------------------------------------------------- global rules


def _is_static(info: TensorInfo | None) -> bool:
    return info is not None and info.static


class _GlobalRules:
    """The profile's whole-model rules, applied to run-time tensors."""

    def __init__(self, profile: Profile, facts: ModelFacts):
        self.profile = profile
        self.facts = facts

    def sources(self, check: str) -> list[str]:
        rule = self.profile.global_rules.get(check)
        return list(rule.source) if rule else []

    def tensor_violations(self, name: str, info: TensorInfo | None, what: str) -> list[tuple[str, str]]:
        """(check, message) pairs for one run-time tensor, except the static-shape rule."""
        p, found = self.profile, []
        if info is None:
            return found
        dtype = dtype_name(info.elem_type)
        if p.global_value("no_int64_runtime", False) and info.elem_type == TensorProto.INT64:
            found.append(("no_int64_runtime", f"{what} '{name}' is an INT64 tensor computed at run time"))
        else:
            allowed = p.global_value("dtypes")
            if allowed is not None and info.elem_type and dtype not in allowed:
                found.append(("dtypes", f"{what} '{name}' has dtype {dtype}; the profile allows {', '.join(allowed)}"))
        dims = info.dims
        if dims is None:
            return found
        max_rank = p.global_value("max_rank")
        if max_rank is not None and len(dims) > max_rank:
            found.append(("max_rank", f"{what} '{name}' has rank {len(dims)} > {max_rank}"))
        known = [d for d in dims if isinstance(d, int)]
        max_volume = p.global_value("max_volume")
        if max_volume is not None and len(known) == len(dims) and math.prod(known) > max_volume:
            found.append(("max_volume", f"{what} '{name}' has {math.prod(known)} elements > {max_volume}"))
        self._dim_bounds(name, dims, what, found)
        return found

    def _dim_bounds(self, name: str, dims: tuple, what: str, found: list[tuple[str, str]]) -> None:
        p = self.profile
        checks = [("max_non_batch_dim", range(1, len(dims)), "dimension")]
        if len(dims) == 4:
            checks += [("max_channels", range(1, 2), "channels"), ("max_spatial", range(2, 4), "spatial size")]
        for check, axes, label in checks:
            bound = p.global_value(check)
            if bound is None:
                continue
            for axis in axes:
                if isinstance(dims[axis], int) and dims[axis] > bound:
                    found.append((check, f"{what} '{name}' {label} {dims[axis]} (axis {axis}) > {bound}"))

    def dynamic(self, name: str, info: TensorInfo | None) -> str | None:
        if not self.profile.global_value("static_shapes", False):
            return None
        if info is None or info.dims is None:
            return f"shape of '{name}' is unknown (shape inference could not determine it)"
        if not info.static:
            return f"'{name}' has a dynamic shape {info.shape_text()}"
        return None

    def node(self, view: NodeView) -> tuple[list[str], list[str]]:
        """Violations of the node's run-time outputs, and the sources of the rules broken."""
        facts, messages, sources = self.facts, [], []
        # a dynamic shape is blamed only where it appears, not on everything downstream of it
        inputs_static = all(i in facts.static or _is_static(facts.info(i)) for i in view.node.input if i)
        for out in view.node.output:
            if not out or out in facts.static:
                continue
            info = facts.info(out)
            if inputs_static:
                dynamic = self.dynamic(out, info)
                if dynamic:
                    messages.append(dynamic)
                    sources += self.sources("static_shapes")
            for check, message in self.tensor_violations(out, info, "output"):
                messages.append(message)
                sources += self.sources(check)
        return messages, sources

    def graph_inputs(self) -> list[GraphViolation]:
        found = []
        for name in self.facts.graph_inputs:
            info = self.facts.info(name)
            dynamic = self.dynamic(name, info)
            if dynamic:
                message = f"graph input {dynamic}"
                found.append(GraphViolation("static_shapes", name, message, self.sources("static_shapes")))
            for check, message in self.tensor_violations(name, info, "graph input"):
                found.append(GraphViolation(check, name, message, self.sources(check)))
            max_batch = self.profile.global_value("max_batch")
            if max_batch is not None and info is not None and info.dims and isinstance(info.dims[0], int):
                if info.dims[0] > max_batch:
                    message = f"graph input '{name}' batch {info.dims[0]} > {max_batch}"
                    found.append(GraphViolation("max_batch", name, message, self.sources("max_batch")))
        return found


# --------------------------------------------------------------------------- driver


def _static_type(info: onnx.ValueInfoProto) -> bool:
    tensor = info.type.tensor_type
    return (info.type.HasField("tensor_type") and tensor.elem_type != TensorProto.UNDEFINED
            and tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim))


def fully_typed(graph: onnx.GraphProto) -> bool:
    """True when every tensor of ``graph``'s nodes has a dtype and a static shape already (inputs, outputs,
    value infos, initializers) and no node holds a subgraph: shape inference would add nothing."""
    known = {t.name for t in graph.initializer}
    known.update(vi.name for vi in (*graph.input, *graph.output, *graph.value_info) if _static_type(vi))
    subgraphs = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    return all(name in known for node in graph.node for name in (*node.input, *node.output) if name) and not any(
        a.type in subgraphs for node in graph.node for a in node.attribute)


def _prepare(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Inline local functions and run shape inference; returns the model and any inference error.

    A model whose tensors are all typed with static shapes (as netdsl emits most models) skips the
    inference: it would add nothing, and its first call in a process initialises ONNX's whole operator
    schema registry (longer than the rest of a small compile's coverage check and emission; see
    :class:`netdsl.coverage.node_view.NodeView` for the schema look-ups).
    """
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    if fully_typed(model.graph):
        return model, None
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True), None
    except Exception as e:  # noqa: BLE001 - a broken model still gets per-node verdicts
        return model, f"{type(e).__name__}: {e}"


def _provenance(node: onnx.NodeProto) -> dict[str, Any]:
    """Spec location, block path, rewrite rules and doc string the netdsl emitter attached."""
    meta = {p.key: p.value for p in node.metadata_props}
    return {
        "location": meta.get(SPAN_KEY) or None,
        "block": meta.get(BLOCK_KEY) or None,
        "rules": [r for r in meta.get(RULES_KEY, "").split(">") if r],
        "doc": node.doc_string or None,
    }


def _op_key(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def _layer_text(rule: OpRule | None, view: NodeView) -> str:
    if rule is None:
        return "(no rule)"
    return f"{rule.layer} (folded at build time)" if view.folded and view.op != "Constant" else rule.layer


def _refused_rewrite(view: NodeView, hint: str | None) -> str | None:
    """The suggested rewrite of a refused op: the targets that lower it (derived), then the profile's hint."""
    note = lowering_note(view.op) if view.node.domain in ("", "ai.onnx") else None
    return "; by hand: ".join(filter(None, [note, hint])) or None


def _judge(rule: OpRule | None, view: NodeView, profile: Profile) -> tuple[list[str], str | None, list[str]]:
    """Reasons, suggested rewrite and sources from the op rule (not the global rules)."""
    if rule is None:
        return [f"{_op_key(view.node)}: {profile.unlisted}"], _refused_rewrite(view, None), []
    if not rule.allowed:
        reason = rule.note or f"{rule.op} is not allowed by profile {profile.name}"
        return [reason], _refused_rewrite(view, rule.rewrite), list(rule.source)
    reasons, rewrite, sources = [], None, list(rule.source)
    if view.folded:
        return reasons, None, sources  # limits describe run-time layers; this node is computed by the builder
    for limit in rule.limits:
        message = evaluate_limit(limit, view)
        if message:
            reasons.append(message)
            rewrite = rewrite or limit.rewrite
            sources += limit.source
    return reasons, (rewrite or rule.rewrite) if reasons else None, sources


def check_coverage(model: onnx.ModelProto, profile: Profile) -> CoverageReport:
    """Check every node of ``model`` (main graph) and the whole-model rules against ``profile``."""
    prepared, inference_error = _prepare(model)
    facts = ModelFacts(prepared)
    rules = _GlobalRules(profile, facts)
    nodes: list[NodeCoverage] = []
    used_sources: list[str] = []
    for index, node in enumerate(prepared.graph.node):
        view = NodeView(node, facts)
        rule = profile.rule_for(_op_key(node))
        reasons, rewrite, sources = _judge(rule, view, profile)
        global_reasons, global_sources = rules.node(view)
        reasons += global_reasons
        sources = list(dict.fromkeys(sources + global_sources))
        used_sources += sources
        nodes.append(NodeCoverage(
            index=index,
            name=node.name or (node.output[0] if node.output else f"node{index}"),
            op=_op_key(node),
            layer=_layer_text(rule, view),
            status=rule.status if rule else "unlisted",
            level=rule.level if rule else "unlisted",
            covered=not reasons,
            assumed=bool(rule and rule.assumed),
            reasons=reasons,
            rewrite=rewrite,
            sources=sources,
            **_provenance(node),
        ))
    graph_violations = rules.graph_inputs()
    for violation in graph_violations:
        used_sources += violation.sources
    sources = {tag: profile.source_url(tag) for tag in dict.fromkeys(used_sources)}
    return CoverageReport(profile.name, profile.path, prepared.graph.name or "model", nodes, graph_violations,
                          sources, inference_error)
