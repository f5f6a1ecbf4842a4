"""Where training runs: ``--device cpu|cuda``, checked before anything is written.

The same recipe trains on either. On CUDA the deterministic kernels are asked for, so a run
repeats on the same GPU and software; a CUDA run and a CPU run of one recipe agree in what they
learn, not bit for bit (their float reductions differ in order).
"""

from __future__ import annotations

import os

import torch

from ..errors import AccmUserError

DEVICES = ("cpu", "cuda")
DEVICE_HELP = "where to train: cpu (default) or cuda (an NVIDIA GPU and a CUDA build of torch)"
THREADS_HELP = "torch threads, and at most as many scene-rendering processes (default 0: torch's default, one per core)"


def training_device(name: str) -> torch.device:
    """The torch device for ``name``; a user error when CUDA is asked for and cannot be had."""
    if name not in DEVICES:
        raise AccmUserError(f"unknown training device {name!r}: use cpu or cuda")
    if name == "cuda":
        if not torch.cuda.is_available():
            build = f"torch {torch.__version__} without CUDA" if torch.version.cuda is None \
                else f"torch {torch.__version__} finds no CUDA GPU"
            raise AccmUserError(f"--device cuda needs an NVIDIA GPU and a CUDA build of torch ({build}); "
                                "use --device cpu")
        # cuBLAS repeats its reductions only with a fixed workspace; set before its first call
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """What a training summary records as the place it ran: the GPU's name, or cpu."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
