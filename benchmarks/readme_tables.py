"""Markdown tables for the README and the accm-tiny model card, from the JSON in benchmarks/results.

    python benchmarks/readme_tables.py [--results benchmarks/results] > tables.md

Only formats what the other benchmark scripts measured; a missing JSON is reported as missing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _num(x, fmt: str = ".1f") -> str:
    return "–" if x is None else format(x, fmt)


def _ci(res: dict | None, key: str = "accuracy") -> str:
    """``92.3 (90.5–93.8)``: an accuracy with its 95 % interval."""
    if not res or res.get(key) is None:
        return "–"
    ci = res.get("ci95")
    return f"{100 * res[key]:.1f}" + (f" ({100 * ci[0]:.1f}–{100 * ci[1]:.1f})" if ci else "")


def _diff(d: dict | None) -> str:
    """``+12.3 (+9.8 to +14.9)`` points, from a paired difference."""
    if not d:
        return "–"
    lo, hi = d["ci95"]
    return f"{100 * d['difference']:+.1f} ({100 * lo:+.1f} to {100 * hi:+.1f})"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _machine(m: dict) -> str:
    versions = m.get("versions", {})
    parts = [m.get("cpu", "unknown CPU"), f"{m.get('cores')} cores"]
    parts += [f"{k} {versions[k]}" for k in ("onnxruntime", "torch", "transformers") if versions.get(k)]
    return ", ".join(parts)


def accuracy_sweep(rep: dict) -> str:
    by = {(r["method"], r["budget"]): r for r in rep["runs"]}
    full = next(r for r in rep["runs"] if r["method"] == "full")
    budgets = sorted({r["budget"] for r in rep["runs"] if r["method"] == "vision"}, reverse=True)
    rows = [["576 (full)", _ci(full), _ci(full), _ci(full), _pct(full["kept_on_object"]), "–", "1.000"]]
    for k in budgets:
        v, f, r = by.get(("vision", k)), by.get(("fastv", k)), by.get(("random", k))
        rows.append([str(k), _ci(v), _ci(f), _ci(r), _pct(v and v["kept_on_object"]), _pct(r and r["kept_on_object"]),
                     _num(v and v["flops_ratio"], ".3f")])
    head = ["kept tokens", "vision top-k % (95% CI)", "FastV K=2 %", "random keep %", "vision kept on objects %",
            "random kept on objects %", "prefill FLOPs (vision top-k)"]
    return (f"{rep['model']}, ShapesVQA v2 test, n = {rep['n']} (seed {rep['seed']}); {_machine(rep['machine'])}\n\n"
            + _table(head, rows))


def per_family(rep: dict) -> str:
    """Full tokens, vision top-18 and random 18 per family, beside the train-frequency blind baselines."""
    runs = {r["method"]: r for r in rep["runs"] if r["method"] == "full"}
    runs.update({f"{r['method']} {r['budget']}": r for r in rep["runs"] if r.get("budget") == 18
                 and r["method"] in ("vision", "random")})
    full = runs["full"]
    families = sorted(full["per_family"])
    rows = []
    for name, label in (("full", "576 tokens"), ("vision 18", "vision top-18"), ("random 18", "random 18")):
        r = runs.get(name)
        if r:
            rows.append([label, _ci(r)] + [_ci({"accuracy": r["per_family"][f], "ci95": r["per_family_ci95"][f]})
                                           for f in families])
    for name, b in full["blind_baselines"].items():
        rows.append([f"blind: {name.replace('_', ' ')}", _ci(b)] + [_pct(b["per_family"][f]) for f in families])
    head = ["", "all %"] + [f"{f} %" for f in families]
    return (f"{rep['model']}, ShapesVQA v2 test, n = {rep['n']} (seed {rep['seed']}), 95 % Wilson intervals; blind "
            f"baselines fitted on train-split frequencies\n\n" + _table(head, rows))


def bounds(rep: dict) -> str:
    fams = sorted(rep["rows"][0]["per_family"])
    rows = [[r["view"], _ci(r)] + [_pct(r["per_family"][f]) for f in fams] + [_pct(r.get("object_coverage"))]
            for r in rep["rows"]]
    return (f"rule solver, ShapesVQA v2 test, n = {rep['n']} (seed {rep['seed']}), keep {rep['keep']}"
            f"{', CLS scores of ' + rep['model'] if rep.get('model') else ''}\n\n"
            + _table(["what the solver sees", "accuracy % (95% CI)"] + [f"{f} %" for f in fams] + ["objects seen %"],
                     rows))


def accm(rep: dict) -> str:
    rows = []
    for r in rep["rows"]:
        fl = r["flops"]
        rows.append([str(r["keep"]), _ci(r["full"]), _ci(r["vision_only"]), _ci(r["fastv_k2"]), _ci(r["accm_random"]),
                     _ci(r["accm_top"]) if "accm_top" in r else "–", _ci(r["accm_selected"]), _ci(r["accm_oracle"]),
                     _diff(r["gain_over_pruned"]), _share(r["recovered"]),
                     _num(fl["prefill_plus_compensation_ratio"], ".3f"),
                     _pct(fl["compensation_share_of_pruned_pipeline"]), _pct(r["compensation_share_of_ttft"])])
    head = ["kept", "full %", "pruned (vision top-k) %", "FastV %", "ACCM random candidate %",
            "ACCM best beam (no selector) %", "ACCM selected %",
            "ACCM oracle best-of-M %", "selected − pruned (pts)", "pruning loss recovered %",
            "prefill+ACCM FLOPs vs full", "ACCM share of pruned FLOPs %", "ACCM share of TTFT (ORT CPU) %"]
    a = rep.get("accm", {})
    return (f"{rep['model']}, ShapesVQA v2 test, n = {rep['n']} (seed {rep['seed']}), 95 % intervals (Wilson; "
            f"paired for differences; bootstrap for the recovered share); mapper input: "
            f"{a.get('mapper_input_tokens') or 'all'} discarded tokens; {a.get('beams', '?')} beams; "
            f"selector texts: {a.get('selector_text_format', 'paper')}, "
            f"{'beam rank known' if a.get('selector_rank_slots') else 'order-blind'}; "
            f"{_machine(rep['machine'])}\n\n"
            + _table(head, rows))


def _share(rec: dict | None) -> str:
    """``43 (37–48)``: a recovered share of the pruning loss with its bootstrap interval, in %."""
    if not rec or rec.get("share") is None:
        return "–"
    return f"{100 * rec['share']:.0f} ({100 * rec['ci95'][0]:.0f}–{100 * rec['ci95'][1]:.0f})"


def accm_families(table: dict, ceiling: dict) -> str:
    """Per family: pruned, ACCM's captions and the stage 1 target caption (the bound), same questions."""
    if (table["n"], table["seed"]) != (ceiling["n"], ceiling["seed"]):
        return "(not comparable: accm_table.json and accm_ceiling.json were measured on different questions)"
    bound = {r["keep"]: r for r in ceiling["rows"]}
    full = table["rows"][0]["full"]
    families = sorted(full["per_family"])
    rows = []
    for r in table["rows"]:
        c = bound.get(r["keep"], {})
        runs = [("pruned", r["vision_only"], None), ("ACCM best beam", r.get("accm_top"), None),
                ("ACCM selected", r["accm_selected"], r["recovered"]),
                ("ACCM oracle best-of-M", r["accm_oracle"], r.get("recovered_oracle")),
                ("stage 1 target caption (bound)", c.get("target_caption"), c.get("recovered"))]
        rows += [[str(r["keep"]), label, _ci(res)] + [_pct(res["per_family"][f]) for f in families] + [_share(rec)]
                 for label, res, rec in runs if res]
    rows.append(["576", "full", _ci(full)] + [_pct(full["per_family"][f]) for f in families] + ["–"])
    return (f"{table['model']}, ShapesVQA v2 test, n = {table['n']} (seed {table['seed']}), 95 % intervals (Wilson; "
            f"bootstrap for the recovered share); the bound splices the caption stage 1 is trained to write "
            f"(rule-made from the scene: the discarded objects the question needs among the "
            f"{ceiling.get('mapper_input_tokens') or 'all'} the mapper reads)\n\n"
            + _table(["kept", "caption", "all % (95% CI)"] + [f"{f} %" for f in families]
                     + ["pruning loss recovered %"], rows))


