"""Analysis tools on compiled models: latency benchmarks (ONNX re-batching, the timing harness, the report
and plot), model facts (parameters, MACs, memory), INT8 quantization, receptive fields, reading ONNX files.

Installed as ``netdsl.analysis``; unlike the core (``netdsl``) it may import onnx, onnxruntime and torch.
"""
