"""ONNX Runtime sessions for bundle stages (torch-free).

onnxruntime is imported on first use: the runtime install names no backend (``accm[cpu]`` adds
onnxruntime, ``accm[gpu]`` onnxruntime-gpu, and a Jetson may use JetPack's TensorRT alone).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..bundle.manifest import BundleError
from ..errors import AccmUserError

if TYPE_CHECKING:
    import onnxruntime as ort

NO_BACKEND = ("no inference backend: install accm[cpu] (onnxruntime) or accm[gpu] (onnxruntime-gpu), "
              "or run --provider tensorrt with TensorRT installed")


class BackendMissing(AccmUserError):
    pass


@functools.cache
def onnxruntime():
    """The onnxruntime module (CPU or GPU build), or one clear error when neither is installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendMissing(NO_BACKEND) from None
    return ort

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
    ort = onnxruntime()
    if wanted[0] not in ort.get_available_providers():
        raise ProviderUnavailable(f"provider {name!r} needs {wanted[0]}, which this onnxruntime build lacks "
                                  f"(available: {', '.join(ort.get_available_providers())})")
    return wanted


class OrtStage:
    """One stage graph; ``run`` takes and returns dicts keyed by the graph's I/O names.

    ``initializers`` (name → OrtValue) replace the graph's own weights; sessions given the same
    OrtValues share that memory. Pre-packing is then off: ONNX Runtime would otherwise keep a
    pre-packed copy per session and the sharing would save nothing.
    """

    def __init__(self, path: Path, provider: str = "cpu", threads: int | None = None,
                 initializers: dict[str, ort.OrtValue] | None = None):
        ort = onnxruntime()
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        for name, value in (initializers or {}).items():
            opts.add_initializer(name, value)
        if initializers:
            opts.add_session_config_entry("session.disable_prepacking", "1")
        self.initializers = initializers  # the session does not own them: keep them alive
        providers = providers_for(provider)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime's own error types: a graph it cannot load is a bad bundle
            first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
            raise BundleError(f"bundle graph {Path(path).name} cannot be loaded by onnxruntime: "
                              f"{first[:300]}") from None
        self.name = Path(path).name
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [k for k in self.input_names if k not in feeds]
        if missing:
            raise BundleError(f"bundle graph {self.name} wants inputs the runtime does not have: {', '.join(missing)}")
        outs = self.session.run(None, {k: feeds[k] for k in self.input_names})
        return dict(zip(self.output_names, outs))


def shares_weights(manifest: dict, provider: str) -> bool:
    """Whether ``share_weights`` takes effect. Measured on the 7B stand-in (2 layers, CPU): fp32
    peak RSS 5.2 → 3.2 GB, prefill ~10% slower, decode unchanged; fp16 saves nothing (ONNX
    Runtime's CPU kernels cast the weights to fp32 per session); int8-cpu saves 0.4 GB but decodes
    2× slower without its pre-packed integer weights. So: fp32 bundles on the CPU provider."""
    return provider == "cpu" and manifest.get("precision") == "fp32" and bool(manifest.get("shared_weights"))


def open_bundle_stages(root: Path, manifest: dict, provider: str = "cpu", threads: int | None = None,
                       share_weights: bool = False) -> dict:
    """A runner per bundle stage: ONNX Runtime sessions, or TensorRT engines for ``tensorrt``.
    ``share_weights``: prefill and decode map their common weights once (callers decide it with
    ``shares_weights``)."""
    if provider == "tensorrt":
        from .trt import open_stages

        return open_stages(Path(root), manifest)
    shared = shared_initializers(Path(root), manifest) if share_weights else {}
    return {name: OrtStage(Path(root) / info["file"], provider, threads, shared.get(name))
            for name, info in manifest["stages"].items()}


def shared_initializers(root: Path, manifest: dict) -> dict[str, dict[str, ort.OrtValue]]:
    """Per stage, name → OrtValue for the weights the manifest lists as shared between stages
    (prefill and decode): each is memory-mapped from the bundle once, read-only, and paged in
    on use, so the two LLM sessions hold one copy instead of two."""
    ort = onnxruntime()
    maps: dict[str, np.memmap] = {}
    out: dict[str, dict[str, ort.OrtValue]] = {}
    for entry in manifest.get("shared_weights", []):
        try:
            file, offset, length = entry["file"], int(entry["offset"]), int(entry["length"])
            dtype, shape = np.dtype(entry["dtype"]), tuple(int(d) for d in entry["shape"])
            names = dict(entry["names"])
        except (KeyError, TypeError, ValueError) as e:
            raise AccmUserError(f"altered bundle: a shared_weights entry in its manifest is malformed ({e})") from None
        if file not in manifest["files"]:
            raise AccmUserError(f"altered bundle: shared weights point at {file!r}, which the manifest does not list")
        if file not in maps:
            maps[file] = np.memmap(root / file, dtype=np.uint8, mode="r")
        data = maps[file]
        if offset < 0 or offset + length > data.size or length != int(np.prod(shape)) * dtype.itemsize:
            raise AccmUserError(f"altered bundle: shared weights point outside {file}")
        value = ort.OrtValue.ortvalue_from_numpy(data[offset:offset + length].view(dtype).reshape(shape))
        for stage, name in names.items():
            out.setdefault(stage, {})[name] = value
    return out
