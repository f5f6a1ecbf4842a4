"""Every TensorRT Python call accm makes exists in TensorRT 10.3, the version JetPack 6 ships.

TensorRT cannot be installed here, so this reads the source: every attribute used in the modules
that drive TensorRT must be either a TensorRT 10.3 API name (checked by hand against TensorRT
10.x's Python API reference, which 10.3 shares) or a known non-TensorRT name (Python, numpy,
ctypes, polygraphy's CUDA wrapper, accm's own). A new attribute fails the test until someone
checks which it is and lists it.
"""

import ast
from pathlib import Path

#: the module that drives TensorRT (``trt_rtx_check.py`` drives TensorRT-RTX, the CPU-side proxy
#: check, a different product with its own API, never run on a Jetson)
ENGINE_MODULES = ["accm/engines/trt.py", "accm/kernels/rig.py"]

#: TensorRT 10.3 Python API names accm uses (module functions, classes, enums, methods, attributes)
TENSORRT_10_3 = {
    "__version__", "Builder", "BuilderFlag", "FP16", "INT8", "Logger", "WARNING", "OnnxParser",
    "PluginField", "PluginFieldCollection", "PluginFieldType", "INT32", "Runtime", "TensorIOMode",
    "INPUT", "TensorRTPhase", "BUILD", "float16", "float32", "nptype", "init_libnvinfer_plugins",
    "get_plugin_registry", "get_creator", "create_plugin",
    # Builder / IBuilderConfig / IOptimizationProfile
    "create_network", "create_builder_config", "build_serialized_network", "create_optimization_profile",
    "add_optimization_profile", "set_flag", "get_flag", "create_timing_cache", "set_timing_cache",
    "set_shape", "set_shape_input", "serialize",
    # INetworkDefinition / ITensor / ILayer
    "add_input", "add_plugin_v3", "mark_output", "get_input", "get_output", "num_inputs", "num_outputs",
    # OnnxParser
    "parse_from_file", "num_errors", "get_error", "desc",
    # Runtime / ICudaEngine / IExecutionContext
    "deserialize_cuda_engine", "create_execution_context", "num_io_tensors", "get_tensor_name",
    "get_tensor_mode", "get_tensor_dtype", "get_tensor_shape", "set_input_shape", "set_tensor_address",
    "execute_async_v3",
}

#: names in those modules that are not TensorRT's
NOT_TENSORRT = {
    # Python, pathlib, json, hashlib, os, tempfile, ctypes
    "append", "items", "values", "get", "join", "encode", "dumps", "loads", "hexdigest", "sha256", "environ",
    "exists", "is_file", "mkdir", "parents", "resolve", "read_bytes", "read_text", "write_bytes", "write_text",
    "write", "flush", "name", "NamedTemporaryFile", "CDLL", "RTLD_GLOBAL", "byref", "c_int", "value", "data",
    "ctypes", "stem", "suffix", "parent", "unlink", "startswith", "split", "strip", "format", "getuid",
    "is_symlink", "iterdir", "lstat", "st_mode", "st_uid",
    # numpy
    "array", "ascontiguousarray", "empty", "int32", "dtype", "nbytes", "shape", "ndarray", "zeros", "prod",
    "tolist", "astype", "reshape",
    # polygraphy's CUDA wrapper (ctypes on libcudart)
    "cuda", "wrapper", "handle", "cudaGetDevice", "cudaDeviceGetAttribute", "Stream", "DeviceArray", "raw",
    "memcpy", "MemcpyKind", "HostToDevice", "DeviceToHost", "ptr", "free", "synchronize", "allocated_nbytes",
    # accm's own objects
    "trt", "logger", "runtime", "engine", "context", "stream", "buffers", "input_names", "output_names",
    "run", "_buffer", "max_batch", "max_new_tokens", "max_text_tokens", "opt_text_tokens", "inputs", "outputs",
}


def _attributes(path: Path) -> set[str]:
    return {node.attr for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Attribute)}


def test_every_tensorrt_call_exists_in_tensorrt_10_3():
    root = Path(__file__).resolve().parents[1]
    used = set().union(*(_attributes(root / m) for m in ENGINE_MODULES))
    unknown = used - TENSORRT_10_3 - NOT_TENSORRT
    assert not unknown, f"check these against TensorRT 10.3's Python API, then list them: {sorted(unknown)}"
    assert used & TENSORRT_10_3  # the modules really do drive TensorRT
