"""Accuracy versus kept image tokens on ShapesVQA test (accm-tiny by default), and versus FLOPs.

Methods at each budget k in {576, 192, 128, 64, 32, 18}:
  vision  – CLS-attention top-k in the CLIP tower (vision side);
  fastv   – LLM-side FastV at K=2 (layers 0-1 see all 576);
  random  – k random patches (vision side), the baseline;
plus any schedule JSON files given with --schedule (e.g. G-Search / P-Sigmoid results), and
the fraction of kept tokens that land on objects. Runs the PyTorch reference (accm.measure.accuracy).

    python benchmarks/accuracy_sweep.py --n 1000 --seed 101 --json benchmarks/results/accuracy_sweep.json \
        --csv benchmarks/results/accuracy_sweep.csv --plot benchmarks/results/accuracy_sweep.png
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BUDGETS = [576, 192, 128, 64, 32, 18]


def main() -> None:
    from accm.measure.accuracy import TorchAnswerer, evaluate
    from accm.measure.latency import machine
    from accm.models.loading import load_llava
    from accm.pruning.flops import dims_from_config, schedule_flops_ratio
    from accm.pruning.schedule import Schedule

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=101)
    ap.add_argument("--budgets", type=int, nargs="+", default=BUDGETS)
    ap.add_argument("--schedule", nargs="*", default=[], help="extra schedule specs or JSON files")
    ap.add_argument("--json", default="benchmarks/results/accuracy_sweep.json")
    ap.add_argument("--csv", default="benchmarks/results/accuracy_sweep.csv")
    ap.add_argument("--plot", default="benchmarks/results/accuracy_sweep.png")
    args = ap.parse_args()

    lm = load_llava(args.model)
    dims = dims_from_config(lm.model.config)
    from accm.data import shapes
    from accm.models.prompt import mean_text_tokens

    questions = [s.question for s in shapes.benchmark("test", 100, args.seed)]
    n_text = mean_text_tokens(lambda t: lm.processor.tokenizer(t)["input_ids"], lm.template, questions,
                              lm.model.config.image_token_index)
    runs = []

    def run(method, keep, schedule, random_keep=False):
        answer = TorchAnswerer(args.model, vision_keep=keep, schedule=schedule,
                               random_keep_seed=args.seed if random_keep else None)
        res = evaluate(answer, n=args.n, seed=args.seed, progress=False)
        sched = Schedule.parse(schedule)
        res.update(method=method, budget=keep or (sched.keep if sched.kind == "fastv" else
                                                  round(sched.mean_tokens(dims.layers, dims.patches))),
                   flops_ratio=schedule_flops_ratio(dims, sched, n_text, keep))
        runs.append(res)
        print(f"{method:10s} k={res['budget']:>4} acc={res['accuracy']:.3f} {res['ci95']} "
              f"on-object={res['kept_on_object']:.3f} flops={res['flops_ratio']:.3f}", flush=True)

    for k in args.budgets:
        if k == dims.patches:
            run("full", None, "none")
            continue
        run("vision", k, "none")
        run("fastv", None, f"fastv:2:{k}")
        run("random", k, "none", random_keep=True)
    for spec in args.schedule:
        run(Schedule.parse(spec).meta.get("method", spec), None, spec)
    report = {"benchmark": "ShapesVQA test accuracy vs kept image tokens", "model": lm.source.name, "n": args.n,
              "seed": args.seed, "machine": machine(), "runs": runs,
              "flops_convention": f"LLM prefill FLOPs ratio vs 576 tokens, {n_text} text tokens (mean)"}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    with open(args.csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "budget", "accuracy", "ci95_low", "ci95_high", "kept_on_object", "flops_ratio",
                    *sorted(runs[0]["per_family"])])
        for r in runs:
            w.writerow([r["method"], r["budget"], f"{r['accuracy']:.4f}", f"{r['ci95'][0]:.4f}", f"{r['ci95'][1]:.4f}",
                        f"{r['kept_on_object']:.4f}",
                        f"{r['flops_ratio']:.4f}", *[f"{r['per_family'][k]:.4f}" for k in sorted(r["per_family"])]])
    plot(report, Path(args.plot))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    full = next(r for r in report["runs"] if r["method"] == "full")
    for method, style in (("vision", "o-"), ("fastv", "s-"), ("random", "x--")):
        rows = sorted((r for r in report["runs"] if r["method"] == method), key=lambda r: r["budget"])
        err = [[r["accuracy"] - r["ci95"][0] for r in rows], [r["ci95"][1] - r["accuracy"] for r in rows]]
        axes[0].errorbar([r["budget"] for r in rows], [r["accuracy"] for r in rows], yerr=err, fmt=style,
                         capsize=2, label=method)
        axes[1].plot([r["flops_ratio"] for r in rows], [r["accuracy"] for r in rows], style, label=method)
    for r in report["runs"]:
        if r["method"] not in ("vision", "fastv", "random", "full"):
            axes[1].plot([r["flops_ratio"]], [r["accuracy"]], "*", markersize=10, label=r["method"])
    for ax in axes:
        ax.axhline(full["accuracy"], color="grey", ls=":", label="576 tokens")
        ax.set_ylabel("ShapesVQA test accuracy")
        ax.legend(fontsize=7)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("image tokens kept")
    axes[1].set_xlabel("LLM prefill FLOPs ratio vs 576 tokens")
    fig.suptitle(f"{report['model']}: accuracy vs pruning (n={report['n']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
