"""``netdsl coverage MODEL.onnx|SPEC --profile P [--json OUT]``: TensorRT layer coverage of a model.

Checks every node against a TensorRT profile (``trt``, ``trt-restricted``, ``trt-dla`` or a
profile TOML file) and prints, per node, the ONNX op, the TensorRT layer, the verdict, the violated
limit, the spec location and the suggested rewrite. Exit status 0 when every node is covered, 2
when some node is not (or the input or profile is bad).

A ``.net`` spec is compiled first (for ``--target``, by default the profile's own target) with
:func:`netdsl.driver.onnx_from_args`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from netdsl.coverage.profile import BUNDLED_PROFILES
from netdsl.diagnostics import Diagnostic, NetdslError, render
from netdsl.driver import add_spec_args

SPEC_TARGETS = ("onnx", "trt", "trt-restricted", "trt-dla")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``netdsl coverage``."""
    p = subparsers.add_parser("coverage", help="check every node of a model against a TensorRT profile",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL.onnx|SPEC", help="an ONNX model or a .net spec")
    p.add_argument("--profile", default="trt-restricted",
                   help=f"profile name ({', '.join(BUNDLED_PROFILES)}) or a profile TOML file (default trt-restricted)")
    p.add_argument("--target", choices=SPEC_TARGETS,
                   help="compile target for a spec (default: the profile's name, trt-restricted for profile files)")
    p.add_argument("--json", type=Path, metavar="OUT", help="also write the report as JSON")
    p.add_argument("--violations-only", action="store_true", help="list only the nodes that are not covered")
    p.add_argument("--strict", action="store_true", help="also fail when a node is allowed only by an assumed rule")
    p.add_argument("--wide", action="store_true", help="print every column in full (node names, reasons, rewrites)")
    add_model_input_args(p)
    p.set_defaults(run=run)


def add_model_input_args(p: argparse.ArgumentParser) -> None:
    """The flags a spec input needs (shared with ``netdsl bench``)."""
    p.add_argument("--weights", type=Path, help="weights for a spec (.safetensors, .npz, .pt, .pth)")
    p.add_argument("--seed", type=int, default=0, help="seed of a spec's default initialisation (default 0)")
    add_spec_args(p)


def load_model_input(path: str | Path, args: argparse.Namespace, target: str) -> Any:
    """An ``onnx.ModelProto`` from an ``.onnx`` file, or from a spec compiled for ``target``.

    Raises :class:`NetdslError` for a missing, unreadable or invalid file (see
    :mod:`netdsl.analysis.onnx_input`)."""
    path = Path(path)
    if not path.is_file():
        raise NetdslError(Diagnostic(f"{path}: no such file"))
    if path.suffix == ".onnx":
        from netdsl.analysis.onnx_input import OnnxFileError, load_onnx_file

        try:
            return load_onnx_file(path)
        except OnnxFileError as err:
            raise NetdslError(Diagnostic(str(err))) from None
    from netdsl import driver

    return driver.onnx_from_args(argparse.Namespace(**{**vars(args), "spec": path}), target)


def wide_console() -> Any:
    """A rich console; 160 columns when the output is not a terminal (files, pipes, CI logs),
    where rich would otherwise squeeze wide tables into 80."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=160)


def run(args: argparse.Namespace) -> int:
    """Check coverage; 0 if every node is covered, 2 if not or on bad input."""
    from netdsl.commands.compile import refuse_assumed
    from netdsl.coverage.checker import check_coverage
    from netdsl.coverage.profile import ProfileError, load_profile
    from netdsl.coverage.report import render_coverage

    try:
        try:
            profile = load_profile(args.profile)
        except ProfileError as err:
            raise NetdslError(Diagnostic(str(err))) from None
        target = args.target or (args.profile if args.profile in BUNDLED_PROFILES else "trt-restricted")
        model = load_model_input(args.model, args, target)
    except NetdslError as err:
        print(render(err.diag), file=sys.stderr)
        return 2
    report = check_coverage(model, profile)
    render_coverage(report, violations_only=args.violations_only, wide=args.wide)
    if args.json is not None:
        from netdsl.atomic_write import atomic_write_text

        atomic_write_text(args.json, report.to_json() + "\n")
    if report.covered and args.strict:
        try:
            refuse_assumed(report, profile, strict=True)
        except NetdslError as err:
            print(render(err.diag), file=sys.stderr)
            return 2
    return 0 if report.covered else 2
