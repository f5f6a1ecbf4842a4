"""TensorRT engines from a bundle: build (profiles, timing cache), cache, load and run (no torch).

Needs the ``tensorrt`` Python package (JetPack 6 ships TensorRT 10.3 with it) and a GPU;
device buffers go through polygraphy's CUDA wrapper (``polygraphy.cuda``, ctypes on libcudart).
Nothing here ran on this repository's development machines (no GPU, no TensorRT); the ``gpu``
tests exercise it wherever both exist.

Engines live in ``<bundle>/engines/<key>/`` with ``engine.json``; the key covers the bundle
digest, engine precision, pruning configuration, GPU SM, TensorRT version and plugin version,
so an engine is never used on a machine or bundle it was not built for.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..bundle.manifest import staged_directory
from ..bundle.names import PLUGIN_NAME, PLUGIN_VERSION
from ..errors import AccmUserError
from ..files import write_bytes, write_text
from .profiles import Limits, stage_profiles

ENGINE_FORMAT = 1


class TrtError(AccmUserError):
    """TensorRT is missing, the plugin is missing, or an engine does not fit this machine."""


def _trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise TrtError("TensorRT is not installed (on Jetson it ships with JetPack; elsewhere install the "
                       "tensorrt wheel from NVIDIA)") from None
    return trt


def gpu_sm() -> str:
    from polygraphy import cuda

    major = ctypes.c_int()
    minor = ctypes.c_int()
    lib = cuda.wrapper().handle
    device = ctypes.c_int()
    lib.cudaGetDevice(ctypes.byref(device))
    lib.cudaDeviceGetAttribute(ctypes.byref(major), 75, device)  # cudaDevAttrComputeCapabilityMajor
    lib.cudaDeviceGetAttribute(ctypes.byref(minor), 76, device)  # cudaDevAttrComputeCapabilityMinor
    return f"sm_{major.value}{minor.value}"


def plugin_library() -> Path | None:
    """ACCM_TRT_PLUGIN, or the CMake build in the source tree: never a path a bundle names (a
    bundle holding a ``.so`` is refused as an unlisted file before anything loads)."""
    env = os.environ.get("ACCM_TRT_PLUGIN")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "build" / "plugin" / "libaccm_token_topk.so")
    return next((p for p in candidates if p.is_file()), None)


_loaded: dict[str, ctypes.CDLL] = {}


def load_plugin(logger, required: bool) -> Path | None:
    """Load the AccmTokenTopK plugin into TensorRT's registry (an error if ``required`` and absent)."""
    trt = _trt()
    path = plugin_library()
    if path is None:
        if required:
            raise TrtError("the bundle uses the AccmTokenTopK plugin but libaccm_token_topk.so was not found: "
                           "build plugins/accm_token_topk with CMake (see its README) or set ACCM_TRT_PLUGIN")
        return None
    if str(path) not in _loaded:
        _loaded[str(path)] = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        trt.init_libnvinfer_plugins(logger, "")
    registry = trt.get_plugin_registry()
    if registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, "") is None:
        raise TrtError(f"{path} did not register {PLUGIN_NAME} v{PLUGIN_VERSION} with TensorRT")
    return path


def uses_plugin(manifest: dict) -> bool:
    return manifest.get("target") == "trt"


def engine_precision(manifest: dict, requested: str | None) -> str:
    bundle = manifest["precision"]
    if bundle in ("int8-cpu", "int4-cpu"):
        raise TrtError(f"{bundle} bundles use ONNX Runtime's own quantized ops, which TensorRT cannot parse; "
                       "export --precision int8 (Q/DQ) for TensorRT")
    precision = requested or ("fp16" if bundle == "fp32" else bundle)
    if precision in ("int8", "int4") and bundle != precision:
        raise TrtError(f"{precision} engines are built from explicit Q/DQ graphs: export with "
                       f"--precision {precision}")
    return precision


def engine_key(manifest: dict, precision: str, sm: str, trt_version: str) -> dict:
    return {
        "format": ENGINE_FORMAT,
        "bundle_digest": manifest["bundle_digest"],
        "precision": precision,
        "pruning": manifest["pruning"],
        "sm": sm,
        "tensorrt": trt_version,
        "plugin": f"{PLUGIN_NAME}/{PLUGIN_VERSION}" if uses_plugin(manifest) else None,
    }


