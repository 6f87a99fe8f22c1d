"""Freed arrays go back to the operating system at once, so peak memory follows the live weights.

glibc's ``malloc`` serves blocks of 128 KiB or more with ``mmap`` and returns them with
``munmap`` on ``free``, but it raises that threshold to the size of every such block freed (up
to 32 MiB). After the first weight is replaced (batch-norm folding frees each old kernel once its
folded one exists), the next weights of a few MiB come from the heap, whose freed holes stay
resident: compiling a 110 MB model kept 56 MB of freed kernels in its resident set. Fixing the
threshold with ``mallopt`` stops that adjustment.

It is fixed at glibc's own starting value, 128 KiB. At 1 MiB, the float16 range check of ResNet-ACmix
(whose float16 kernels are mostly under 1 MiB, as are many of the interpreter's activations) peaked
10 MB higher and the lowered graph with its weights held 7.5 MB more (resident after the pass
pipeline: 92.3 MB at 1 MiB, 84.8 MB at 128 KiB; 64 and 32 KiB gave no more).
"""

from __future__ import annotations

import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 128 << 10
"""Blocks from this size up are mapped on their own and unmapped when freed; smaller ones reuse heap holes."""


def release_freed_arrays() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD_BYTES`; False where there is no glibc ``mallopt``."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter is linked to
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
