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

PLUGIN_NAME = "AccmTokenTopK"
PLUGIN_VERSION = "1"
PLUGIN_DOMAIN = "accm"
ARCHS = ("86", "87", "89", "90")


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
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    link = [f"-L{tensorrt_lib}", "-lnvinfer"] if tensorrt_lib else []
    _run([nvcc() or "nvcc", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", f"-I{tensorrt_include}",
          str(src / "accmTokenTopKPlugin.cpp"), str(src / "accmTokenTopKKernel.cu"), "-o", str(out), *gencode, *link])
    return out