def key_dir(bundle: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(bundle) / "engines" / f"{key['precision']}-{key['sm']}-{digest}"


def build_engines(bundle: Path, manifest: dict, precision: str | None = None, limits: Limits | None = None,
                  progress: bool = True) -> Path:
    """Build (or find) every stage's engine; returns the engine directory."""

    trt = _trt()
    if "accm" in manifest:  # caption beams, selector: shapes not yet covered by stage_profiles
        raise TrtError("ACCM bundles have no TensorRT optimisation profiles yet: run them with --provider cpu or cuda")
    logger = trt.Logger(trt.Logger.WARNING)
    precision = engine_precision(manifest, precision)
    load_plugin(logger, required=uses_plugin(manifest))
    key = engine_key(manifest, precision, gpu_sm(), trt.__version__)
    out = key_dir(bundle, key)
    if (out / "engine.json").exists() and json.loads((out / "engine.json").read_text()) == key:
        return out
    profiles = stage_profiles(manifest, limits)
    cache_path = Path(bundle) / "engines" / "timing.cache"
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    if precision in ("fp16", "int8", "int4"):  # int4: weight-only, fp16 math around its DQ nodes
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the Q/DQ nodes
    with staged_directory(out, overwrite=True) as staged:  # a failed build leaves no half engine set
        _build_plans(trt, builder, config, cache, logger, bundle, manifest, profiles, precision, staged, progress)
        write_text(staged / "engine.json", json.dumps(key, indent=1))
    write_bytes(cache_path, bytes(cache.serialize()))
    return out


def _build_plans(trt, builder, config, cache, logger, bundle, manifest, profiles, precision, out, progress):
    from tqdm import tqdm

    for stage, info in tqdm(manifest["stages"].items(), desc="build engines", unit="engine", disable=not progress):
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(Path(bundle) / info["file"])):
            raise TrtError(f"TensorRT cannot parse {info['file']}: {parser.get_error(0).desc()}")
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            name = network.get_input(i).name
            profile.set_shape(name, *profiles[stage][name])
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise TrtError(f"TensorRT failed to build the {stage} engine")
        (out / f"{stage}.plan").write_bytes(bytes(plan))
        config = _fresh_config(builder, config, precision, cache)


def _fresh_config(builder, old, precision, cache):
    trt = _trt()
    config = builder.create_builder_config()
    config.set_timing_cache(cache, ignore_mismatch=False)
    for flag in (trt.BuilderFlag.FP16, trt.BuilderFlag.INT8):
        if old.get_flag(flag):
            config.set_flag(flag)
    return config


def check_owned(directory: Path) -> None:
    """Refuse an engine directory this user does not own, or that others may write to.

    A TensorRT plan is native code TensorRT executes (version-compatible plans even carry a
    runtime), and bundles travel: engines someone else built or can replace are never loaded.
    """
    if not hasattr(os, "getuid"):
        return
    uid = os.getuid()
    for path in [directory, *sorted(Path(directory).iterdir())]:
        st = path.lstat()
        if path.is_symlink() or st.st_uid != uid or st.st_mode & 0o022:
            raise TrtError(f"refusing engines in {directory}: {path.name} is not owned by you or is writable by "
                           "others (delete the directory to rebuild)")


def check_engines(directory: Path, manifest: dict, precision: str | None = None) -> dict:
    """Refuse engines built for another bundle, precision, GPU, TensorRT or plugin version, or
    not owned by this user."""
    trt = _trt()
    info = directory / "engine.json"
    if not info.exists():
        raise TrtError(f"no engine metadata in {directory}")
    check_owned(directory)
    built = json.loads(info.read_text())
    expected = engine_key(manifest, engine_precision(manifest, precision), gpu_sm(), trt.__version__)
    diff = [k for k in expected if built.get(k) != expected[k]]
    if diff:
        raise TrtError(f"engines in {directory} do not match this bundle/machine ({', '.join(diff)} differ); "
                       "delete the directory to rebuild")
    return built


class TrtStage:
    """One engine, run with numpy in and out (the OrtStage interface)."""

    def __init__(self, plan: Path):
        from polygraphy import cuda

        trt = _trt()
        self.trt, self.cuda = trt, cuda
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise TrtError(f"cannot deserialize {plan} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) != mode]
        self.buffers: dict = {}

    def _buffer(self, name: str, nbytes: int) -> int:
        """Device pointer of a byte buffer for ``name`` holding at least ``nbytes``."""
        buf = self.buffers.get(name)
        if buf is None or buf.allocated_nbytes < nbytes:
            if buf is not None:
                buf.free()
            buf = self.cuda.DeviceArray.raw((max(nbytes, 1),))
            self.buffers[name] = buf
        return buf.ptr

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt, cuda = self.trt, self.cuda
        copy = cuda.wrapper().memcpy
        for name in self.input_names:
            arr = np.ascontiguousarray(feeds[name], dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            self.context.set_input_shape(name, arr.shape)
            ptr = self._buffer(name, arr.nbytes)
            copy(ptr, arr.ctypes.data, arr.nbytes, cuda.MemcpyKind.HostToDevice, self.stream.ptr)
            self.context.set_tensor_address(name, ptr)
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            host = np.empty(shape, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
            outputs[name] = (host, self._buffer(name, host.nbytes))
            self.context.set_tensor_address(name, outputs[name][1])
        if not self.context.execute_async_v3(self.stream.ptr):
            raise TrtError("TensorRT execution failed")
        for host, ptr in outputs.values():
            copy(host.ctypes.data, ptr, host.nbytes, cuda.MemcpyKind.DeviceToHost, self.stream.ptr)
        self.stream.synchronize()
        return {name: host for name, (host, _) in outputs.items()}


def open_stages(bundle: Path, manifest: dict, precision: str | None = None, build: bool = True) -> dict[str, TrtStage]:
    """Engines for every stage of a bundle, built on first use (the ``--provider tensorrt`` path)."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    load_plugin(logger, required=uses_plugin(manifest))
    prec = engine_precision(manifest, precision)
    directory = key_dir(bundle, engine_key(manifest, prec, gpu_sm(), trt.__version__))
    if not (directory / "engine.json").exists():
        if not build:
            raise TrtError(f"no engines for this bundle and machine in {directory}")
        directory = build_engines(bundle, manifest, precision)
    check_engines(directory, manifest, precision)
    return {stage: TrtStage(directory / f"{stage}.plan") for stage in manifest["stages"]}
