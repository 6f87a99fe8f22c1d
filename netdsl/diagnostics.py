"""Located, human-readable compiler errors.

A :class:`Diagnostic` has a message, a primary :class:`Span`, optional notes and help, and
the instantiation chain (blocks inside blocks) that led to it. :func:`render` formats it like::

    error: conv expects 64 input channels, found 32 in f32[2,32,14,14]
      --> specs/acmix.net:12:9
       |
    12 |     q = conv(x, out_planes, kernel=1) as conv1
       |         ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
       = in block ACmix 'layer1.0.conv2' instantiated at specs/models/resnet_acmix.net:20:13
       = help: did you mean 'conv'?
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from netdsl.ir import Frame, Span


@dataclass
class Diagnostic:
    """One error (or warning): message, where, and what else helps the user fix it."""

    message: str
    span: Span | None = None
    notes: list[str] = field(default_factory=list)
    help: str | None = None
    chain: tuple[Frame, ...] = ()
    severity: str = "error"  # or "warning": reported, but the command goes on


class NetdslError(Exception):
    """A user error (bad spec, bad flags, bad weights): reported with exit code 2."""

    def __init__(self, diag: Diagnostic | str, span: Span | None = None, **kw: object):
        if isinstance(diag, str):
            diag = Diagnostic(diag, span, **kw)  # type: ignore[arg-type]
        super().__init__(diag.message)
        self.diag = diag


class SourceCache:
    """Texts of the files diagnostics point into, keyed by the path shown to the user."""

    texts: dict[str, str] = {}

    @classmethod
    def add(cls, path: str, text: str) -> None:
        cls.texts[path] = text

    @classmethod
    def line(cls, path: str, line: int) -> str | None:
        text = cls.texts.get(path)
        if text is None:
            return None
        lines = text.splitlines()
        return lines[line - 1] if 0 < line <= len(lines) else None


def one_line(text: object) -> str:
    """``str(text)`` with its runs of whitespace, newlines included, collapsed to single spaces
    (third-party error messages inside a one-line diagnostic)."""
    return " ".join(str(text).split())


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """``"did you mean 'x'?"`` for the closest candidate, or None."""
    import difflib  # only when a name is unknown: a command that succeeds does not pay its import

    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def render(diag: Diagnostic) -> str:
    """Format a diagnostic with the source line and a caret under the span."""
    out = [f"{diag.severity}: {diag.message}"]
    span = diag.span
    if span is not None:
        out.append(f"  --> {span.file}:{span.line}:{span.col}")
        src = SourceCache.line(span.file, span.line)
        if src is not None:
            num = str(span.line)
            pad = " " * len(num)
            end = span.end_col if span.end_line == span.line else len(src) + 1
            width = max(1, end - span.col)
            out.append(f"{pad} |")
            out.append(f"{num} | {src}")
            # Keep the source's tabs so the caret lines up under the span.
            lead = "".join(c if c == "\t" else " " for c in src[: span.col - 1])
            out.append(f"{pad} | {lead}{'^' * width}")
    for note in diag.notes:
        out.append(f"   = note: {note}")
    frames = [f for f in reversed(diag.chain) if f.call is not None]  # the entry has no call site
    if len(frames) > 8:  # deep (often recursive) chains: the innermost and outermost frames tell the story
        hidden = len(frames) - 6
        frames = frames[:3] + [None] + frames[-3:]  # type: ignore[list-item]
    for frame in frames:
        if frame is None:
            out.append(f"   = ... {hidden} more instantiations ...")
            continue
        where = f" instantiated at {frame.call}" if frame.call else ""
        label = f" '{frame.path}'" if frame.path else ""
        out.append(f"   = in block {frame.block}{label}{where}")
    if diag.help:
        out.append(f"   = help: {diag.help}")
    return "\n".join(out)
