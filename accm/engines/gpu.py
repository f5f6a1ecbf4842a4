"""Is there an NVIDIA GPU with TensorRT here? (torch-free; used to skip GPU-only work cleanly)."""

from __future__ import annotations

import ctypes
import functools
import importlib.util


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """CUDA devices visible through the driver API, 0 when there is no driver or device."""
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if lib.cuInit(0) != 0:
            return 0
        count = ctypes.c_int(0)
        return count.value if lib.cuDeviceGetCount(ctypes.byref(count)) == 0 else 0
    return 0


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def gpu_available() -> bool:
    return cuda_device_count() > 0 and tensorrt_available()
