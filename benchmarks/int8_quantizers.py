"""INT8 Q/DQ for TensorRT: onnxruntime's ``quantize_static`` (what ``--precision int8`` uses) against
NVIDIA Model Optimizer's ONNX quantizer (``modelopt.onnx.quantization.quantize``).

Both quantize the same fp32 bundle's weight MatMuls, calibrated (max, symmetric) on the same
recorded inputs of the exporter's calibration split. Measured per quantizer:

- accuracy on ShapesVQA test questions with 95 % intervals, paired to fp32 and to each other;
- Q/DQ placement: Q/DQ pairs, how many DequantizeLinear feed weight MatMuls (fusable into int8
  GEMMs) and how many activation-by-activation MatMuls (attention) were quantized, and whether
  every stage builds with TensorRT-RTX (a CPU-side proxy for TensorRT's fusions);
- peak RSS and wall time of quantizing the ``llm_prefill`` graph, each in its own process, on
  every ``--memory-model`` given (e.g. a 7B-geometry stand-in with few layers).

modelopt 0.47's ``[onnx]`` extra pins onnxruntime-gpu 1.24, onnx 1.21 and cupy-cuda12x, which
clash with this toolkit's onnxruntime 1.31 (CPU); install it aside with ``--no-deps`` (plus
nvidia-ml-py, omegaconf, antlr4-python3-runtime, pulp, onnxslim, lief, cppimport) and pass
``--modelopt-path``:

    pip install --no-deps --target /work/mo_env nvidia-modelopt==0.47.0 nvidia-ml-py omegaconf \\
        antlr4-python3-runtime pulp onnxslim lief cppimport
    python benchmarks/int8_quantizers.py --modelopt-path /work/mo_env --n 1000 --seed 211 \\
        --memory-model work/standin2 --json benchmarks/results/int8_quantizers.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUANTIZE = """
import sys, time, json
sys.path.append(sys.argv[4])
from pathlib import Path
from accm.precision.data import builtin_samples
from accm.precision.record import record_feeds
sys.path.insert(0, "benchmarks")
from int8_quantizers import quantize_stage
bundle, which, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
feeds = record_feeds(bundle, builtin_samples(8), progress=False)["llm_prefill"]
before = int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])
t = time.time()
quantize_stage(which, bundle / "llm_prefill.onnx", out / "llm_prefill.onnx", feeds)
hwm = int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])
print(json.dumps({"seconds": round(time.time() - t, 1), "peak_rss_gb": round(hwm / 2**20, 2),
                  "rss_before_gb": round(before / 2**20, 2)}))
