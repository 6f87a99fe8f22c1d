"""Golden IR text of the bundled blocks, printer determinism, and the IR verifier.

The golden files in ``tests/golden/*.ir`` hold the exact output of ``netdsl show --ir --no-locations``
for the configurations in :data:`GOLDEN`. After an intended change of the IR (a spec, the elaborator
or the printer), regenerate them and review the diff::

    NETDSL_UPDATE_GOLDEN=1 pytest tests/test_ir_golden.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netdsl.driver import load_graph
from netdsl.ir import Graph, TensorType
from netdsl.printer import format_graph
from netdsl.verifier import VerifyError, verify

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
SPECS_DIR = Path(__file__).resolve().parents[1] / "specs"
UPDATE = os.environ.get("NETDSL_UPDATE_GOLDEN") == "1"

# golden file stem -> (spec, --entry, --set values, --input values)
GOLDEN: dict[str, tuple[str, str | None, tuple[str, ...], tuple[str, ...]]] = {
    "csa_block": ("csa.net", "CSA", ("dim=32", "sr_to=7"), ("x=2x32x14x14",)),
    "acmix_block": ("acmix.net", "ACmix", ("in_planes=64", "out_planes=64"), ("x=2x64x14x14",)),
    "csa_demo": ("csa.net", None, (), ()),
}


def _show_argv(stem: str) -> list[str]:
    spec, entry, sets, inputs = GOLDEN[stem]
    argv = ["show", str(SPECS_DIR / spec), "--ir", "--no-locations"]
    argv += ["--entry", entry] if entry else []
    for s in sets:
        argv += ["--set", s]
    for i in inputs:
        argv += ["--input", i]
    return argv


def _graph(stem: str) -> Graph:
    spec, entry, sets, inputs = GOLDEN[stem]
    return load_graph(SPECS_DIR / spec, entry, list(sets), list(inputs))


@pytest.mark.parametrize("stem", sorted(GOLDEN))
def test_ir_text_matches_golden(run_cli, stem: str) -> None:
    code, out, err = run_cli(_show_argv(stem))
    assert (code, err) == (0, ""), err
    golden = GOLDEN_DIR / f"{stem}.ir"
    if UPDATE:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(out)
    assert golden.exists(), f"{golden} is missing; create it with NETDSL_UPDATE_GOLDEN=1"
    assert out == golden.read_text(), f"IR of {stem} changed; if intended, regenerate with NETDSL_UPDATE_GOLDEN=1"


@pytest.mark.parametrize("stem", sorted(GOLDEN))
def test_printer_output_is_identical_across_elaborations(stem: str) -> None:
    first, second = _graph(stem), _graph(stem)
    assert format_graph(first) == format_graph(second)
    assert format_graph(first, locations=False) == format_graph(second, locations=False)


BUNDLED = sorted(SPECS_DIR.glob("**/*.net"))


@pytest.mark.parametrize("spec", BUNDLED, ids=[p.name for p in BUNDLED])
def test_verifier_accepts_every_bundled_spec(spec: Path) -> None:
    verify(load_graph(spec))


@pytest.mark.parametrize("stem", sorted(GOLDEN))
def test_verifier_accepts_the_golden_configurations(stem: str) -> None:
    verify(_graph(stem))


# ----------------------------------------------------------------------------- hand-broken graphs


def _first_consumer_pair(graph: Graph) -> tuple[int, int]:
    """Indices (producer, consumer) of the first node whose output the next node reads."""
    for i in range(len(graph.nodes) - 1):
        if set(graph.nodes[i].outputs) & set(graph.nodes[i + 1].inputs):
            return i, i + 1
    raise AssertionError("no adjacent producer/consumer pair")


def _wrong_recorded_type(graph: Graph) -> None:
    out = graph.nodes[0].outputs[0]
    t = graph.values[out]
    graph.values[out] = TensorType(t.dtype, (t.shape[0] + 1,) + t.shape[1:])


def _use_before_definition(graph: Graph) -> None:
    i, j = _first_consumer_pair(graph)
    graph.nodes[i], graph.nodes[j] = graph.nodes[j], graph.nodes[i]


def _defined_twice(graph: Graph) -> None:
    graph.nodes.append(graph.nodes[0])


def _unknown_op(graph: Graph) -> None:
    graph.nodes[0].op = "convolve"


def _undefined_output(graph: Graph) -> None:
    graph.outputs.append("nowhere")


@pytest.mark.parametrize(("breakage", "message"), [
    (_wrong_recorded_type, "recorded as"),
    (_use_before_definition, "is used before it is defined"),
    (_defined_twice, "defined twice"),
    (_unknown_op, "unknown op 'convolve'"),
    (_undefined_output, "output 'nowhere' is never defined"),
], ids=["wrong-type", "use-before-def", "defined-twice", "unknown-op", "undefined-output"])
def test_verifier_catches_a_broken_graph(breakage, message: str) -> None:
    graph = _graph("csa_block")
    verify(graph)
    breakage(graph)
    with pytest.raises(VerifyError, match=message):
        verify(graph)
