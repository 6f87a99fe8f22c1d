"""Long fuzzing run of everything netdsl reads, to run before a release.

    python scripts/fuzz.py --examples 100000 [--seed S] [--deadline 5] [--families ...] [--save DIR]

Feeds generated programs, mutated bundled specs and random bytes/text (the strategies of
``tests/fuzz/spec_strategies.py``) to ``netdsl check``, weights files to ``netdsl compile
--weights`` and ONNX files to ``netdsl coverage`` (``tests/fuzz/file_strategies.py``), in-process,
each run under a CPU-time deadline and a memory budget. Every input must end in exit 0, or exit 2
with a located ``error:`` message (for a file: naming the file).
Prints the number of inputs tried and the crashes found, grouped by kind with the smallest
input of each kind; exits 1 if there was any crash.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# The harness lives in tests/fuzz (the package "fuzz"). Put tests/ first on the path: this
# script's own folder is on it too, and its name would otherwise shadow the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fuzz import (  # noqa: E402
    DEFAULT_DEADLINE_S,
    DEFAULT_MEMORY_BUDGET,
    Outcome,
    innermost_netdsl_frame,
    run_check,
)
from fuzz.file_strategies import (  # noqa: E402
    FileInput,
    onnx_files,
    prepare_onnx_runs,
    prepare_weights_runs,
    run_onnx_file,
    run_weights_file,
    weights_files,
)
from fuzz.spec_strategies import generated_specs, mutated_specs, random_inputs  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

Input = str | bytes | FileInput
Runner = Callable[..., Outcome]  # (input, workdir, deadline_s, memory_bytes, debug=False) -> Outcome
# Per family: its strategy, its runner, and what to import (load) once before its first run.
FAMILIES: dict[str, tuple[Callable[[], st.SearchStrategy], Runner, Callable[[], None]]] = {
    "generated": (generated_specs, run_check, lambda: None),
    "mutated": (mutated_specs, run_check, lambda: None),
    "random": (random_inputs, run_check, lambda: None),
    "weights": (weights_files, run_weights_file, prepare_weights_runs),
    "onnx": (onnx_files, run_onnx_file, prepare_onnx_runs),
}
FRAME_RE = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')
PROGRESS_EVERY = 1000
# Hypothesis remembers every example of a run to avoid repeats; runs of this size, each with its
# own seed, keep that memory (and the garbage collector's pauses) small.
CHUNK = 500


@dataclass
class Crash:
    """One kind of crash: how often it happened and the smallest input that caused it."""

    signature: str
    count: int = 0
    smallest: Input = field(default=b"")
    report: str = ""


@dataclass
class Tally:
    """Inputs tried and crashes found, per family and in total."""

    tried: dict[str, int] = field(default_factory=dict)
    crashed: dict[str, int] = field(default_factory=dict)
    crashes: dict[str, Crash] = field(default_factory=dict)

    @property
    def total_tried(self) -> int:
        return sum(self.tried.values())

    @property
    def total_crashed(self) -> int:
        return sum(self.crashed.values())


def crash_site(outcome: Outcome, source: Input, runner: Runner, workdir: Path, deadline_s: float) -> str:
    """Where in netdsl a crash happened: the hang's frame, or the internal error's, via --debug."""
    if outcome.timed_out:
        return outcome.where
    if outcome.code != 1:
        return "front end"  # a wrong message rather than an exception: no traceback to read
    debug = runner(source, workdir, deadline_s, DEFAULT_MEMORY_BUDGET, debug=True)
    frames = [(f, int(line), fn) for f, line, fn in FRAME_RE.findall(debug.stderr)]
    return innermost_netdsl_frame(frames)


def signature(outcome: Outcome, site: str, workdir: Path) -> str:
    """The kind of a crash: its first problem with numbers and paths blanked out, and its site."""
    if outcome.timed_out:
        problem = "no result within the deadline (hang or runaway work)"
    else:
        problem = re.sub(r"\d+", "N", outcome.problems()[0].replace(str(workdir), "<work>"))
    return f"{problem[:160]} @ {site}"


def fuzz_family(name: str, strategy: st.SearchStrategy, runner: Runner, examples: int, run_seed: int, tally: Tally,
                workdir: Path, deadline_s: float, memory_bytes: int) -> None:
    """Run ``examples`` inputs of one family, recording crashes instead of stopping at the first."""
    tally.tried[name] = tally.crashed[name] = 0
    started = time.monotonic()
    for chunk, first in enumerate(range(0, examples, CHUNK)):
        chunk_seed = random.Random(f"{run_seed}/{name}/{chunk}").randrange(2**32)
        fuzz_chunk(name, strategy, runner, min(CHUNK, examples - first), chunk_seed, tally, workdir, deadline_s,
                   memory_bytes, started)


def fuzz_chunk(name: str, strategy: st.SearchStrategy, runner: Runner, examples: int, chunk_seed: int, tally: Tally,
               workdir: Path, deadline_s: float, memory_bytes: int, started: float) -> None:
    """One Hypothesis run of ``examples`` inputs (see :data:`CHUNK`)."""

    @hypothesis_seed(chunk_seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(source=strategy)
    def one(source: Input) -> None:
        outcome = runner(source, workdir, deadline_s, memory_bytes)
        tally.tried[name] += 1
        if outcome.problems():
            tally.crashed[name] += 1
            kind = signature(outcome, crash_site(outcome, source, runner, workdir, deadline_s), workdir)
            crash = tally.crashes.setdefault(kind, Crash(kind))
            crash.count += 1
            if crash.count == 1:  # shown at once: a run stopped before its summary still tells what it found
                print(f"  {name}: new crash kind at input {tally.tried[name]}: {kind}\n    input: {source!r:.300}",
                      file=sys.stderr, flush=True)
            if crash.count == 1 or len(source) < len(crash.smallest):
                crash.smallest, crash.report = source, outcome.describe()
        if tally.tried[name] % PROGRESS_EVERY == 0:
            print(f"  {name}: {tally.tried[name]} inputs, {tally.crashed[name]} crashes, "
                  f"{time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)

    one()


def print_summary(tally: Tally, save: Path | None) -> None:
    for name, tried in tally.tried.items():
        print(f"{name}: {tried} inputs tried, {tally.crashed[name]} crashes")
    print(f"total: {tally.total_tried} inputs tried, {tally.total_crashed} crashes "
          f"({len(tally.crashes)} distinct)")
    ordered = sorted(tally.crashes.values(), key=lambda c: -c.count)
    for i, crash in enumerate(ordered, 1):
        shown = crash.smallest if isinstance(crash.smallest, str) else repr(crash.smallest)
        data = crash.smallest.encode() if isinstance(crash.smallest, str) else crash.smallest
        print(f"\n[{i}] {crash.count}x {crash.signature}\n--- smallest input ({len(crash.smallest)} chars)\n"
              f"{shown[:600]}")
        if save is not None:
            save.mkdir(parents=True, exist_ok=True)
            if isinstance(data, FileInput):
                data.write(save / f"crash-{i:02d}")
            else:
                (save / f"crash-{i:02d}.net").write_bytes(data)
            (save / f"crash-{i:02d}.txt").write_text(f"{crash.signature}\n\n{crash.report}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=20_000, help="inputs in total, split over the families")
    parser.add_argument("--seed", type=int, default=None, help="seed of the run (default: random, printed)")
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE_S,
                        help="seconds of CPU time allowed per input (and ten times that of wall time)")
    parser.add_argument("--memory-mib", type=int, default=DEFAULT_MEMORY_BUDGET >> 20,
                        help="address space one input may add, in MiB")
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help=f"comma-separated subset of: {', '.join(FAMILIES)}")
    parser.add_argument("--save", type=Path, default=None, help="folder for the smallest input of each crash kind")
    args = parser.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or not families or args.examples < len(families):
        parser.error(f"need known families ({', '.join(FAMILIES)}) and at least one example each; got {unknown}")
    run_seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"netdsl fuzz: {args.examples} inputs, seed {run_seed}, deadline {args.deadline:g} s of CPU time, "
          f"memory budget {args.memory_mib} MiB", flush=True)
    # The recursion limit a netdsl run sets for itself (netdsl.elaborate), set once here: Hypothesis
    # warns at every example whose run changes it.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))
    tally = Tally()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="netdsl-fuzz-") as tmp:
        for i, name in enumerate(families):
            share = args.examples // len(families) + (i < args.examples % len(families))
            strategy, runner, prepare = FAMILIES[name]
            prepare()
            fuzz_family(name, strategy(), runner, share, run_seed + i, tally, Path(tmp), args.deadline,
                        args.memory_mib << 20)
    print(f"finished in {time.monotonic() - started:.0f} s")
    print_summary(tally, args.save)
    return 1 if tally.total_crashed else 0


if __name__ == "__main__":
    sys.exit(main())
