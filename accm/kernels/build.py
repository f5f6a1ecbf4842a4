"""The AccmTokenTopK plugin's sources: host twin, compile checks, and the TensorRT library.

The CUDA/C++ sources live in ``plugins/accm_token_topk`` (``ACCM_PLUGIN_DIR`` overrides). The
host twin (the kernel's selection code compiled with the host compiler) runs everywhere; the
CUDA compile checks need ``nvcc``; the plugin library needs TensorRT's headers and library.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from ..errors import AccmUserError

ARCHS = ("86", "87", "89", "90")
#: kMaxTokens in accmTokenTopKKernel.h: the longest row the selection kernel takes
MAX_TOKENS = 8192


def plugin_dir() -> Path:
    env = os.environ.get("ACCM_PLUGIN_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "plugins" / "accm_token_topk"
    if not (path / "accmTokenTopKSelect.h").exists():
        raise AccmUserError(f"AccmTokenTopK sources not found in {path} (set ACCM_PLUGIN_DIR)")
    return path


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} … failed:\n{proc.stderr[-4000:]}")


def build_host_twin(out_dir: Path, compiler: str = "g++") -> Path:
    src = plugin_dir() / "hostTwin.cpp"
    out = Path(out_dir) / "libaccm_token_topk_host.so"
    _run([compiler, "-O2", "-std=c++17", "-shared", "-fPIC", str(src), "-o", str(out)])
    return out


class HostTwin:
    """ctypes wrapper of ``accm_token_select_host``."""

    def __init__(self, library: Path):
        self.lib = ctypes.CDLL(str(library))
        fn = self.lib.accm_token_select_host
        fn.restype = ctypes.c_int32
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p,
                       ctypes.c_void_p]
        self.fn = fn

    def select(self, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.ascontiguousarray(scores, dtype=np.float32)
        b, n = scores.shape
        kept = np.zeros((b, k), dtype=np.int32)
        dropped = np.zeros((b, n - k), dtype=np.int32)
        if self.fn(scores.ctypes.data, b, n, k, kept.ctypes.data, dropped.ctypes.data) != 0:
            raise ValueError(f"invalid k={k} for n={n}")
        return kept, dropped


def nvcc() -> str | None:
    return shutil.which("nvcc")


def compile_kernels(out_dir: Path, archs=ARCHS) -> dict[str, Path]:
    """nvcc-compile the CUDA kernels to a cubin (SASS) per architecture: a compile check."""
    out = {}
    for arch in archs:
        out[arch] = Path(out_dir) / f"accmTokenTopKKernel.sm_{arch}.cubin"
        _run([nvcc() or "nvcc", "-std=c++17", "-cubin", f"-arch=sm_{arch}",
              str(plugin_dir() / "accmTokenTopKKernel.cu"), "-o", str(out[arch])])
    return out


def cuda12_ptxas() -> str | None:
    """The ``ptxas`` of the ``nvidia-cuda-nvcc-cu12`` wheel, if installed (it has no nvcc driver)."""
    try:
        import nvidia.cuda_nvcc as pkg  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(list(pkg.__path__)[0]) / "bin" / "ptxas"
    return str(path) if path.exists() else None


def assemble_with_cuda12(out_dir: Path, arch: str = "87", ptx_version: str = "8.5") -> Path:
    """Emit the kernels' PTX with the local nvcc, label it with CUDA 12.6's PTX ISA (8.5) and
    assemble it with CUDA 12.6's ptxas: fails if the kernels need anything newer than JetPack 6."""
    ptxas = cuda12_ptxas()
    if ptxas is None:
        raise RuntimeError("nvidia-cuda-nvcc-cu12 is not installed")
    ptx = Path(out_dir) / f"kernel_{arch}.ptx"
    _run([nvcc() or "nvcc", "-std=c++17", "-ptx", f"-arch=compute_{arch}",
          str(plugin_dir() / "accmTokenTopKKernel.cu"), "-o", str(ptx)])
    text = re.sub(r"^\.version \d+\.\d+$", f".version {ptx_version}", ptx.read_text(), count=1, flags=re.M)
    ptx.write_text(text)
    cubin = ptx.with_suffix(".cubin")
    _run([ptxas, f"-arch=sm_{arch}", str(ptx), "-o", str(cubin)])
    return cubin


