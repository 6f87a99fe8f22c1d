"""Backends: one module per target (ONNX, PyTorch, TensorRT). Installed as ``netdsl.backends``."""
