"""Precision table: fp16, int8 (Q/DQ), int8-cpu and int4-cpu bundles against fp32.

Per bundle: per-stage output SNR and top-1 agreement against the fp32 stage on recorded real
inputs (the calibration recorder on ShapesVQA *test* samples, never the calibration split),
ShapesVQA accuracy through the runtime with 95 % intervals and the paired difference to fp32 on
the same questions (full tokens, and 18 + ACCM where the model has it), the LLM weights' size,
bundle size, TTFT and decode ms/token on ONNX Runtime CPU (isolated process), and whether every
graph builds with TensorRT-RTX (a CPU-side proxy for TensorRT).

    python benchmarks/precision.py --model accm-tiny --json benchmarks/results/precision_tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

def snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    ref, test = ref.astype(np.float64), test.astype(np.float64)
    noise = ((ref - test) ** 2).sum()
    return float("inf") if noise == 0 else float(10 * np.log10((ref ** 2).sum() / noise))


def stage_agreement(fp32: Path, other: Path, samples) -> dict:
    """Run both bundles' stages on the same recorded inputs (fp32's), compare the first output."""
    from accm.bundle.manifest import load_manifest
    from accm.engines.ort import open_bundle_stages
    from accm.precision.record import record_feeds

    feeds = record_feeds(fp32, samples, max_per_stage=8, progress=False)
    a = open_bundle_stages(fp32, load_manifest(fp32))
    b = open_bundle_stages(other, load_manifest(other))
    out = {}
    for stage, inputs in feeds.items():
        snrs, top1 = [], []
        for f in inputs:
            ra, rb = a[stage].run(f), b[stage].run(f)
            name = a[stage].output_names[0]
            x, y = ra[name], rb[name]
            if np.issubdtype(x.dtype, np.floating):
                snrs.append(snr_db(x, y))
                if stage in ("llm_prefill", "llm_decode", "caption_decode"):
                    top1.append(float((x.argmax(-1) == y.argmax(-1)).mean()))
            else:
                top1.append(float((x == y).mean()))
        out[stage] = {"snr_db": float(np.median(snrs)) if snrs else None,
                      "top1_agreement": float(np.mean(top1)) if top1 else None}
    return out


def main() -> None:
    from accm.bundle.manifest import load_manifest
    from accm.bundle.schema import PRECISIONS
    from accm.data import shapes
    from accm.engines import trt_rtx_check
    from accm.export.default import default_options, ensure_bundle
    from accm.measure.accuracy import BundleAnswerer, evaluate, paired_difference
    from accm.measure.latency import machine, run_isolated
    from accm.models.registry import checkpoint_digest, resolve

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=500, help="accuracy questions (0: skip, e.g. random-weight stand-ins)")
    ap.add_argument("--accm-keep", type=int, default=18, help="also measure this keep + ACCM (if the model has it)")
    ap.add_argument("--no-accm", action="store_true")
    ap.add_argument("--seed", type=int, default=0, help="which test questions")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", required=True)
    ap.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                    help="measure these (and fp32, the baseline)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of the other precisions already in --json (measured in their own run)")
    ap.add_argument("--accm-only", action="store_true",
                    help="re-measure only the keep + ACCM accuracy of every row already in --json (after the "
                         "ACCM modules were retrained); the other columns stay as measured")
    args = ap.parse_args()

    def options(prec, keep=None, accm=False):
        return default_options(prec, keep, accm=accm)

    def accm_accuracy(prec: str, row: dict, hits: dict) -> None:
        bundle = ensure_bundle(args.model, options(prec, args.accm_keep, True))
        acc = evaluate(BundleAnswerer(bundle), n=args.n, seed=args.seed, progress=False, keep_hits=True)
        hits[prec] = acc.pop("hits")
        row[f"accuracy_{args.accm_keep}_accm"] = acc["accuracy"]
        row[f"accuracy_{args.accm_keep}_accm_ci95"] = acc["ci95"]
        row["accm_vs_fp32"] = paired_difference(hits[prec], hits["fp32"])
        row["accm_modules_digest"] = checkpoint_digest(Path(resolve(args.model).path) / "accm", recursive=True)

    if args.accm_only:
        report = json.loads(Path(args.json).read_text())
        if (report["n"], report["seed"]) != (args.n, args.seed):
            ap.error(f"--json was measured with n={report['n']} seed={report['seed']}: pass the same")
        accm_hits: dict = {}
        for row in sorted(report["rows"], key=lambda r: r["precision"] != "fp32"):  # fp32 first: the baseline
            accm_accuracy(row["precision"], row, accm_hits)
            print(json.dumps({k: row[k] for k in ("precision", f"accuracy_{args.accm_keep}_accm", "accm_vs_fp32")}),
                  flush=True)
        report["accm_machine"] = machine()
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        return

    samples = [(shapes.render_scene(s.split, s.scene_index).pil(), s.question) for s in shapes.benchmark("test", 8, 9)]
    rows, hits, accm_hits = [], {}, {}
    fp32 = ensure_bundle(args.model, options("fp32"))
    fp32_accm = None if args.no_accm else ensure_bundle(args.model, options("fp32", args.accm_keep, True))
    measured = [p for p in PRECISIONS if p in {"fp32", *args.precisions}]
    for prec in measured:
        bundle = ensure_bundle(args.model, options(prec))
        manifest = load_manifest(bundle)
        row = {"precision": prec, "bundle_mb": sum(f["size"] for f in manifest["files"].values()) / 2**20,
               "llm_weights_mb": sum(f["size"] for name, f in manifest["files"].items()
                                     if name.startswith(("llm_prefill.onnx.", "llm_decode.onnx."))) / 2**20}
        row["stages_vs_fp32"] = stage_agreement(fp32, bundle, samples) if prec != "fp32" else None
        if args.n:
            acc = evaluate(BundleAnswerer(bundle), n=args.n, seed=args.seed, progress=False, keep_hits=True)
            hits["full", prec] = acc.pop("hits")
            row.update(accuracy_full=acc["accuracy"], accuracy_full_ci95=acc["ci95"],
                       per_family_full=acc["per_family"],
                       full_vs_fp32=paired_difference(hits["full", prec], hits["full", "fp32"]))
        if fp32_accm is not None and args.n:
            accm_accuracy(prec, row, accm_hits)
        lat = run_isolated("bundle", {"bundle": str(bundle), "provider": "cpu", "warmup": 2, "repeat": args.repeat,
                                      "new_tokens": 16, "image": None, "prompt": None})
        row["ttft_ms"] = lat["stages_ms"]["ttft"]["median"]
        row["prefill_ms"] = lat["stages_ms"]["prefill"]["median"]
        row["decode_ms_per_token"] = lat["decode_ms_per_token"]["median"]
        if trt_rtx_check.available():
            checks = trt_rtx_check.check_bundle(bundle, manifest)
            row["tensorrt_rtx"] = {c.stage: ("built" if c.built else ("parsed" if c.parsed else "parse failed: "
                                                                       + c.error[:120])) for c in checks}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "stages_vs_fp32"}), flush=True)
    kept = json.loads(Path(args.json).read_text())["rows"] if args.merge and Path(args.json).exists() else []
    kept = {r["precision"]: r for r in kept}
    mine = {r["precision"]: r for r in rows}
    base = mine["fp32"]
    fp16 = mine.get("fp16") or kept["fp16"]  # the weight-size baseline (sizes are deterministic)
    for r in rows:
        r["size_vs_fp32"] = r["bundle_mb"] / base["bundle_mb"]
        r["llm_weights_vs_fp16"] = r["llm_weights_mb"] / fp16["llm_weights_mb"]
        r["decode_speedup_vs_fp32"] = base["decode_ms_per_token"] / r["decode_ms_per_token"]
        if args.n:
            r["accuracy_delta_points"] = 100 * (r["accuracy_full"] - base["accuracy_full"])
    rows = [mine.get(p) or {**kept[p], "measured_in_an_earlier_run": True} for p in PRECISIONS
            if p in mine or p in kept]
    report = {"benchmark": "precision vs fp32 (ONNX Runtime CPU)", "model": args.model or "accm-tiny",
              "machine": machine(), "n": args.n, "seed": args.seed, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
