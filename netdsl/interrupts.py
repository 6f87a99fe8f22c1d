"""Stopping cleanly on SIGINT and SIGTERM.

Python turns SIGINT into :class:`KeyboardInterrupt`; SIGTERM's default action ends the process
at once, leaving the staging folders of :mod:`netdsl.atomic_write` behind. Inside
:func:`signals_raise`, SIGTERM raises :class:`Terminated` instead, so both signals unwind the
stack like an error: every ``finally`` runs, staged outputs are deleted unpublished, and the
command ends with one line and the shell's status for the signal (130 for SIGINT, 143 for
SIGTERM).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(BaseException):
    """SIGTERM, raised in the main thread (a BaseException, like KeyboardInterrupt: no
    ``except Exception`` on the way may swallow it)."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


@contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` inside the block (SIGINT raises KeyboardInterrupt as always).

    Only the main thread can install signal handlers; elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def report_stop(stop: BaseException) -> int:
    """Print the one line for a stop by signal and return its exit status (128 + the signal's number)."""
    signum = signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT
    print(f"interrupted by {signum.name}: stopped, nothing partial was left behind", file=sys.stderr)
    return 128 + signum.value
