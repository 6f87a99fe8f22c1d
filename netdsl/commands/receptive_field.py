"""``netdsl receptive-field SPEC``: which input positions influence one output position."""

from __future__ import annotations

import argparse
from pathlib import Path

from netdsl.diagnostics import Diagnostic, NetdslError
from netdsl.driver import add_spec_args, graph_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("receptive-field", help="measure a block's receptive field by gradients")
    p.add_argument("spec", help=".net file")
    p.add_argument("--position", metavar="Y,X", help="output position (default: the centre)")
    p.add_argument("--channels-last", action="store_true", help="the input and output are [B, H, W, C]")
    p.add_argument("--png", type=Path, help="write a heat map here")
    add_spec_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    graph = graph_from_args(args)
    position = None
    if args.position:
        try:
            py, px = (int(v) for v in args.position.split(","))
        except ValueError:
            raise NetdslError(Diagnostic(f"--position expects Y,X, found '{args.position}'")) from None
        position = (py, px)
    from netdsl.analysis.receptive_field import measure, save_heatmap

    try:
        rf = measure(graph, position, channels_last=args.channels_last)
    except ValueError as err:
        raise NetdslError(Diagnostic(str(err))) from None
    h, w = rf.influence.shape
    eh, ew = rf.extent
    print(f"{graph.name}: output position {rf.output_position} is influenced by "
          f"{int(rf.reached.sum())} of {h * w} input positions ({100 * rf.fraction:.1f}%), "
          f"a {eh}x{ew} region")
    if args.png:
        save_heatmap(rf, str(args.png), graph.name)
        print(f"wrote {args.png}")
    return 0
