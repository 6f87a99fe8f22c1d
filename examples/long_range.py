"""Which mixer sees far? CSA, ACmix and plain-conv classifiers of one parameter budget on the long-range task.

    python examples/long_range.py --epochs 4

Trains the three models of ``specs/models/small.net`` (same layout and depth, default widths of
equal parameter budget) with two classes on :class:`netdsl.datasets.LongRangeTask` at their
32x32 input: is the pattern in the top-left corner the same as the one in the bottom-right
corner? The conv network's receptive field (11 pixels) never holds both corners, so it stays at
chance; ACmix's 7x7 attention windows and the conv path are local too; CSA's rotation relates
every position of its reduced grid with every other in one block. Prints one row per model:
parameters, train and test accuracy, training time.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table
from train import TrainConfig, TrainResult, make_console, train

SPEC = Path(__file__).resolve().parents[1] / "specs" / "models" / "small.net"
MODELS = {"csa_small": "CSA", "acmix_small": "ACmix", "conv_small": "plain conv"}


def run_models(models: Sequence[str], epochs: int, train_samples: int, test_samples: int, seed: int,
               console: Console, patterns: int = 2) -> dict[str, TrainResult]:
    """Train each model of ``small.net`` on the long-range task; the results by model name."""
    results = {}
    for entry in models:
        config = TrainConfig(spec=SPEC, entry=entry, sets=["num_classes=2"], data="long-range", epochs=epochs,
                             seed=seed, train_samples=train_samples, test_samples=test_samples, patterns=patterns)
        results[entry] = train(config, console=console)
    return results


def results_table(results: dict[str, TrainResult], patterns: int) -> Table:
    """One row per model: mixer, parameters, accuracies, time."""
    table = Table(title=f"long-range task, {patterns} patterns (chance 50%); every model has depth 2")
    for column in ("model", "mixer", "parameters", "train acc", "test acc", "time"):
        table.add_column(column, justify="left" if column in ("model", "mixer") else "right")
    for entry, result in results.items():
        last = result.history[-1]
        table.add_row(entry, MODELS[entry], f"{result.parameters:,}", f"{last.train_accuracy:.1%}",
                      f"{last.test_accuracy:.1%}", f"{result.seconds:.0f} s")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """Train the chosen models and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-samples", type=int, default=4000)
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--patterns", type=int, default=2, help="patch patterns to tell apart (default 2)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    console = make_console()
    results = run_models(args.models, args.epochs, args.train_samples, args.test_samples, args.seed, console,
                         args.patterns)
    console.print(results_table(results, args.patterns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
