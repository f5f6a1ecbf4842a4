"""Inference backends: ONNX Runtime sessions and TensorRT engines (torch-free)."""
