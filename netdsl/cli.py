"""The ``netdsl`` command line.

Exit status: 0 success, 2 bad input (a located error is printed), 1 internal error
(``--debug`` shows the traceback), 130 and 143 when stopped by SIGINT or SIGTERM (see
:mod:`netdsl.interrupts`), 141 without a message when the reader of standard output closed it
(``netdsl compile ... | head -1``): the command stops there, as a program stopped by SIGPIPE does,
and leaves no output file (outputs are written whole or not at all).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
from collections.abc import Sequence

from netdsl import __version__
from netdsl.diagnostics import Diagnostic, NetdslError, render
from netdsl.interrupts import Terminated, report_stop, signals_raise

# Subcommand modules under netdsl.commands; each has add_parser(subparsers) and run(args) -> int.
# Optional packages a command may need, by import name: the extra of pyproject.toml that installs them.
OPTIONAL_EXTRAS = {"torch": "torch", "tensorrt": "gpu"}

COMMANDS = ("check", "show", "compile", "explain", "coverage", "bench", "stats", "quantize", "receptive_field")


def requested_command(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first argument that is not an option), if it is one."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every subcommand, or with just ``only``.

    Each subcommand module imports what its command needs (numpy, rich, onnx, ...): registering
    only the requested one keeps start-up short when the command is known.
    """
    parser = argparse.ArgumentParser(prog="netdsl", description="Compile .net specs of convolution-only attention "
                                     "blocks to ONNX, PyTorch and TensorRT restricted mode.")
    parser.add_argument("--version", action="version", version=f"netdsl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback for internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS if only is None else (only,):
        try:
            mod = importlib.import_module(f"netdsl.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"netdsl.commands.{name}":
                continue  # command not part of this build
            raise
        mod.add_parser(sub)
    if only is not None and only not in sub.choices:  # not a command of this build, or registered under another name
        return build_parser()
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``netdsl`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    # Start-up (the command's imports, its argument parser) makes many objects that live as long as the process
    # and are no garbage: cyclic collections during it would only walk them, again and again. Collection
    # resumes (if it was on) for the command itself.
    collecting = gc.isenabled()
    gc.disable()
    try:
        parser = build_parser(requested_command(argv))
        args = parser.parse_args(argv)
    finally:
        if collecting:
            gc.enable()
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        with signals_raise():
            return int(args.run(args) or 0)
    except NetdslError as err:
        print(render(err.diag), file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        extra = OPTIONAL_EXTRAS.get((err.name or "").partition(".")[0])
        if extra is None:
            return internal_error(err, debug or getattr(args, "debug", False))
        print(render(Diagnostic(f"'netdsl {args.command}' with these options needs the '{err.name}' package, "
                                "which is not installed", help=f'pip install "netdsl[{extra}]"')), file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as stop:
        return report_stop(stop)
    except BrokenPipeError:
        return stdout_closed()
    except Exception as err:
        return internal_error(err, debug or getattr(args, "debug", False))


def stdout_closed() -> int:
    """The reader of standard output went away (exit 141, quietly): what is left to print goes nowhere.

    Standard output is pointed at the null device so that the interpreter's flush at exit does not
    fail on the closed pipe a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


def internal_error(err: Exception, debug: bool) -> int:
    """Report an internal error (exit 1): never a bare traceback unless ``--debug`` asks for one."""
    if debug:
        import traceback  # only for --debug: every command would pay its import

        traceback.print_exception(err)
    else:
        print(f"internal error: {type(err).__name__}: {err}\n(run with --debug for a traceback)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
