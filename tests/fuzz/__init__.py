"""Fuzzing support: run ``netdsl check`` in-process on one input and judge how it ended.

The contract under test (DESIGN.md: "bad input of any kind gets a located, human error"):
every input ends in exit 0, or in exit 2 with a message that starts with ``error:`` and
either points into a file (a ``-->`` line) or is about command-line flags. Never exit 1
(internal error), never a traceback, never a hang, never unbounded memory.

:func:`run_check` enforces the last two itself: a CPU-time deadline (``SIGPROF``, with a wall-clock
limit behind it) and an address-space budget (``RLIMIT_AS``) for the duration of one run, so a
runaway input becomes a reported problem instead of a stuck or swapping test process.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import resource
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from netdsl.cli import main

DEFAULT_DEADLINE_S = 5.0  # seconds of CPU time one run may use
WALL_FACTOR = 10  # a run's wall-clock limit, in multiples of its CPU-time deadline
DEFAULT_MEMORY_BUDGET = 2 << 30  # bytes of address space one run may add to the process

# An exit-2 message without a location must be about one of these flags.
FLAG_WORDS = ("--entry", "--set", "--input", "--lib")

SPEC_NAME = "fuzz.net"


class FuzzTimeout(BaseException):
    """Raised by the alarm when a run passes its deadline.

    A BaseException, so that the CLI's ``except Exception`` (internal-error reporting) cannot
    swallow it and the hang is seen as a hang.
    """


@dataclass(frozen=True)
class Contract:
    """What a command's acceptable endings look like (the defaults are ``netdsl check``'s).

    ``ok_prefix`` starts the standard output of an exit-0 run ("" accepts any). An exit-2 error
    counts as located when it points into a spec (a ``-->`` line), is about a flag, or names
    ``names_file`` on its first line (errors about an input file). ``verdict`` is the text of an
    exit-2 answer that is a finding rather than an error (``coverage``: a node not covered).
    """

    ok_prefix: str = "ok:"
    names_file: str | None = None
    verdict: str | None = None


@dataclass(frozen=True)
class Outcome:
    """How one netdsl run ended."""

    code: int | None  # None when the run was stopped at its deadline
    stdout: str
    stderr: str
    seconds: float
    deadline_s: float = field(default=DEFAULT_DEADLINE_S)
    where: str = ""  # for a run stopped at its deadline: the front-end line it was running
    warnings: tuple[str, ...] = ()  # Python warnings the run raised (a user would see them on stderr)
    contract: Contract = field(default_factory=Contract)

    @property
    def timed_out(self) -> bool:
        return self.code is None

    def problems(self) -> list[str]:
        """Every way this outcome breaks the contract; empty when it is acceptable."""
        if self.timed_out:
            return [f"no result within {self.deadline_s:g} s of CPU time or {WALL_FACTOR * self.deadline_s:g} s "
                    f"(hang or runaway work) at {self.where}"]
        found: list[str] = []
        both = self.stdout + self.stderr
        if "Traceback (most recent call last)" in both:
            found.append("a traceback was printed")
        if self.code == 1:
            what = "memory budget exceeded" if "MemoryError" in self.stderr else "internal error"
            found.append(f"{what} (exit 1): {first_line(self.stderr)}")
        elif self.code == 0:
            if not self.stdout.startswith(self.contract.ok_prefix):
                found.append(f"exit 0 without an {self.contract.ok_prefix!r} line: {first_line(self.stdout)!r}")
        elif self.code == 2:
            if self.contract.verdict and not self.stderr and self.contract.verdict in self.stdout:
                pass  # an answer ("not covered"), not an error
            elif not self.stderr.startswith("error:"):
                found.append(f"exit 2 whose message does not start with 'error:': {first_line(self.stderr)!r}")
            elif not self._located():
                found.append(f"exit 2 without a location: {first_line(self.stderr)!r}")
        else:
            found.append(f"unexpected exit status {self.code}: {first_line(self.stderr)!r}")
        # Last, so that the first problem is the most severe one.
        return found + [f"a Python warning reached the user: {w}" for w in self.warnings]

    def _located(self) -> bool:
        head = first_line(self.stderr)
        return ("\n  --> " in self.stderr or any(f in head for f in FLAG_WORDS)
                or (self.contract.names_file is not None and self.contract.names_file in head))

    def describe(self) -> str:
        """A report of this outcome for an assertion message."""
        return (f"exit {self.code} after {self.seconds:.2f} s\n--- problems\n" + "\n".join(self.problems())
                + f"\n--- stdout\n{self.stdout[:2000]}\n--- stderr\n{self.stderr[:4000]}")


def first_line(text: str) -> str:
    """The first line of ``text`` (empty for empty text)."""
    return text.split("\n", 1)[0]


def innermost_netdsl_frame(frames: list[tuple[str, int, str]]) -> str:
    """``netdsl/elaborate.py:412 in _eval_binop`` for the last (file, line, function) inside the package."""
    for filename, line, func in reversed(frames):
        parts = Path(filename).parts
        for package in ("netdsl", "backends"):
            if package in parts:
                rel = "/".join(parts[len(parts) - parts[::-1].index(package) - 1:])
                return f"{rel}:{line} in {func}" if func else f"{rel}:{line}"
    return "outside netdsl"


def _address_space_bytes() -> int:
    """Current virtual memory size of this process (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    return pages * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block.

    A collection of the whole process's heap (large after thousands of examples) would count
    against one run's deadline, and an alarm landing in a collector callback is swallowed.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextlib.contextmanager
def memory_budget(extra_bytes: int) -> Iterator[None]:
    """Cap the address space at its current size plus ``extra_bytes`` (restored afterwards).

    Only the soft limit is lowered, so it can always be raised back to what it was.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _address_space_bytes() + extra_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY:
        cap = min(cap, soft)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@dataclass
class Alarm:
    """Whether a :func:`deadline` has passed (even if its exception was swallowed on the way)."""

    fired: bool = False


@contextlib.contextmanager
def deadline(seconds: float, wall_seconds: float | None = None) -> Iterator[Alarm]:
    """Raise :class:`FuzzTimeout` in this (main) thread once the process has used ``seconds`` of CPU
    time, or once ``wall_seconds`` (default :data:`WALL_FACTOR` times ``seconds``) have passed.

    CPU time (``ITIMER_PROF``) rather than wall time: on a loaded machine, or at a low priority, a
    run spends most of its wall time waiting for a processor, which a wall-clock deadline would
    report as a hang. The wall-clock limit still stops a run that blocks without computing.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("the fuzz deadline needs SIGPROF and SIGALRM, which only the main thread handles")
    alarm = Alarm()

    def on_alarm(signum: int, frame: object) -> None:
        alarm.fired = True
        raise FuzzTimeout

    timers = ((signal.ITIMER_PROF, signal.SIGPROF, seconds),
              (signal.ITIMER_REAL, signal.SIGALRM, WALL_FACTOR * seconds if wall_seconds is None else wall_seconds))
    previous = {signum: signal.signal(signum, on_alarm) for _, signum, _ in timers}
    for timer, _, limit in timers:
        signal.setitimer(timer, limit)
    try:
        yield alarm
    finally:
        try:
            for timer, _, _ in timers:
                signal.setitimer(timer, 0)
        finally:  # even if a timer fired just before it was cancelled
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def run_cli(argv: list[str], deadline_s: float = DEFAULT_DEADLINE_S,
            memory_bytes: int = DEFAULT_MEMORY_BUDGET, contract: Contract | None = None) -> Outcome:
    """Run ``netdsl ARGV`` in this process with captured output, a deadline and a memory budget,
    judged by ``contract`` (``netdsl check``'s by default)."""
    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    code: int | None
    where = ""
    alarm = Alarm()
    # Record every warning: by default Python shows each one once per process, which would make
    # whether a run "printed a warning" depend on the runs before it.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                with gc_paused(), memory_budget(memory_bytes), deadline(deadline_s) as alarm:
                    try:
                        code = main(argv)
                    except SystemExit as ex:  # argparse reports bad flags this way
                        code = ex.code if isinstance(ex.code, int) else 2
        except FuzzTimeout as stop:
            code = None
            frames = traceback.extract_tb(stop.__traceback__)
            where = innermost_netdsl_frame([(f.filename, f.lineno or 0, f.name) for f in frames])
    if alarm.fired and code is not None:  # something swallowed the FuzzTimeout: still over the deadline
        code, where = None, "an unknown place (the stop was swallowed)"
    shown = tuple(f"{w.category.__name__}: {w.message} ({innermost_netdsl_frame([(w.filename, w.lineno, '')])})"
                  for w in caught)
    return Outcome(code, out.getvalue(), err.getvalue(), time.monotonic() - start, deadline_s, where, shown,
                   contract or Contract())


def run_check(source: str | bytes, workdir: Path, deadline_s: float = DEFAULT_DEADLINE_S,
              memory_bytes: int = DEFAULT_MEMORY_BUDGET, debug: bool = False) -> Outcome:
    """Write ``source`` to a spec file in ``workdir`` and run ``netdsl check`` on it.

    The file name is always the same, so that repeated runs do not grow the CLI's cache of
    source texts (it keeps one text per path). ``debug`` adds ``--debug`` (a traceback for an
    internal error).
    """
    path = workdir / SPEC_NAME
    path.write_bytes(source.encode("utf-8") if isinstance(source, str) else source)
    return run_cli([*debug_flag(debug), "check", str(path)], deadline_s, memory_bytes)


def debug_flag(debug: bool) -> list[str]:
    """The ``--debug`` flag when ``debug`` is set."""
    return ["--debug"] if debug else []
