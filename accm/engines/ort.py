"""ONNX Runtime sessions for bundle stages (torch-free)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import AccmUserError

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


class ProviderUnavailable(AccmUserError):
    pass


def providers_for(name: str) -> list[str]:
    if name not in PROVIDERS:
        raise ProviderUnavailable(f"unknown ONNX Runtime provider {name!r}; choose from {', '.join(PROVIDERS)}")
    wanted = PROVIDERS[name]
    if wanted[0] not in ort.get_available_providers():
        raise ProviderUnavailable(f"provider {name!r} needs {wanted[0]}, which this onnxruntime build lacks "
                                  f"(available: {', '.join(ort.get_available_providers())})")
    return wanted


class OrtStage:
    """One stage graph; ``run`` takes and returns dicts keyed by the graph's I/O names."""

    def __init__(self, path: Path, provider: str = "cpu", threads: int | None = None):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers_for(provider))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(None, {k: feeds[k] for k in self.input_names})
        return dict(zip(self.output_names, outs))


def open_bundle_stages(root: Path, manifest: dict, provider: str = "cpu", threads: int | None = None) -> dict:
    """A runner per bundle stage: ONNX Runtime sessions, or TensorRT engines for ``tensorrt``."""
    if provider == "tensorrt":
        from .trt import open_stages

        return open_stages(Path(root), manifest)
    return {name: OrtStage(Path(root) / info["file"], provider, threads) for name, info in manifest["stages"].items()}