def latency(rep: dict) -> str:
    rows = []
    for r in rep["results"]:
        med = {stage: v["median"] for stage, v in r["stages_ms"].items()}
        dec = r.get("decode_ms_per_token") or {}
        rows.append([r["name"], _num(med.get("vision")), _num(med.get("prefill")), _num(med.get("ttft")),
                     _num(dec.get("median")), _num(r.get("peak_rss_mb"), ".0f"),
                     _num(r.get("prefill_flops_ratio"), ".3f"), _num(r.get("prefill_speedup"), ".2f"),
                     _num(r.get("speedup_vs_flops"), ".2f")])
    head = ["configuration", "vision ms", "prefill ms", "TTFT ms", "decode ms/token", "peak RSS MB",
            "prefill FLOPs ratio", "prefill speedup", "speedup / FLOPs speedup"]
    cfg = rep["config"]
    text = (f"{rep['model']}; median of {cfg['repeat']} runs after {cfg['warmup']} warm-up, {cfg['new_tokens']} "
            f"new tokens, provider {cfg['provider']}; {_machine(rep['machine'])}\n\n" + _table(head, rows))
    if rep.get("ratios"):
        prow = [[name, _num(v["ttft_ratio_peer_over_ours"], ".2f"), _num(v["decode_ratio_peer_over_ours"], ".2f")]
                for name, v in rep["ratios"].items()]
        text += "\n\nPeers against our fp32 full-token bundle (> 1: the peer is slower):\n\n"
        text += _table(["peer", "TTFT peer / ours", "decode per token peer / ours"], prow)
    return text


