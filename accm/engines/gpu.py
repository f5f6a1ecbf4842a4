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


def _libcuda():
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def cuda_devices() -> list[dict]:
    """Name and SM of each CUDA device (driver API), [] without a driver or device."""
    lib = _libcuda()
    if lib is None or lib.cuInit(0) != 0:
        return []
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return []
    out = []
    for i in range(count.value):
        dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        name = ctypes.create_string_buffer(256)
        lib.cuDeviceGet(ctypes.byref(dev), i)
        lib.cuDeviceGetName(name, 256, dev)
        lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
        lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)
        out.append({"name": name.value.decode(errors="replace"), "sm": f"sm_{major.value}{minor.value}"})
    return out
