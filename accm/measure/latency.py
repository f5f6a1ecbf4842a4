"""``accm-bench latency``: per-stage latency of bundles and of the peers, side by side.

Every measured configuration runs in its own subprocess (``measure_bundle`` / ``measure_peer``),
so peak RSS belongs to that configuration alone and no run warms another's caches. Reported per
configuration: median and p90 of each stage, TTFT, decode ms/token and tokens/s, peak RSS, the
analytic prefill FLOPs ratio against full tokens and the measured prefill speedup. Peers on the
same weights and inputs: Hugging Face ``generate`` in PyTorch (eager and SDPA attention) and the
PyTorch reference pipeline with FastV.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

STAGES = ("preprocess", "vision", "caption", "selection", "prefill", "ttft", "total")


def _percentiles(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(arr)), "p90": float(np.percentile(arr, 90)), "n": len(arr)}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ``ru_maxrss``: on Linux that carries the
    parent's high-water mark across fork+exec, which would charge the sweep's own memory here."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def gpu_memory_mb() -> float | None:
    """Used GPU memory (dGPU via NVML through nvidia-smi); on Jetson the GPU shares system RAM,
    so peak RSS already covers it. None where there is no GPU."""
    from ..engines.gpu import cuda_device_count

    if cuda_device_count() == 0:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def machine() -> dict:
    import importlib.metadata as md

    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for pkg in ("accm", "onnxruntime", "numpy", "torch", "transformers", "tensorrt"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    mem = 0.0
    try:
        line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
        mem = int(line.split()[1]) / 2**20
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem, 1), "os": platform.platform(),
            "python": platform.python_version(), "versions": versions}


def _bench_input(image_path: str | None, prompt: str | None):
    from ..data import shapes
    from ..inputs import load_image

    if image_path:
        return load_image(image_path), prompt or "what is in the image ?"
    sample = shapes.benchmark("test", 1, seed=7)[0]
    return shapes.render_scene(sample.split, sample.scene_index).pil(), prompt or sample.question


def measure_bundle(bundle: str, provider: str, warmup: int, repeat: int, new_tokens: int, image: str | None,
                   prompt: str | None, share_weights: bool = False) -> dict:
    """Latency of one bundle through the runtime (in this process)."""
    from ..runtime.pipeline import Pipeline

    img, text = _bench_input(image, prompt)
    t0 = time.perf_counter()
    pipe = Pipeline(bundle, provider=provider, share_weights=share_weights)
    load_s = time.perf_counter() - t0
    runs = []
    for i in range(warmup + repeat):
        ans = pipe.generate([img], [text], new_tokens, ignore_eos=True)[0]
        if i >= warmup:
            runs.append(ans.timings_ms)
    m = pipe.manifest
    out = {"kind": "bundle", "bundle": str(bundle), "provider": provider, "precision": m["precision"],
           "vision_keep": m["pruning"]["vision_keep"], "schedule": m["pruning"]["schedule"],
           "accm": "accm" in m, "shared_weights": pipe.shared_weights, "prompt_tokens": ans.counts["prompt_tokens"],
           "load_s": round(load_s, 3)}
    out.update(_summarise(runs, new_tokens))
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    out["gpu_memory_mb"] = gpu_memory_mb()
    return out


def _summarise(runs: list[dict], new_tokens: int) -> dict:
    stages = {s: _percentiles([r[s] for r in runs]) for s in STAGES if s in runs[0]}
    steps = [t for r in runs for t in r["decode_steps"]]
    decode = _percentiles(steps) if steps else None
    return {"stages_ms": stages, "decode_ms_per_token": decode,
            "decode_tokens_per_s": 1000.0 / decode["median"] if decode else None, "new_tokens": new_tokens}


def measure_peer(kind: str, model: str | None, schedule: str, warmup: int, repeat: int, new_tokens: int,
                 image: str | None, prompt: str | None) -> dict:
    """``hf-eager``/``hf-sdpa``: transformers ``generate``; ``reference``: our PyTorch pipeline."""
    import torch

    from ..models.loading import load_llava
    from ..pruning.llm import generate
    from ..pruning.reference import ReferencePipeline

    torch.set_num_threads(os.cpu_count() or 1)
    attn = "eager" if kind == "hf-eager" else "sdpa"
    lm = load_llava(model, attn_implementation=attn)
    img, text = _bench_input(image, prompt)
    ref = ReferencePipeline(lm.model, lm.processor, schedule=schedule if kind == "reference" else "none",
                            template=lm.template)
    runs = []
    with torch.no_grad():
        for i in range(warmup + repeat):
            t0 = time.perf_counter()
            pixels = ref.pixel_values([img])
            t1 = time.perf_counter()
            if kind == "reference":
                vis = ref.vision(pixels)
                t2 = time.perf_counter()
                prep = ref.prepare([img], [text], vision=vis)
                steps: list = []
                t3 = time.perf_counter()
                generate(lm.model, prep.inputs_embeds, prep.attention_mask, prep.image_mask, ref.schedule,
                         max_new_tokens=1, position_ids=prep.position_ids)
                t4 = time.perf_counter()
                generate(lm.model, prep.inputs_embeds, prep.attention_mask, prep.image_mask, ref.schedule,
                         max_new_tokens=new_tokens, position_ids=prep.position_ids, step_logits=steps)
                t5 = time.perf_counter()
                vision_ms, prefill_ms = (t2 - t1) * 1e3, (t4 - t3) * 1e3
            else:
                enc = lm.processor(images=[img], text=[ref.template.replace("{prompt}", text)], return_tensors="pt")
                t2 = t3 = time.perf_counter()
                lm.model.generate(**enc, max_new_tokens=1, min_new_tokens=1, do_sample=False)
                t4 = time.perf_counter()
                lm.model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
                t5 = time.perf_counter()
                vision_ms, prefill_ms = None, (t4 - t3) * 1e3  # vision + prefill + first token
            per_token = ((t5 - t4) - (t4 - t3)) / max(new_tokens - 1, 1) * 1e3
            if i >= warmup:
                runs.append({"preprocess": (t1 - t0) * 1e3, "vision": vision_ms, "prefill": prefill_ms,
                             "ttft": (t1 - t0 + t4 - t3 + (t2 - t1 if kind == "reference" else 0)) * 1e3,
                             "decode_steps": [per_token] * (new_tokens - 1)})
    out = {"kind": kind, "model": lm.source.name, "schedule": schedule if kind == "reference" else "none",
           "vision_keep": None, "precision": "fp32", "provider": "torch-cpu"}
    runs = [{k: v for k, v in r.items() if v is not None} for r in runs]
    out.update(_summarise(runs, new_tokens))
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def run_isolated(kind: str, args: dict, timeout: float = 3600) -> dict:
    """Run one measurement in a fresh interpreter; returns its JSON."""
    cmd = [sys.executable, "-m", "accm.measure.latency", kind, json.dumps(args)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        raise RuntimeError(f"{kind} measurement failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:  # the subprocess entry point
    kind, args = sys.argv[1], json.loads(sys.argv[2])
    result = measure_bundle(**args) if kind == "bundle" else measure_peer(kind, **args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