def _trt_summary(stages: dict) -> str:
    failed = {k: v for k, v in stages.items() if v != "built"}
    if not failed:
        return "all built"
    if all("MatMulInteger" in v or "DynamicQuantizeLinear" in v for v in failed.values()):
        return f"not for TensorRT: {', '.join(failed)} use ONNX Runtime's integer ops"
    nbits = [k for k, v in failed.items() if "MatMulNBits" in v]
    if nbits and all("MatMulNBits" in v or "MatMulInteger" in v or "DynamicQuantizeLinear" in v
                     for v in failed.values()):
        return (f"not for TensorRT: {', '.join(k for k in failed if k not in nbits)} use ONNX Runtime's integer "
                f"ops; {', '.join(nbits)}: TensorRT's MatMulNBits importer wants fp16 activations, these are fp32")
    return "; ".join(f"{k}: {v}" for k, v in failed.items())


def precision(rep: dict) -> str:
    rows = []
    accm_key = next((k for r in rep["rows"] for k in r if k.startswith("accuracy_") and k.endswith("_accm")), None)
    for r in rep["rows"]:
        st = r.get("stages_vs_fp32") or {}
        snr = ", ".join(f"{s} {v['snr_db']:.0f}" for s, v in st.items() if v.get("snr_db") is not None) or "–"
        top1 = ", ".join(f"{s} {100 * v['top1_agreement']:.0f}" for s, v in st.items()
                         if v.get("top1_agreement") is not None) or "–"
        trt = r.get("tensorrt_rtx")
        trt_s = "–" if trt is None else _trt_summary(trt)
        full = {"accuracy": r.get("accuracy_full"), "ci95": r.get("accuracy_full_ci95")}
        accm = {"accuracy": r.get(accm_key), "ci95": r.get(f"{accm_key}_ci95")} if accm_key else None
        vs = r.get("full_vs_fp32") if r["precision"] != "fp32" else None
        rows.append([r["precision"], _num(r["bundle_mb"]), _pct(r.get("size_vs_fp32")),
                     _pct(r.get("llm_weights_vs_fp16")), _ci(full), _diff(vs), _ci(accm), snr, top1,
                     _num(r["ttft_ms"]), _num(r["decode_ms_per_token"], ".2f"),
                     _num(r.get("decode_speedup_vs_fp32"), ".2f"), trt_s])
    head = ["precision", "bundle MB", "size vs fp32 %", "LLM weights vs fp16 %", "accuracy full % (95% CI)",
            "vs fp32 (pts, paired)",
            f"accuracy {accm_key.split('_')[1]}+ACCM %" if accm_key else "accuracy +ACCM %",
            "SNR vs fp32 dB (per stage)", "top-1 agreement % (per stage)", "TTFT ms", "decode ms/token",
            "decode speedup", "TensorRT-RTX build (proxy)"]
    seed = f", test seed {rep['seed']}" if rep.get("n") and "seed" in rep else ""
    digests = {r.get("accm_modules_digest") for r in rep["rows"]} - {None}
    later = (f"; the +ACCM column re-measured later with the ACCM modules of digest {digests.pop()[:12]} "
             "(`--accm-only`)" if rep.get("accm_machine") and len(digests) == 1 else "")
    return f"{rep['model']}, n = {rep['n']}{seed}; {_machine(rep['machine'])}{later}\n\n" + _table(head, rows)