def build_plugin_library(out_dir: Path, tensorrt_include: Path, tensorrt_lib: Path | None = None,
                         archs=ARCHS) -> Path:
    """nvcc-build ``libaccm_token_topk.so`` (needs TensorRT headers; links libnvinfer if given)."""
    src = plugin_dir()
    out = Path(out_dir) / "libaccm_token_topk.so"
    link = [f"-L{tensorrt_lib}", "-lnvinfer"] if tensorrt_lib else []
    _run([nvcc() or "nvcc", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", f"-I{tensorrt_include}",
          str(src / "accmTokenTopKPlugin.cpp"), str(src / "accmTokenTopKKernel.cu"), "-o", str(out),
          *_gencode(archs), *link])
    return out


def _gencode(archs) -> list[str]:
    """SASS for each architecture, plus PTX of the newest so newer GPUs can JIT it."""
    return [*(f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs),
            f"-gencode=arch=compute_{max(archs)},code=compute_{max(archs)}"]


def build_kernel_harness(out_dir: Path, archs=ARCHS) -> Path:
    """nvcc-build the kernels with a plain C entry point (no TensorRT), to run them on a GPU."""
    src = plugin_dir()
    out = Path(out_dir) / "libaccm_token_topk_harness.so"
    _run([nvcc() or "nvcc", "-std=c++17", "-O3", "-shared", "-Xcompiler", "-fPIC",
          str(src / "kernelHarness.cu"), str(src / "accmTokenTopKKernel.cu"), "-o", str(out), *_gencode(archs)])
    return out


class KernelHarness:
    """ctypes wrapper of ``accm_token_topk_device``: the CUDA select + gathers on real GPU memory."""

    _TYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}

    def __init__(self, library: Path):
        fn = ctypes.CDLL(str(library)).accm_token_topk_device
        fn.restype = ctypes.c_int32
        fn.argtypes = [ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, *[ctypes.c_int32] * 4,
                       *[ctypes.c_void_p] * 4, ctypes.c_int32, ctypes.POINTER(ctypes.c_float)]
        self.fn = fn

    def run(self, scores: np.ndarray, tokens: np.ndarray, k: int, repeats: int = 0):
        """(kept, kept_index, discarded, discarded_index, ms per call or None) for [B, N] scores and
        [B, N, D] tokens of one dtype; ``repeats`` > 0 also times select + gathers on the device."""
        if scores.dtype != tokens.dtype or scores.dtype not in self._TYPES:
            raise ValueError("scores and tokens must both be float32 or both float16")
        scores, tokens = np.ascontiguousarray(scores), np.ascontiguousarray(tokens)
        (b, n), dim = scores.shape, tokens.shape[-1]
        kept_index = np.zeros((b, k), np.int32)
        discarded_index = np.zeros((b, n - k), np.int32)
        kept = np.zeros((b, k, dim), tokens.dtype)
        discarded = np.zeros((b, n - k, dim), tokens.dtype)
        ms = ctypes.c_float(0.0)
        err = self.fn(self._TYPES[scores.dtype], scores.ctypes.data, tokens.ctypes.data, b, n, dim, k,
                      kept_index.ctypes.data, discarded_index.ctypes.data, kept.ctypes.data,
                      discarded.ctypes.data, repeats, ctypes.byref(ms))
        if err != 0:
            raise RuntimeError(f"accm_token_topk_device failed with cudaError_t {err}")
        return kept, kept_index, discarded, discarded_index, (ms.value if repeats > 0 else None)