"""


class _Calibration:
    """Recorded feeds in the reader protocols of both quantizers (modelopt also peeks the first)."""

    def __init__(self, feeds):
        self.feeds, self.i = list(feeds), 0

    def get_first(self):
        return self.feeds[0]

    def get_next(self):
        self.i += 1
        return self.feeds[self.i - 1] if self.i <= len(self.feeds) else None

    def rewind(self):
        self.i = 0


def quantize_stage(which: str, src: Path, dst: Path, feeds) -> None:
    import onnx

    from accm.precision import convert

    if which == "onnxruntime":
        convert.to_int8_qdq(src, dst, feeds)
        return
    from modelopt.onnx.quantization import quantize

    scratch = dst.parent / ".noinfo"
    scratch.mkdir(exist_ok=True)
    plain = convert._without_value_info(src, scratch)
    nodes = convert.weight_matmuls(onnx.load(str(plain), load_external_data=False))
    quantize(str(plain), quantize_mode="int8", calibration_data_reader=_Calibration(feeds), calibration_method="max",
             calibration_eps=["cpu"], nodes_to_quantize=nodes, output_path=str(dst), use_external_data_format=True,
             high_precision_dtype="fp32", dq_only=True, log_level="ERROR")
    model = onnx.load(str(dst))  # one data file named after the graph, as bundles have
    for f in dst.parent.glob(dst.name + "*data*"):
        f.unlink()
    convert._save(model, dst)
    shutil.rmtree(scratch)


def modelopt_bundle(fp32: Path, out: Path, feeds: dict) -> Path:
    import onnx

    from accm.bundle import names
    from accm.bundle.manifest import load_manifest, write_manifest
    from accm.export.compat import requirements
    from accm.export.onnx_io import shared_weight_table
    from accm.precision import convert

    manifest = load_manifest(fp32)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for stage, info in manifest["stages"].items():
        src = fp32 / info["file"]
        if convert.weight_matmuls(onnx.load(str(src), load_external_data=False)) and feeds.get(stage):
            quantize_stage("modelopt", src, out / info["file"], feeds[stage])
        else:
            convert._save(onnx.load(str(src)), out / info["file"])
    shutil.copy(fp32 / manifest["tokenizer"], out / manifest["tokenizer"])
    info = {k: v for k, v in manifest.items() if k not in ("files", "bundle_digest", "manifest_digest")}
    info["precision"] = "int8"
    info["precision_detail"] = {"method": "modelopt.onnx.quantization.quantize (int8, max calibration, dq_only)"}
    info["shared_weights"] = shared_weight_table(out, list(names.SHARED_WEIGHT_STAGES))
    info["runtime_requirements"] = requirements(out, [s["file"] for s in manifest["stages"].values()])
    write_manifest(out, info)
    return out


def placement(bundle: Path) -> dict:
    """Q/DQ counts and where the DequantizeLinear outputs go, over every stage of a bundle."""
    import onnx

    from accm.bundle.manifest import load_manifest

    counts: Counter = Counter()
    for info in load_manifest(bundle)["stages"].values():
        graph = onnx.load(str(bundle / info["file"]), load_external_data=False).graph
        inits = {i.name for i in graph.initializer}
        producer = {o: n for n in graph.node for o in n.output}
        consumers: dict[str, list] = {}
        for n in graph.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)

        def from_weight(dq, producer=producer, inits=inits) -> bool:  # int8 weight, or Q(fp32 weight) unfolded
            q = producer.get(dq.input[0])
            return dq.input[0] in inits or (q is not None and q.op_type == "QuantizeLinear" and q.input[0] in inits)

        for n in graph.node:
            if n.op_type == "QuantizeLinear":
                counts["quantize_linear"] += 1
                counts["weights_quantized_at_run_time"] += n.input[0] in inits
            if n.op_type != "DequantizeLinear":
                continue
            counts["dequantize_linear"] += 1
            weight = from_weight(n)
            uses = {c.op_type for c in consumers.get(n.output[0], [])}
            counts["dq_weight" if weight else "dq_activation"] += 1
            if uses <= {"MatMul", "Gemm"}:
                counts["dq_into_matmul"] += 1
        for n in graph.node:
            if n.op_type == "MatMul":
                sources = [producer.get(i) for i in n.input]
                if all(s is not None and s.op_type == "DequantizeLinear" and not from_weight(s) for s in sources):
                    counts["activation_matmuls_quantized"] += 1
    return dict(counts)


def main() -> None:
    from accm.bundle.manifest import load_manifest
    from accm.engines import trt_rtx_check
    from accm.export.default import default_options, ensure_bundle
    from accm.measure.accuracy import BundleAnswerer, evaluate, paired_difference
    from accm.measure.latency import machine
    from accm.precision.data import builtin_samples
    from accm.precision.record import record_feeds

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="accm-tiny")
    ap.add_argument("--modelopt-path", required=True, help="where nvidia-modelopt was installed (--no-deps)")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=211)
    ap.add_argument("--memory-model", nargs="*", default=[], help="also measure quantizing these models' prefill")
    ap.add_argument("--work", default="work/int8_quantizers")
    ap.add_argument("--json", default="benchmarks/results/int8_quantizers.json")
    args = ap.parse_args()
    sys.path.append(args.modelopt_path)
    import modelopt
    import onnxruntime

    work = Path(args.work)
    fp32 = ensure_bundle(args.model, default_options("fp32"))
    bundles = {"fp32": fp32, "onnxruntime": ensure_bundle(args.model, default_options("int8"))}
    feeds = record_feeds(fp32, builtin_samples(32), progress=False)  # the exporter's calibration
    t0 = time.time()
    bundles["modelopt"] = modelopt_bundle(fp32, work / "modelopt", feeds)
    modelopt_seconds = time.time() - t0
    rows, hits = {}, {}
    for name, bundle in bundles.items():
        acc = evaluate(BundleAnswerer(bundle), n=args.n, seed=args.seed, progress=False, keep_hits=True)
        hits[name] = acc.pop("hits")
        row = {"accuracy": acc["accuracy"], "ci95": acc["ci95"], "per_family": acc["per_family"],
               "bundle_mb": round(sum(f["size"] for f in load_manifest(bundle)["files"].values()) / 2**20, 1)}
        if name != "fp32":
            row["vs_fp32"] = paired_difference(hits[name], hits["fp32"])
            row["placement"] = placement(bundle)
            if trt_rtx_check.available():
                row["tensorrt_rtx"] = {c.stage: ("built" if c.built else "failed: " + c.error[:160])
                                       for c in trt_rtx_check.check_bundle(bundle, load_manifest(bundle))}
        rows[name] = row
        print(name, json.dumps({k: v for k, v in row.items() if k != "per_family"}), flush=True)
    rows["modelopt"]["vs_onnxruntime"] = paired_difference(hits["modelopt"], hits["onnxruntime"])
    rows["modelopt"]["quantize_all_stages_seconds"] = round(modelopt_seconds, 1)
    memory = []
    for model in args.memory_model:
        source = ensure_bundle(model, default_options("fp32"))
        graph_gb = sum(p.stat().st_size for p in source.glob("llm_prefill.onnx*")) / 1e9
        for which in ("onnxruntime", "modelopt"):
            out = work / f"mem_{which}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            proc = subprocess.run([sys.executable, "-c", QUANTIZE, str(source), which, str(out), args.modelopt_path],
                                  capture_output=True, text=True)
            result = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {
                "failed": proc.stderr[-600:]}
            memory.append({"model": model, "quantizer": which, "llm_prefill_fp32_gb": round(graph_gb, 2), **result})
            print(json.dumps(memory[-1]), flush=True)
            shutil.rmtree(out, ignore_errors=True)
    report = {"benchmark": "int8 Q/DQ: onnxruntime quantize_static vs modelopt ONNX quantize", "model": args.model,
              "n": args.n, "seed": args.seed, "machine": machine(),
              "versions": {"onnxruntime": onnxruntime.__version__, "modelopt": modelopt.__version__},
              "rows": rows, "quantize_memory": memory}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