def _versus_val(r: dict) -> str:
    """``+1.2 ± 0.8``: a searched schedule minus what it matched, on val, with the paired SE."""
    v = ((r.get("search") or {}).get("budget") or {}).get("versus")
    return "–" if not v else f"{100 * v['difference']:+.1f} ± {100 * v['difference_se']:.1f}"


def search(rep: dict) -> str:
    rows = [[r["name"], str(r.get("vision_keep") or "all"),
             r["schedule"] if len(r["schedule"]) < 60 else r["schedule"][:57] + "…",
             _ci({"accuracy": r["test_accuracy"], "ci95": r.get("test_ci95")}),
             _diff(r.get("vs_full")) if r.get("vs_full") else _num(r["delta_vs_full_points"], "+.1f"),
             _diff(r.get("vs_matched")), _versus_val(r),
             _num(r["mean_tokens"], ".0f"), _num(r["prefill_flops_ratio"], ".3f")] for r in rep["rows"]]
    head = ["schedule", "vision keep", "per-layer counts", "test accuracy % (95% CI)", "vs full (pts, paired 95% CI)",
            "vs FastV at equal FLOPs (test pts, paired 95% CI)", "same on val (pts ± SE)",
            "mean image tokens/layer", "prefill FLOPs ratio"]
    se = f", val score SE ≈ {100 * rep['val_se']:.1f} pts" if rep.get("val_se") else ""
    return (f"{rep['model']}, searched on val (n = {rep['val_n']}{se}), measured on test (n = {rep['test_n']}, "
            f"seed {rep.get('test_seed', 0)}); {rep['trials']} BO trials per P-Sigmoid; {_machine(rep['machine'])}"
            f"\n\n" + _table(head, rows))


def serve(rep: dict) -> str:
    rows = [[r["config"], str(r["concurrency"]), _num(r["rps"], ".1f"), _num(r["p50_ms"], ".0f"),
             _num(r["p95_ms"], ".0f"), f"{r['ok']}/{r['requests']}"] for r in rep["results"]]
    b = rep["batching_speedup_at_concurrency"]
    return (f"accm-serve, {rep['bundle'].split('/')[-1]} (accm-tiny, keep 64, fp32), max_tokens 8, loopback clients; "
            f"{_machine(rep['machine'])}; batching / no batching at concurrency {b['concurrency']}: "
            f"{b['rps_ratio']:.2f}× requests per second\n\n"
            + _table(["server", "concurrent clients", "requests/s", "p50 ms", "p95 ms", "answered"], rows)
            + (_batch_ceiling(rep["pipeline_batch_scaling"]) if "pipeline_batch_scaling" in rep else ""))


def _batch_ceiling(scaling: dict) -> str:
    """Per-request stage cost at batch 1 and at the largest batch: what batching can gain at most."""
    ms = scaling["ms_per_request"]
    a, b = sorted(ms, key=lambda k: int(k.split("_")[1]))
    stages = list(ms[a])
    rows = [[k.replace("_", " "), *(_num(ms[k][st], ".2f") for st in stages)] for k in (a, b)]
    return ("\n\nPer-request ms of each stage, no server, one thread (the ceiling on what batching can gain here: "
            f"{scaling['ceiling_rps_ratio']:.2f}×)\n\n" + _table(["batch", *stages], rows))


def soak(rep: dict) -> str:
    return (f"{rep['n']} answers in one process over {', '.join(rep['kinds'])} bundles ({rep['prompts']} prompts "
            f"each, cycled): RSS {rep['rss_after_first_pass_mb']:.0f} MB after the first pass, "
            f"{rep['rss_end_mb']:.0f} MB at the end ({rep['rss_growth_pct']:+.1f} %), "
            f"peak {rep['peak_rss_mb']:.0f} MB; "
            f"answers changed: {rep['answers_changed']}; {rep['wall_s']:.0f} s; {_machine(rep['machine'])}")


