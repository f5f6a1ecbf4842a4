"""G-Search and P-Sigmoid on a model (accm-tiny by default), evaluated on ShapesVQA *test*.

Runs the three accm-search commands (validation: ShapesVQA val), then measures each found
schedule and its baselines with the accuracy harness on the test split (a seed the search never
saw), with the prefill FLOPs ratio of each. Every test accuracy carries its 95 % interval and its
paired difference to full tokens (same questions); each P-Sigmoid schedule also its paired
difference to the FastV schedule whose FLOPs it matched, on test here and on val (with its
standard error) in its search record. G-Search accepts a layer only where the drop
is within ``--tolerance`` plus ``--z`` paired standard errors of the validation score, so it does
not chase noise. It runs twice: inside the LLM only (the paper's setting), and starting one step
shallower at the vision tower's CLS top-k (``--vision-keep auto``), shown beside that vision keep
alone. P-Sigmoid also runs both ways at each matched FLOPs: the paper's curve inside the LLM, and
the curve started at the vision tower (``--from-vision``), shown beside the flat CLS top-k with the
same FLOPs so that what the curve adds over vision pruning alone can be read. Writes a JSON table
and an accuracy-vs-FLOPs plot.

    python benchmarks/search.py --val-n 600 --trials 30 --test-n 1000 --test-seed 103 --out benchmarks/results

``--reuse`` keeps search outputs already in ``--out`` for the same model (checkpoint digest) and
only measures them on test again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _search(*args: str, reuse_for: str | None = None) -> None:
    """Run one accm-search command; with ``reuse_for`` (a model digest), skip it when its output
    file already holds a result for that model."""
    output = Path(args[args.index("--output") + 1])
    if reuse_for and output.exists() and json.loads(output.read_text()).get("model_digest") == reuse_for:
        print(f"reusing {output}", flush=True)
        return
    subprocess.run([sys.executable, "-m", "accm.cli.search", *args, "--quiet"], check=True)


def main() -> None:
    from accm.data import shapes
    from accm.measure.accuracy import TorchAnswerer, evaluate, paired_difference
    from accm.measure.latency import machine
    from accm.models.loading import load_llava
    from accm.models.prompt import mean_text_tokens
    from accm.models.registry import checkpoint_digest
    from accm.pruning.flops import dims_from_config, schedule_flops_ratio
    from accm.pruning.schedule import Schedule

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="accm-tiny")
    ap.add_argument("--val-n", type=int, default=600)
    ap.add_argument("--test-n", type=int, default=1000)
    ap.add_argument("--test-seed", type=int, default=103)
    ap.add_argument("--tolerance", type=float, default=0.01)
    ap.add_argument("--z", type=float, default=1.645)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--matches", nargs="+", default=["fastv:2:64", "fastv:2:18"])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--reuse", action="store_true", help="keep this model's search outputs already in --out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = load_llava(args.model)
    reuse = checkpoint_digest(lm.source.path) if args.reuse else None
    common = ["--model", args.model, "--n", str(args.val_n)]
    subprocess.run([sys.executable, "-m", "accm.cli.search", "ranks", *common, "--output", str(out / "ranks.json"),
                    "--plot", str(out / "ranks.png"), "--quiet"], check=True)
    gsearch = ["--tolerance", str(args.tolerance), "--z", str(args.z)]
    _search("gsearch", *common, *gsearch, "--output", str(out / "gsearch.json"), reuse_for=reuse)
    _search("gsearch", *common, *gsearch, "--vision-keep", "auto", "--output", str(out / "gsearch_vision.json"),
            reuse_for=reuse)
    for spec in args.matches:
        name = spec.replace(":", "_")
        _search("psigmoid", *common, "--match", spec, "--trials", str(args.trials), "--output",
                str(out / f"psigmoid_{name}.json"), reuse_for=reuse)
        _search("psigmoid", *common, "--match", spec, "--trials", str(args.trials), "--from-vision", "--output",
                str(out / f"psigmoid_vision_{name}.json"), reuse_for=reuse)

    dims = dims_from_config(lm.model.config)
    questions = [s.question for s in shapes.benchmark("test", 100, args.test_seed)]
    n_text = mean_text_tokens(lambda t: lm.processor.tokenizer(t)["input_ids"], lm.template, questions,
                              lm.model.config.image_token_index)
    tol = f"tol {args.tolerance:g} + {args.z:g} SE"
    with_vision = Schedule.load(out / "gsearch_vision.json")
    vision_keep = with_vision.meta["vision_keep"]
    entries = [("full", "none", None, None), (f"G-Search ({tol})", str(out / "gsearch.json"), None, None),
               (f"vision CLS top-{vision_keep} (as G-Search found)", "none", vision_keep, None),
               (f"G-Search from the vision tower ({tol})", with_vision, vision_keep, None)]
    for spec in args.matches:
        name = spec.replace(":", "_")
        curve = Schedule.load(out / f"psigmoid_vision_{name}.json")
        flat = flat_vision_keep(dims, n_text, schedule_flops_ratio(dims, Schedule.parse(spec), n_text))
        entries += [(spec, spec, None, None),
                    (f"P-Sigmoid @ {spec} FLOPs", str(out / f"psigmoid_{name}.json"), None, spec),
                    (f"vision CLS top-{flat} @ {spec} FLOPs", "none", flat, spec),
                    (f"P-Sigmoid from the vision tower @ {spec} FLOPs", curve, curve.meta.get("vision_keep"), spec)]
    rows = []
    for name, spec, keep, matched in entries:
        sched = Schedule.parse(spec)
        res = evaluate(TorchAnswerer(args.model, keep, schedule=sched), n=args.test_n, seed=args.test_seed,
                       progress=False, keep_hits=True)
        rows.append({"name": name, "vision_keep": keep, "schedule": sched.spec(), "test_accuracy": res["accuracy"],
                     "test_ci95": res["ci95"], "hits": res.pop("hits"), "per_family": res["per_family"],
                     "prefill_flops_ratio": schedule_flops_ratio(dims, sched, n_text, keep),
                     "mean_tokens": sched.mean_tokens(dims.layers, keep or dims.patches),
                     "search": sched.meta or None, "matched": matched})
        print(f"{name:32s} acc={res['accuracy']:.3f} flops={rows[-1]['prefill_flops_ratio']:.3f}", flush=True)
    full, full_hits = rows[0]["test_accuracy"], rows[0]["hits"]
    for r in rows:
        r["delta_vs_full_points"] = 100 * (r["test_accuracy"] - full)
        r["vs_full"] = paired_difference(r["hits"], full_hits)
        r["prefill_flops_reduction"] = 1 / r["prefill_flops_ratio"]
        if r["matched"]:  # P-Sigmoid against the FastV schedule whose FLOPs it matched, same test questions
            baseline = next(b for b in rows if b["schedule"] == r["matched"])
            r["vs_matched"] = paired_difference(r["hits"], baseline["hits"])
    for r in rows:
        del r["hits"]
    gsearch = json.loads((out / "gsearch.json").read_text())
    report = {"benchmark": "G-Search / P-Sigmoid on ShapesVQA test (searched on val)", "model": args.model,
              "val_n": args.val_n, "val_se": gsearch.get("score_se"), "test_n": args.test_n,
              "test_seed": args.test_seed, "gsearch_tolerance": args.tolerance, "gsearch_z": args.z,
              "trials": args.trials, "n_text_tokens": n_text,
              "machine": machine(), "ranks": json.loads((out / "ranks.json").read_text()), "rows": rows}
    (out / "search.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(rows, out / "search.png", args.model)


def flat_vision_keep(dims, n_text: int, target: float) -> int:
    """The most CLS top-k tokens whose unpruned LLM prefill stays within ``target`` FLOPs ratio."""
    from accm.pruning.flops import schedule_flops_ratio
    from accm.pruning.schedule import Schedule

    return max(k for k in range(1, dims.patches + 1)
               if schedule_flops_ratio(dims, Schedule.none(), n_text, k) <= target)


def plot(rows, path: Path, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # more rows than the default cycle's 10 colours
    for r in rows:
        marker = "*" if r["search"] else "o"  # searched schedules; plain vision keeps and FastV are dots
        ax.plot(r["prefill_flops_ratio"], r["test_accuracy"], marker, markersize=10 if marker == "*" else 7,
                label=r["name"])
    ax.set_xlabel("LLM prefill FLOPs ratio vs 576 tokens (vision tower not counted)")
    ax.set_ylabel("ShapesVQA test accuracy")
    ax.set_title(f"{model}: searched schedules vs FastV", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
