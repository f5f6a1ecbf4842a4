"""ACCM measurement: accuracy at 18 and 36 kept tokens for {no caption, a random candidate, the
selected caption, an oracle best-of-M}, next to the best uncompensated pruning at the same budget,
and the compensation's FLOPs and measured latency as a share of the pruned pipeline.

    python benchmarks/accm_table.py --n 500 --json benchmarks/results/accm_table.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from accm.bench.accuracy import TorchAnswerer, evaluate
    from accm.bench.latency import machine, run_isolated
    from accm.compensation.compensator import Compensator
    from accm.compensation.flops import compensation_flops
    from accm.data import shapes
    from accm.export.default import default_options, ensure_bundle
    from accm.models.loading import load_llava
    from accm.models.prompt import mean_text_tokens
    from accm.models.registry import resolve
    from accm.pruning.flops import dims_from_config, llm_prefill_flops, vision_flops
    from accm.pruning.schedule import Schedule

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keeps", type=int, nargs="+", default=[18, 36])
    ap.add_argument("--json", default="benchmarks/results/accm_table.json")
    args = ap.parse_args()

    lm = load_llava(args.model)
    dims = dims_from_config(lm.model.config)
    comp = Compensator.load(Path(resolve(args.model).path) / "accm", lm.processor.tokenizer)
    questions = [s.question for s in shapes.benchmark("test", 100, args.seed)]
    encode = lambda t: lm.processor.tokenizer(t)["input_ids"]  # noqa: E731
    n_text = mean_text_tokens(encode, lm.template, questions, lm.model.config.image_token_index)
    full_prefill = llm_prefill_flops(dims, Schedule.none(), n_text)
    rows = []
    full = evaluate(TorchAnswerer(args.model), n=args.n, seed=args.seed, progress=False)
    for k in args.keeps:
        row = {"keep": k, "full_accuracy": full["accuracy"]}
        row["vision_only"] = evaluate(TorchAnswerer(args.model, vision_keep=k), n=args.n, seed=args.seed,
                                      progress=False)["accuracy"]
        row["fastv_k2"] = evaluate(TorchAnswerer(args.model, schedule=f"fastv:2:{k}"), n=args.n, seed=args.seed,
                                   progress=False)["accuracy"]
        for mode in ("none", "random", "selected", "oracle"):
            ans = TorchAnswerer(args.model, vision_keep=k, accm=True, caption_mode=mode, seed=args.seed)
            res = evaluate(ans, n=args.n, seed=args.seed, progress=False)
            row[f"accm_{mode}"] = res["accuracy"]
            row[f"accm_{mode}_per_family"] = res["per_family"]
            print(f"k={k} {mode}: {res['accuracy']:.3f}", flush=True)
        best_plain = max(row["vision_only"], row["fastv_k2"])
        lost = full["accuracy"] - row["accm_none"]
        row["recovered_share_of_loss"] = (row["accm_selected"] - row["accm_none"]) / lost if lost > 0 else None
        row["gain_over_best_uncompensated_points"] = 100 * (row["accm_selected"] - best_plain)
        # FLOPs: caption lengths and selector texts as they come out of this model, on real samples
        ref_samples = shapes.benchmark("test", 32, args.seed + 1)
        imgs = [shapes.render_scene(s.split, s.scene_index).pil() for s in ref_samples]
        qs = [s.question for s in ref_samples]
        from accm.pruning.reference import ReferencePipeline

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
        row["flops"] = {
            "full_llm_prefill": full_prefill, "pruned_llm_prefill_with_caption": pruned_prefill,
            "compensation": comp_flops, "caption_tokens_spliced": cap_tokens,
            "prefill_plus_compensation_ratio": (pruned_prefill + comp_flops["total"]) / full_prefill,
            "compensation_share_of_pruned_pipeline": comp_flops["total"] / (pruned_prefill + comp_flops["total"]),
            "vision_tower": vision_flops(dims, k),
            "with_vision_ratio": (pruned_prefill + comp_flops["total"] + vision_flops(dims, k))
            / (full_prefill + vision_flops(dims, None)),
        }
        options = default_options("fp32", k, accm=True)
        lat = run_isolated("bundle", {"bundle": str(ensure_bundle(args.model, options, progress=False)),
                                      "provider": "cpu", "warmup": 2, "repeat": 5, "new_tokens": 4, "image": None,
                                      "prompt": None})
        st = lat["stages_ms"]
        comp_ms = st["caption"]["median"] + st["selection"]["median"]
        row["latency_ms"] = {k2: v["median"] for k2, v in st.items()}
        row["compensation_share_of_ttft"] = comp_ms / st["ttft"]["median"]
        rows.append(row)
        print(json.dumps({key: v for key, v in row.items() if not key.endswith("per_family")}), flush=True)
    report = {"benchmark": "ACCM compensation, ShapesVQA test", "model": lm.source.name, "n": args.n,
              "seed": args.seed, "machine": machine(), "n_text_tokens": n_text, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