def shared_weights(plain: dict, shared: dict) -> str:
    rows = []
    for a, b in zip(plain["results"], shared["results"]):
        da, db = a["decode_ms_per_token"]["median"], b["decode_ms_per_token"]["median"]
        rows.append([str(a["vision_keep"] or "all"), "yes" if b["shared_weights"] else "NO (not applied)",
                     f"{a['peak_rss_mb']:.0f}", f"{b['peak_rss_mb']:.0f}", _pct(b["peak_rss_mb"] / a["peak_rss_mb"]),
                     _num(a["stages_ms"]["ttft"]["median"], ".0f"), _num(b["stages_ms"]["ttft"]["median"], ".0f"),
                     _num(da), _num(db)])
    head = ["kept", "shared", "peak RSS MB plain", "shared", "shared / plain %", "TTFT ms plain", "shared",
            "decode ms/tok plain", "shared"]
    c = plain["config"]
    return (f"{plain['model']}, fp32, ONNX Runtime CPU, median of {c['repeat']}; {_machine(plain['machine'])}\n\n"
            + _table(head, rows))


def plugin_kernel(rep: dict) -> str:
    rows = [[r["dtype"], str(r["batch"]), str(r["tokens"]), str(r["hidden"]), str(r["kept"]),
             _num(1000 * r["kernel_ms"]), _num(r.get("torch_ms") and 1000 * r["torch_ms"]),
             _num(r.get("torch_over_kernel"), ".2f"),
             "yes" if r["matches_select_tokens"] and r.get("matches_torch", True) else "NO"] for r in rep["rows"]]
    head = ["dtype", "batch", "tokens", "hidden", "kept", "kernels µs", "PyTorch µs", "PyTorch / kernels",
            "outputs identical"]
    return (f"{rep['gpu']}, {rep['nvcc']}, torch {rep['torch']}; {rep['what']}; mean of {rep['repeats']}\n\n"
            + _table(head, rows))


def _phase(line: str) -> str:
    """``export 3/4, llm_decode`` from a tqdm line; ``start``: before the first progress line."""
    import re

    m = re.match(r"([\w ]+):\s+\d+%.*?(\d+/\d+) \[.*?(?:, ([\w ]+))?\]", line)
    if m:
        return f"{m.group(1)} {m.group(2)}" + (f", {m.group(3)}" if m.group(3) else "")
    return "loading, before the first stage" if line == "start" else line[:70].replace("|", "/")


def _status(text: str) -> str:
    return "killed (SIGKILL: out of memory)" if text == "exit status -9" else text


def _trt_checks(checks: dict | None) -> str:
    """``vision, embed built; llm_prefill, llm_decode parsed`` from export_memory's per-stage checks."""
    if not checks:
        return "–"
    groups: dict[str, list[str]] = {}
    for stage, c in checks.items():
        state = ("built" if c.get("built") else "parsed" if c.get("parsed") and c["mode"] == "parse"
                 else _status(c.get("failed", "")) or "failed: " + c.get("error", "")[:80])
        groups.setdefault(state, []).append(stage)
    return "; ".join(f"{', '.join(stages)} {state}" for state, stages in groups.items())


def export_memory(rep: dict) -> str:
    fp16 = next((r for r in rep["rows"] if r["precision"] == "fp16"), None)
    def label(r):
        return r["precision"] + (f" (`{r['export_args']}`)" if r.get("export_args") else "")

    rows = [[label(r), _num(r["peak_rss_gb"], ".2f") + (f", {_status(r['failed'])}" if r.get("failed") else ""),
             _phase(r["peak_during"]), _num(r["seconds"], ".0f"), _num(r.get("bundle_gb"), ".2f"),
             _num(r.get("llm_weights_gb"), ".2f"),
             _pct(r["llm_weights_gb"] / fp16["llm_weights_gb"]) if fp16 and r.get("llm_weights_gb") else "–",
             _trt_checks(r.get("tensorrt_rtx"))]
            for r in rep["rows"]]
    head = ["precision", "peak RSS GB (process tree)", "peak during", "export s", "bundle GB", "LLM weights GB",
            "LLM weights vs fp16 %", "TensorRT-RTX (proxy)"]
    return (f"`accm-export --model {rep['model']}` (vision keep 64; extra arguments per row): "
            f"{rep['decoder_layers']} decoder + {rep['vision_layers']} CLIP layers, {rep['checkpoint_gb']} GB "
            f"{rep['checkpoint_dtype']} checkpoint; {_machine(rep['machine'])}, "
            f"{rep['machine'].get('memory_gb')} GiB RAM\n\n" + _table(head, rows))


