"""The trtexec command line that builds a TensorRT engine from a compiled ONNX model on the target.

Apart from :mod:`netdsl.backends.trt_engine` (engines built from Python), so that ``netdsl compile``
prints the command without importing the engine builder.
"""

from __future__ import annotations

import shlex
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "int8", "qdq")

# profile name or the profile's `flow` -> the engine capability trtexec should target
_FLOW_OF = {"trt": "kSTANDARD", "trt-restricted": "kSAFETY", "trt-dla": "kDLA_STANDALONE",
            "kSTANDARD": "kSTANDARD", "kSAFETY": "kSAFETY", "kDLA_STANDALONE": "kDLA_STANDALONE"}


def trtexec_command(onnx_path: str | Path, profile_name: str, precision: str, engine_path: str | Path | None = None,
                    calibration_cache: str | Path | None = None, dla_core: int = 0) -> str:
    """The trtexec command line that builds the same engine on the target.

    ``profile_name`` is a bundled profile name or a profile's ``flow`` (``kSTANDARD``, ``kSAFETY``,
    ``kDLA_STANDALONE``; use it for user profiles). The safety flow adds ``--safe`` (kSAFETY; needs
    the DRIVE OS TensorRT with the safe runtime), the DLA flow builds a standalone loadable
    (``--useDLACore --buildDLAStandalone`` with the DLA I/O formats trtexec requires). INT8 without
    a calibration cache makes trtexec use placeholder scales: right for timing, not for accuracy."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}")
    flow = _FLOW_OF.get(profile_name)
    if flow is None:
        raise ValueError(f"profile '{profile_name}' is not one of {', '.join(_FLOW_OF)} (pass a user profile's flow)")
    onnx_path = Path(onnx_path)
    engine = Path(engine_path) if engine_path else onnx_path.with_suffix(".engine")
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine}"]
    args += {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"], "qdq": ["--stronglyTyped"]}[precision]
    if precision == "int8" and calibration_cache:
        args.append(f"--calib={calibration_cache}")
    if flow == "kSAFETY":
        args.append("--safe")
    elif flow == "kDLA_STANDALONE":
        if precision not in ("fp16", "int8"):
            raise ValueError("DLA runs FP16 or INT8 only")
        io_format = "fp16:chw16" if precision == "fp16" else "int8:chw32"
        args += [f"--useDLACore={dla_core}", "--buildDLAStandalone",
                 f"--inputIOFormats={io_format}", f"--outputIOFormats={io_format}"]
    return shlex.join(args)
