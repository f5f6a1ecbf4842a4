"""``accm-bench roofline``: predicted (never measured) LLaVA-1.5-7B latency on a device.

A roofline model: each phase takes ``max(FLOPs / (peak · compute_eff), bytes / (bandwidth ·
memory_eff))``. Prefill (vision tower + LLM prefill, TTFT) is compute-bound on every device
below; decode reads every weight once per token plus each layer's KV cache, so it is
bandwidth-bound. The defaults (100 % of peak) give an upper bound on speed; real engines reach
a fraction of it. FLOPs come from ``accm.pruning.flops``; the weight bytes from the same dims.

Device numbers (dense tensor-core rates; "derived" = computed from the cited figures):

- Jetson AGX Orin 64GB: GPU 16 SMs / 64 Tensor Cores, 170 sparse INT8 TOPS at 1.3 GHz (NVIDIA
  Jetson AGX Orin Series Technical Brief v1.2) → 85 dense INT8 TOPS, 42.5 dense FP16 TFLOPS
  (derived: sparsity ×2, INT8 = 2 × FP16); LPDDR5 204.8 GB/s (Jetson AGX Orin data sheet).
- Jetson Orin NX 16GB: 100 sparse INT8 TOPS for the module (GPU + 2 DLA); GPU 8 SMs at 918 MHz
  → 60 sparse INT8 TOPS (derived from AGX: ×8/16 SMs × 918/1300 MHz) → 30 INT8 / 15 FP16
  dense; LPDDR5 102.4 GB/s (Jetson Orin NX data sheet).
- Jetson Orin Nano 8GB: 40 sparse INT8 TOPS, GPU only (8 SMs at 625 MHz) → 20 INT8 / 10 FP16
  dense; LPDDR5 68 GB/s (Jetson Orin Nano data sheet; JetPack 6.1 "Super" mode: 67 TOPS and
  102 GB/s).
- GeForce RTX 4090: 330.3 dense FP16 TFLOPS with FP16 accumulate (165.2 with FP32 accumulate),
  660.6 dense INT8 TOPS, GDDR6X 1008 GB/s (NVIDIA Ada GPU Architecture whitepaper, Appendix A).
- A100 SXM4 80GB: 312 dense FP16 TFLOPS, 624 dense INT8 TOPS, HBM2e 2039 GB/s (NVIDIA A100
  Tensor Core GPU data sheet).
"""

from __future__ import annotations

import dataclasses

from ..pruning.flops import LLAVA_15_7B, ModelDims, llm_decode_flops, llm_prefill_flops, vision_flops
from ..pruning.schedule import Schedule


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    fp16_tflops: float  # dense tensor-core peak
    int8_tops: float  # dense tensor-core peak
    bandwidth_gbs: float
    source: str


DEVICES = {
    "orin-agx-64gb": Device("Jetson AGX Orin 64GB", 42.5, 85.0, 204.8,
                            "Jetson AGX Orin technical brief v1.2 / data sheet (dense rates derived)"),
    "orin-nx-16gb": Device("Jetson Orin NX 16GB", 15.0, 30.0, 102.4,
                           "Jetson Orin NX data sheet (GPU share and dense rates derived)"),
    "orin-nano-8gb": Device("Jetson Orin Nano 8GB", 10.0, 20.0, 68.0,
                            "Jetson Orin Nano data sheet (dense rates derived; not Super mode)"),
    "rtx-4090": Device("GeForce RTX 4090", 165.2, 660.6, 1008.0,
                       "NVIDIA Ada GPU Architecture whitepaper (FP16 with FP32 accumulate)"),
    "a100": Device("A100 SXM4 80GB", 312.0, 624.0, 2039.0, "NVIDIA A100 Tensor Core GPU data sheet"),
}

#: bytes per weight by precision (int8: Q/DQ weight MatMuls in int8, the rest fp16 — see calib/)
WEIGHT_BYTES = {"fp16": 2.0, "int8": 1.0}


def llm_weight_bytes(dims: ModelDims, precision: str) -> float:
    """Bytes read per decoded token: every decoder matrix, the LM head (fp16 for norms/embeds)."""
    per_layer = 2 * dims.hidden * dims.hidden + 2 * dims.hidden * dims.kv_width + 3 * dims.hidden * dims.intermediate
    matmuls = dims.layers * per_layer + dims.vocab * dims.hidden
    return matmuls * WEIGHT_BYTES[precision]


def vision_weight_bytes(dims: ModelDims, precision: str) -> float:
    d, m = dims.vision_hidden, dims.vision_intermediate
    params = dims.vision_layers_run * (4 * d * d + 2 * d * m) + d * dims.hidden + dims.hidden**2
    return params * WEIGHT_BYTES[precision]


@dataclasses.dataclass
class Prediction:
    device: str
    precision: str
    vision_keep: int | None
    schedule: str
    ttft_ms: float
    decode_tokens_per_s: float
    prefill_bound: str
    decode_bound: str


def predict(device: Device, dims: ModelDims, precision: str, schedule: Schedule, n_text: int = 64,
            vision_keep: int | None = None, context: int = 32, compute_eff: float = 1.0,
            memory_eff: float = 1.0) -> Prediction:
    peak = (device.fp16_tflops if precision == "fp16" else device.int8_tops) * 1e12 * compute_eff
    bandwidth = device.bandwidth_gbs * 1e9 * memory_eff
    n_image = dims.patches if vision_keep is None else min(vision_keep, dims.patches)
    flops = vision_flops(dims, vision_keep) + llm_prefill_flops(dims, schedule, n_text, n_image)
    weights = llm_weight_bytes(dims, precision) + vision_weight_bytes(dims, precision)
    compute_s, memory_s = flops / peak, weights / bandwidth
    ttft = max(compute_s, memory_s)
    counts = schedule.layer_counts(dims.layers, n_image)
    kv_bytes = sum(2 * (n_text + c + context) * dims.kv_width * 2.0 for c in counts)  # fp16 KV cache
    dec_memory = (llm_weight_bytes(dims, precision) + kv_bytes) / bandwidth
    dec_compute = llm_decode_flops(dims, schedule, n_text, n_image, context) / peak
    step = max(dec_memory, dec_compute)
    return Prediction(device.name, precision, vision_keep, schedule.spec(), ttft * 1e3, 1.0 / step,
                      "compute" if compute_s >= memory_s else "memory",
                      "compute" if dec_compute >= dec_memory else "memory")


def table(device_key: str, budgets: list[tuple[int | None, str]], precisions=("fp16", "int8"),
          dims: ModelDims = LLAVA_15_7B, **kw) -> dict:
    device = DEVICES[device_key]
    rows = [dataclasses.asdict(predict(device, dims, p, Schedule.parse(s), vision_keep=k, **kw))
            for p in precisions for k, s in budgets]
    return {"kind": "roofline MODEL (predicted from peak rates; not a measurement)",
            "device": dataclasses.asdict(device), "model": "llava-1.5-7b (LLAVA_15_7B dims)",
            "assumptions": kw or {"compute_eff": 1.0, "memory_eff": 1.0}, "rows": rows}


DEFAULT_BUDGETS = [(None, "none"), (192, "none"), (64, "none"), (18, "none"), (None, "fastv:2:64")]