def int8_quantizers(rep: dict) -> str:
    rows = []
    for name, r in rep["rows"].items():
        place = r.get("placement", {})
        rows.append([name, _ci(r), _diff(r.get("vs_fp32")), _diff(r.get("vs_onnxruntime")), _num(r["bundle_mb"]),
                     str(place.get("dq_weight", "–")), str(place.get("dq_activation", "–")),
                     f"{place['dq_into_matmul']}/{place['dequantize_linear']}" if place else "–",
                     str(place.get("activation_matmuls_quantized", 0)) if place else "–",
                     "–" if "tensorrt_rtx" not in r else _trt_summary(r["tensorrt_rtx"])])
    head = ["quantizer", "accuracy % (95% CI)", "vs fp32 (pts, paired)", "vs onnxruntime (pts, paired)", "bundle MB",
            "weight DQ", "activation Q/DQ",
            "DQ feeding only MatMul", "attention MatMuls quantized", "TensorRT-RTX build (proxy)"]
    text = (f"{rep['model']}, n = {rep['n']}, test seed {rep['seed']}; onnxruntime "
            f"{rep['versions']['onnxruntime']}, modelopt {rep['versions']['modelopt']}\n\n" + _table(head, rows))
    if rep.get("quantize_memory"):
        mem = [[m["model"], m["quantizer"], _num(m.get("llm_prefill_fp32_gb"), ".2f"),
                _num(m.get("rss_before_gb"), ".2f"),
                _num(m.get("peak_rss_gb"), ".2f") if "failed" not in m else "failed", _num(m.get("seconds"), ".0f")]
               for m in rep["quantize_memory"]]
        text += ("\n\nQuantizing one `llm_prefill` graph, own process (RSS before: the fp32 bundle that recorded "
                 "the calibration inputs, still open):\n\n" + _table(
                     ["model", "quantizer", "fp32 graph GB", "RSS before GB", "peak RSS GB", "seconds"], mem))
    return text


SECTIONS = [("bounds.json", "What 18 kept tokens can answer (rule solver bounds)", bounds),
            ("accuracy_sweep.json", "accm-tiny accuracy per family, with blind baselines", per_family),
            ("accuracy_sweep.json", "Accuracy vs kept tokens", accuracy_sweep),
            ("accm_table.json", "ACCM compensation", accm),
            (("accm_table.json", "accm_ceiling.json"), "ACCM per family, against the bound of a perfect caption model",
             accm_families),
            ("latency_tiny.json", "Latency, accm-tiny", latency),
            ("latency_standin4.json", "Latency, LLaVA-1.5-7B stand-in (4 decoder layers)", latency),
            ("precision_tiny.json", "Precision, accm-tiny", precision),
            ("precision_standin2.json", "Precision, LLaVA-1.5-7B stand-in (2 decoder layers, random weights: "
                                        "no accuracy)", precision),
            ("int8_quantizers.json", "INT8 Q/DQ: onnxruntime's quantizer against NVIDIA Model Optimizer's",
             int8_quantizers),
            ("export_memory_7b.json", "Export memory, LLaVA-1.5-7B geometry (32 layers, random weights)",
             export_memory),
            ("latency_7b_int4cpu.json", "Latency, LLaVA-1.5-7B geometry (32 layers), int4-cpu", latency),
            ("latency_7b_int8cpu.json", "Latency, LLaVA-1.5-7B geometry (32 layers), int8-cpu", latency),
            (("latency_standin4_plain.json", "latency_standin4_shared.json"),
             "One copy of the LLM weights for prefill and decode (--share-weights), 7B stand-in", shared_weights),
            ("search.json", "Schedule search", search),
            ("plugin_kernel.json", "AccmTokenTopK CUDA kernels on a GPU (no TensorRT)", plugin_kernel),
            ("serve.json", "accm-serve throughput and latency", serve),
            ("soak.json", "Soak: answers and memory over time", soak)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="benchmarks/results")
    args = ap.parse_args()
    for names, title, fmt in SECTIONS:
        paths = [Path(args.results) / n for n in ((names,) if isinstance(names, str) else names)]
        missing = [str(p) for p in paths if not p.exists()]
        print(f"### {title}\n")
        print(f"(not measured: {', '.join(missing)} missing)" if missing
              else fmt(*(json.loads(p.read_text()) for p in paths)))
        print()


if __name__ == "__main__":
    main()
