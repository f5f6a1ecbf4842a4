"""Developer tooling for the AccmTokenTopK plugin, kept out of the inference engines: nvcc and
host-compiler builds, the host twin and the CUDA kernel harness (``build``), and a one-layer
TensorRT rig around the plugin for the GPU tests (``rig``)."""
