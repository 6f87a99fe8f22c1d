"""TensorRT coverage: the target profiles (which ONNX ops a TensorRT flow accepts, as data) and the
checker that judges every node of an ONNX model against a profile.

Installed as ``netdsl.coverage``. :mod:`netdsl.coverage.profile` needs only numpy and the standard
library; the checker modules read ONNX models with onnx.
"""
