"""ACCM measurement on ShapesVQA test: at each kept-token budget, the pruned model with {no
caption, a random candidate, the best beam (no selector), the selected caption, an oracle
best-of-M} against the full-token model and FastV at the same budget; every accuracy with its
95 % interval, and the gains and the share of the pruning loss recovered with paired 95 %
intervals (same questions). Then ACCM's FLOPs and measured latency as a share of the pruned
pipeline.

    python benchmarks/accm_table.py --n 1000 --seed 101 --json benchmarks/results/accm_table.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def recovered(full, pruned, accm) -> dict:
    """The share of the pruning loss (full − pruned) that ACCM gives back, with a 95 % interval
    from resampling the questions (paired: one resample for all three)."""
    full, pruned, accm = (np.asarray(x, np.float64) for x in (full, pruned, accm))
    rng = np.random.default_rng(0)
    shares = []
    for _ in range(2000):
        i = rng.integers(0, len(full), len(full))
        loss = full[i].mean() - pruned[i].mean()
        if loss > 0:
            shares.append((accm[i].mean() - pruned[i].mean()) / loss)
    loss = full.mean() - pruned.mean()
    point = (accm.mean() - pruned.mean()) / loss if loss > 0 else None
    lo, hi = (np.percentile(shares, [2.5, 97.5]) if shares else (float("nan"), float("nan")))
    return {"share": point, "ci95": [round(float(lo), 4), round(float(hi), 4)]}


def parse_args(default_json: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=101)
    ap.add_argument("--keeps", type=int, nargs="+", default=[18, 36])
    ap.add_argument("--json", default=default_json)
    return ap.parse_args()


def evaluate_on_test(args, label: str, **answerer) -> dict:
    """``args.n`` test questions of ``args.seed`` through a ``TorchAnswerer``, every hit kept."""
    from accm.measure.accuracy import TorchAnswerer, evaluate

    res = evaluate(TorchAnswerer(args.model, seed=args.seed, **answerer), n=args.n, seed=args.seed, progress=False,
                   keep_hits=True)
    print(f"{label}: {res['accuracy']:.3f} {res['ci95']}", flush=True)
    return res


def main() -> None:
    from accm.compensation.compensator import Compensator
    from accm.compensation.flops import compensation_flops
    from accm.data import shapes
    from accm.export.default import default_options, ensure_bundle
    from accm.measure.accuracy import paired_difference
    from accm.measure.latency import machine, run_isolated
    from accm.models.loading import load_llava
    from accm.models.prompt import mean_text_tokens
    from accm.models.registry import resolve
    from accm.pruning.flops import dims_from_config, llm_prefill_flops, vision_flops
    from accm.pruning.reference import ReferencePipeline
    from accm.pruning.schedule import Schedule

    args = parse_args("benchmarks/results/accm_table.json")

    lm = load_llava(args.model)
    dims = dims_from_config(lm.model.config)
    comp = Compensator.load(Path(resolve(args.model).path) / "accm", lm.processor.tokenizer)
    questions = [s.question for s in shapes.benchmark("test", 100, args.seed)]
    encode = lambda t: lm.processor.tokenizer(t)["input_ids"]  # noqa: E731
    n_text = mean_text_tokens(encode, lm.template, questions, lm.model.config.image_token_index)
    full_prefill = llm_prefill_flops(dims, Schedule.none(), n_text)

    def run(**kw) -> dict:
        return evaluate_on_test(args, str(kw), **kw)

    full = run()
    rows = []
    for k in args.keeps:
        row = {"keep": k, "full": summary(full)}
        pruned = run(vision_keep=k)
        fastv = run(schedule=f"fastv:2:{k}")
        row["vision_only"], row["fastv_k2"] = summary(pruned), summary(fastv)
        modes = {mode: run(vision_keep=k, accm=True, caption_mode=mode)
                 for mode in ("random", "top", "selected", "oracle")}
        for mode, res in modes.items():
            row[f"accm_{mode}"] = summary(res)
        sel = modes["selected"]["hits"]
        row["gain_over_pruned"] = paired_difference(sel, pruned["hits"])
        row["gain_over_fastv"] = paired_difference(sel, fastv["hits"])
        row["pruning_loss"] = paired_difference(full["hits"], pruned["hits"])
        row["recovered"] = recovered(full["hits"], pruned["hits"], sel)
        row["recovered_oracle"] = recovered(full["hits"], pruned["hits"], modes["oracle"]["hits"])
        row["flops"] = _flops(lm, comp, dims, k, n_text, full_prefill, args.seed, encode, compensation_flops,
                              llm_prefill_flops, vision_flops, ReferencePipeline, Schedule, shapes)
        options = default_options("fp32", k, accm=True)
        lat = run_isolated("bundle", {"bundle": str(ensure_bundle(args.model, options, progress=False)),
                                      "provider": "cpu", "warmup": 2, "repeat": 7, "new_tokens": 4, "image": None,
                                      "prompt": None})
        st = lat["stages_ms"]
        comp_ms = st["caption"]["median"] + st["selection"]["median"]
        row["latency_ms"] = {k2: v["median"] for k2, v in st.items()}
        row["compensation_share_of_ttft"] = comp_ms / st["ttft"]["median"]
        rows.append(row)
        print(json.dumps({key: row[key] for key in ("keep", "gain_over_pruned", "recovered", "flops")},
                         default=str), flush=True)
    cfg = comp.caption.cfg
    report = {"benchmark": "ACCM compensation, ShapesVQA v2 test", "model": lm.source.name, "n": args.n,
              "seed": args.seed, "machine": machine(), "n_text_tokens": n_text,
              "accm": {"mapper_input_tokens": cfg.input_tokens, "beams": cfg.beams,
                       "selector_text_format": comp.selector.cfg.text_format,
                       "selector_rank_slots": comp.selector.cfg.rank_slots,
                       "caption_params": sum(p.numel() for p in comp.caption.parameters()),
                       "selector_params": sum(p.numel() for p in comp.selector.parameters())},
              "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


def summary(res: dict) -> dict:
    return {k: res[k] for k in ("accuracy", "ci95", "per_family", "per_family_ci95")}


def _flops(lm, comp, dims, k, n_text, full_prefill, seed, encode, compensation_flops, llm_prefill_flops,
           vision_flops, ReferencePipeline, Schedule, shapes) -> dict:
    """FLOPs with caption lengths and selector texts as this model produces them on real samples."""
    ref_samples = shapes.benchmark("test", 32, seed + 1)
    imgs = [shapes.render_scene(s.split, s.scene_index).pil() for s in ref_samples]
    qs = [s.question for s in ref_samples]
    ref = ReferencePipeline(lm.model, lm.processor, vision_keep=k, template=lm.template)
    vis = ref.vision(ref.pixel_values(imgs))
    c = comp(vis.discarded, vis.discarded_index, vis.discarded_scores, qs)
    cap_tokens = float(np.mean([len(encode(t)) for t in c.captions]))
    beam_tokens = float(np.mean([len(b.tokens) for row_b in c.beams for b in row_b]))
    q_tokens = float(np.mean([len(q) for q in comp.question_ids(qs)]))
    sel_ids, _ = comp.selector_inputs(qs, c.candidates)
    comp_flops = compensation_flops(comp.caption.cfg, comp.selector.cfg, dims.patches - k, round(q_tokens),
                                    round(beam_tokens), sel_ids.shape[-1])
    pruned_prefill = llm_prefill_flops(dims, Schedule.none(), n_text + round(cap_tokens), k)
    return {
        "full_llm_prefill": full_prefill, "pruned_llm_prefill_with_caption": pruned_prefill,
        "compensation": comp_flops, "caption_tokens_spliced": cap_tokens,
        "prefill_plus_compensation_ratio": (pruned_prefill + comp_flops["total"]) / full_prefill,
        "compensation_share_of_pruned_pipeline": comp_flops["total"] / (pruned_prefill + comp_flops["total"]),
        "vision_tower": vision_flops(dims, k),
        "with_vision_ratio": (pruned_prefill + comp_flops["total"] + vision_flops(dims, k))
        / (full_prefill + vision_flops(dims, None)),
    }


if __name__ == "__main__":
    main()
