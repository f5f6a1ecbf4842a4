"""TensorRT compatibility check with ``tensorrt-rtx`` (a proxy, not TensorRT itself).

TensorRT proper cannot be installed without a GPU machine; TensorRT-RTX's builder parses ONNX
and builds engines ahead of time on a CPU-only host. A graph that parses and builds here uses
only ops and shapes the TensorRT ONNX parser accepts; it says nothing about Jetson kernels,
INT8/FP16 builder flags (RTX is strongly typed) or run-time speed.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from .profiles import Limits, stage_profiles


@dataclasses.dataclass
class StageCheck:
    stage: str
    parsed: bool
    built: bool
    seconds: float
    engine_bytes: int = 0
    error: str = ""


def _describe(error) -> str:
    op = getattr(error, "node_operator", lambda: "")()
    return f"{error.desc()} [node op {op}]" if op else error.desc()


def available() -> bool:
    try:
        import tensorrt_rtx  # noqa: F401
    except ImportError:
        return False
    return True


def check_stage(onnx_path: Path, profile: dict, build: bool = True) -> StageCheck:
    import tensorrt_rtx as trt

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    stage = onnx_path.stem
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(_describe(parser.get_error(i)) for i in range(min(parser.num_errors, 3)))
        return StageCheck(stage, False, False, time.perf_counter() - t0, error=errors)
    if not build:
        return StageCheck(stage, True, False, time.perf_counter() - t0)
    config = builder.create_builder_config()
    opt = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        lo, mid, hi = profile[inp.name]
        opt.set_shape(inp.name, lo, mid, hi)
    config.add_optimization_profile(opt)
    try:
        plan = builder.build_serialized_network(network, config)
    except Exception as e:  # noqa: BLE001  (the builder raises several error types)
        return StageCheck(stage, True, False, time.perf_counter() - t0, error=str(e).splitlines()[0])
    built = plan is not None
    return StageCheck(stage, True, built, time.perf_counter() - t0, engine_bytes=plan.nbytes if built else 0,
                      error="" if built else "build_serialized_network returned None")


def check_bundle(root: Path, manifest: dict, limits: Limits | None = None, build: bool = True) -> list[StageCheck]:
    profiles = stage_profiles(manifest, limits or Limits())
    return [check_stage(Path(root) / info["file"], profiles[stage], build)
            for stage, info in manifest["stages"].items()]
